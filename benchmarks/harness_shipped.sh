#!/usr/bin/env bash
# Regenerate the committed reports of the shipped model: benchmarks/reports/trimode-tiny/
# (eval.md/json, bench.md/json, RESULTS.md, PNG plots). Each report starts with the exact
# command that produced it and the environment manifest. About 5-10 minutes on 2 CPU cores;
# run it on an otherwise idle machine (the reports flag a busy one).
#
#   bash benchmarks/harness_shipped.sh            # the shipped model
#   bash benchmarks/harness_shipped.sh DIR        # any model directory -> benchmarks/reports/<name>/
set -euo pipefail
cd "$(dirname "$0")/.."
model="${1:-models/trimode-tiny}"
out="benchmarks/reports/$(basename "$model")"
trimode eval --model "$model" --out "$out"      # first: bench's RESULTS.md quotes eval.json
trimode bench --model "$model" --out "$out"
echo "reports in $out (start with $out/RESULTS.md)"
