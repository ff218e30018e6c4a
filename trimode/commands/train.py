"""``trimode train``: run one stage of the tri-mode recipe (a thin map onto :func:`trimode.training.train`).

The config is a named preset (``--preset``, per stage), then explicit flags, then
``--set key=value`` overrides, in that order. Multi-process: launch the same command
with ``torchrun --nproc-per-node N -m trimode.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import sys

from .common import add_threads_argument, positive_int

EXAMPLES = """\
examples (the debug preset trains each stage in seconds on a CPU):
  trimode train --stage ar      --preset debug --out runs/ar
  trimode train --stage joint   --preset debug --init runs/ar    --out runs/joint
  trimode train --stage sft     --preset debug --init runs/joint --out runs/sft
  trimode train --stage drafter --preset debug --init runs/sft   --out runs/final
  trimode generate --model runs/final "def fib(n):"
  trimode train --stage joint --init path/to/mistral-or-ministral3 --out runs/mine   # convert your AR model
  torchrun --nproc-per-node 2 -m trimode.cli train --stage ar --preset debug --out runs/ar2   # DDP
  torchrun --nproc-per-node 2 -m trimode.cli train --stage ar --preset debug --out runs/ar3 --set parallel=fsdp
  trimode train --stage ar --preset debug --out runs/ar --resume                 # after a crash

config keys for --set KEY=VALUE (defaults: the tiny recipe; presets change some):
"""


def register(sub) -> None:
    from ..training.config import PRESETS, STAGES, config_help

    p = sub.add_parser("train", help="train a stage: ar, joint, sft or drafter",
                       description="Train one stage of a tri-mode model and write a complete model directory "
                                   "(config, safetensors, tokenizer; drafter: linear_spec_lora/) to --out, with "
                                   "checkpoints/, train_log.jsonl and loss_curve.png.",
                       epilog=EXAMPLES + config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=STAGES, help="which stage to train")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS),
                   help="named config (default: tiny, the shipped model's recipe)")
    p.add_argument("--out", required=True, metavar="DIR", help="output model directory")
    p.add_argument("--init", default=None, metavar="DIR",
                   help="checkpoint to start from: the previous stage's --out, or a Llama/Mistral/Ministral-3 "
                        "transformers directory (converted on load)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenizer directory (default: --init's; ar from scratch trains one)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out/checkpoints")
    p.add_argument("--steps", type=positive_int, default=None, help="optimizer steps")
    p.add_argument("--micro-batch", type=positive_int, default=None, help="sequences per forward per process")
    p.add_argument("--grad-accum", type=positive_int, default=None, help="micro-batches per optimizer step")
    p.add_argument("--seq-len", type=positive_int, default=None, help="tokens per training sequence")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--seed", type=int, default=None, help="seed of init, data order and masks")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    add_threads_argument(p, help="torch CPU threads per process (default: torch's: one per core, or "
                                 "OMP_NUM_THREADS)")
    p.add_argument("--mask-token-id", type=int, default=None,
                   help="converted HF checkpoints: the mask token id (default: the tokenizer's, else a new token)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key (repeatable), e.g. --set model.hidden_size=512 "
                        "--set block_sizes=4,8,16")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace):
    from ..training.config import apply_overrides, preset_config

    cfg = preset_config(args.preset, args.stage)
    flags = {"steps": args.steps, "micro_batch": args.micro_batch, "grad_accum": args.grad_accum,
             "seq_len": args.seq_len, "lr": args.lr, "seed": args.seed, "device": args.device,
             "mask_token_id": args.mask_token_id}
    for key, value in flags.items():
        if value is not None:
            setattr(cfg, key, value)
    if args.no_progress:
        cfg.progress = False
    apply_overrides(cfg, args.overrides)
    return cfg.validate()


def run(args: argparse.Namespace) -> int:
    from ..training import train

    cfg = build_config(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = train(cfg, out=args.out, init=args.init, tokenizer=args.tokenizer, resume=args.resume)
    if result.info.get("world_size", 1) > 1 and result.info.get("rank", 0) != 0:
        return 0
    last = next((r for r in reversed(result.history) if "loss" in r), {})
    summary = {"stage": cfg.stage, "out": str(result.out), "steps": result.step, "final_loss": last.get("loss"),
               "eval_loss": result.eval_loss, "tokens_per_s": last.get("tokens_per_s"),
               "elapsed_s": round(result.info.get("elapsed", 0.0), 1),
               "parameters": result.info.get("parameters"),
               "trainable_parameters": result.info.get("trainable_parameters"),
               "model": result.info.get("model"), "tokenizer": result.info.get("tokenizer")}
    stopped = result.info.get("stopped_at")
    if stopped is not None:
        summary["stopped_at"] = stopped
    print(json.dumps(summary), file=sys.stdout)
    # Stopped early (SIGTERM): the exit status of a terminated job, so a script does not go on
    # to the next stage with a half-trained model.
    return 128 + 15 if stopped is not None else 0
