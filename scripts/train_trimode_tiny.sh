#!/usr/bin/env bash
# Train the preset "tiny" from scratch and ship it to $DEST (default models/trimode-tiny), about
# 1.7 hours on 2 CPU cores:
#   [DEST=dir] bash scripts/train_trimode_tiny.sh [RUN_DIR]
# The model shipped now was trained by this script at commit 1e12a0e; HEAD's preset is the next
# recipe, still being worked on (models/trimode-tiny/README.md, "Next recipe").
# Stages: ar -> joint -> sft -> drafter (preset "tiny"), each on 2 processes x 1 thread (torchrun, gloo).
# Re-running resumes: finished stages are skipped, an interrupted stage continues from its last checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/trimode-tiny}
NPROC=${NPROC:-2}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$RUN"
stage() {  # stage NAME INIT
    local name=$1 init=$2 out="$RUN/$1"
    if [ -f "$out/config.json" ] && [ -f "$out/.done" ]; then echo "== $name: done, skipping"; return; fi
    local resume=(); [ -d "$out/checkpoints" ] && resume=(--resume)
    echo "== $name ($(date +%T))"
    torchrun --standalone --nproc-per-node "$NPROC" -m trimode.cli train --stage "$name" --preset tiny \
        ${init:+--init "$init"} --out "$out" --no-progress "${resume[@]}"
    touch "$out/.done"
}
stage ar ""
stage joint "$RUN/ar"
stage sft "$RUN/joint"
stage drafter "$RUN/sft"
# Ship: model, tokenizer and drafter (not the checkpoints) into models/trimode-tiny.
DEST=${DEST:-models/trimode-tiny}
mkdir -p "$DEST"
python - "$RUN/drafter" "$DEST" <<'PY'
import shutil, sys
shutil.copytree(sys.argv[1], sys.argv[2], dirs_exist_ok=True, ignore=shutil.ignore_patterns(
    "checkpoints", ".done", "train_log.jsonl", "*.png", "train_config.json", "drafter_data.safetensors"))
PY
for s in ar joint sft drafter; do
    mkdir -p "$DEST/training/$s"
    cp "$RUN/$s/train_log.jsonl" "$RUN/$s/train_config.json" "$DEST/training/$s/" 2>/dev/null || true
    cp "$RUN/$s/loss_curve.png" "$DEST/training/$s/" 2>/dev/null || true
done
echo "== shipped to $DEST ($(date +%T))"
