#!/usr/bin/env bash
# Train trimode-tiny-vlm (preset "tiny-vlm") on top of models/trimode-tiny and ship it to $DEST
# (default models/trimode-tiny-vlm), on a CPU (one process, $THREADS torch threads, default 2; use
# THREADS=1 on a machine other processes share: 2 threads stall behind them):
#   [DEST=dir] [SHIP=0] [THREADS=n] bash scripts/train_vlm.sh [RUN_DIR]
# Stages: vlm (vision tower + projector + the text model, on generated image tasks, with the grounding loss;
# 2000 steps, about 1.8 s each with 2 threads on the development machine) -> vlm-more (a second vlm run from
# the first's weights: 800 more steps at the same rates, a new warmup-stable-decay schedule, bar charts 3/7 of
# the tasks and texts 2/7: the kinds the first run read worst) -> drafter
# (LoRA, self-distilled on image-task prompts).
# Re-running resumes: finished stages are skipped, an interrupted stage (SIGTERM checkpoints it)
# continues from its last checkpoint. SHIP=0 trains without copying into models/.
# benchmarks/vlm_training_notes.md tells how the recipe was found; benchmarks/vlm_eval.py evaluates a
# run's checkpoint (--checkpoint latest) or the shipped model.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/trimode-tiny-vlm}
THREADS=${THREADS:-2}
PY=${PYTHON:-python}
mkdir -p "$RUN"
stage() {  # stage DIR STAGE INIT [--set KEY=VALUE ...]: trimode train --stage STAGE into $RUN/DIR
    local name=$1 kind=$2 init=$3 out="$RUN/$1"; shift 3
    if [ -f "$out/config.json" ] && [ -f "$out/.done" ]; then echo "== $name: done, skipping"; return; fi
    local resume=(); [ -d "$out/checkpoints" ] && resume=(--resume)
    echo "== $name ($(date +%T))"
    "$PY" -m trimode.cli train --stage "$kind" --preset tiny-vlm --init "$init" --out "$out" --no-progress \
        --threads "$THREADS" "${resume[@]}" "$@"
    touch "$out/.done"
    echo "== $name done ($(date +%T))"
}
stage vlm vlm models/trimode-tiny
stage vlm-more vlm "$RUN/vlm" --set steps=800 --set warmup_frac=0.02 --set vlm.kinds=bars,bars,bars,text,text,shapes,table
stage drafter drafter "$RUN/vlm-more"
[ "${SHIP:-1}" = 0 ] && exit 0
# Ship: model, tokenizer and drafter (not the checkpoints or the drafter's cached data), and the
# training logs and loss curves of both stages.
DEST=${DEST:-models/trimode-tiny-vlm}
mkdir -p "$DEST/training"
"$PY" - "$RUN" "$DEST" <<'PY'
import shutil, sys
from pathlib import Path
run, dest = Path(sys.argv[1]), Path(sys.argv[2])
shutil.copytree(run / "drafter", dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
    "checkpoints", "drafter_data.safetensors", "train_log.jsonl", "train_config.json", "loss_curve.png", ".done"))
for stage in ("vlm", "vlm-more", "drafter"):
    (dest / "training" / stage).mkdir(parents=True, exist_ok=True)
    for name in ("train_log.jsonl", "train_config.json", "loss_curve.png"):
        shutil.copy2(run / stage / name, dest / "training" / stage / name)
PY
echo "shipped to $DEST"
