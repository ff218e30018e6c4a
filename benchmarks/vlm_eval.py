"""Held-out image-task accuracy and speed of a VLM in each decoding mode (batch 1, greedy, this CPU).

    python benchmarks/vlm_eval.py --model models/trimode-tiny-vlm --n 48 --out benchmarks/reports/trimode-tiny-vlm
    python benchmarks/vlm_eval.py --model runs/trimode-tiny-vlm/vlm --checkpoint latest --n 16 --settings ar

``--checkpoint`` evaluates a training checkpoint of a running ``vlm`` stage (its ``weights.safetensors``
with the run directory's config and tokenizer; ``latest`` = the newest). ``--settings`` picks from
ar, diffusion:B:T (T a threshold or ``fixed``), linear-spec:B, quadratic-spec:B; the default is
:data:`trimode.evaluation.image_eval.DEFAULT_SETTINGS`. Writes ``image_eval.md`` and ``image_eval.json``
under ``--out`` when given; prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def parse_setting(text: str):
    from trimode.evaluation.image_eval import ImageSetting

    mode, *rest = text.split(":")
    block = int(rest[0]) if rest else None
    if mode != "diffusion":
        return ImageSetting(mode, block)
    threshold = rest[1] if len(rest) > 1 else None
    if threshold == "fixed":
        return ImageSetting(mode, block, fixed_schedule=True)
    return ImageSetting(mode, block, float(threshold) if threshold else None)


def load_checkpoint_model(run: Path, checkpoint: str):
    """The VLM of ``run``'s config and tokenizer with the weights of one of its checkpoints."""
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from trimode.configuration_vlm import NemotronLabsDiffusionVLMConfig
    from trimode.modeling_vlm import NemotronLabsDiffusionVLMModel
    from trimode.training.checkpoint import latest_checkpoint

    path = latest_checkpoint(run / "checkpoints") if checkpoint == "latest" else Path(checkpoint)
    if path is None:
        raise SystemExit(f"no checkpoint under {run / 'checkpoints'}")
    model = NemotronLabsDiffusionVLMModel(NemotronLabsDiffusionVLMConfig.from_pretrained(run))
    model.load_state_dict(load_file(path / "weights.safetensors"))
    print(f"checkpoint {path}", file=sys.stderr)
    return model.eval(), AutoTokenizer.from_pretrained(run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="model directory (or a vlm run with --checkpoint)")
    p.add_argument("--checkpoint", help="a checkpoint directory of the run, or 'latest'")
    p.add_argument("--n", type=int, default=32, help="held-out tasks (kinds cycle)")
    p.add_argument("--settings", default=None, help="comma-separated settings (see the module docstring)")
    p.add_argument("--no-drafter", action="store_true", help="do not attach linear_spec_lora/")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="write image_eval.md / image_eval.json here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    import trimode  # noqa: F401  (registers the Auto classes)
    from trimode.evaluation.image_eval import DEFAULT_SETTINGS, evaluate_images, report_markdown

    if args.checkpoint:
        model, tokenizer = load_checkpoint_model(args.model, args.checkpoint)
    else:
        from trimode.loading import load

        loaded = load(args.model, drafter=not args.no_drafter)
        model, tokenizer = loaded.model, loaded.tokenizer
    settings = [parse_setting(s) for s in args.settings.split(",")] if args.settings else DEFAULT_SETTINGS
    start = time.perf_counter()
    report = evaluate_images(model, tokenizer, n_tasks=args.n, settings=settings)
    table = report_markdown(report)
    print(table)
    print(f"({time.perf_counter() - start:.0f} s, {args.threads} thread(s))", file=sys.stderr)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        command = "python benchmarks/vlm_eval.py " + " ".join(argv if argv is not None else sys.argv[1:])
        (args.out / "image_eval.md").write_text(f"`{command}`\n\n{table}\n")
        (args.out / "image_eval.json").write_text(json.dumps({"command": command, **report.to_dict()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
