"""``trimode convert``: an AR checkpoint (transformers Llama / Mistral / Ministral-3 directory, or a
GGUF file of one) -> a tri-mode model directory, ready for ``trimode train --stage joint --init``.

The AR pathway of the result computes exactly the source model's logits; the diffusion
pathway is untrained until the joint stage (or a diffusion adapter) trains it.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_threads_argument, positive_int

EXAMPLES = """\
examples:
  trimode convert path/to/llama-or-mistral-dir --out runs/converted
  trimode convert path/to/model.Q4_1.gguf --out runs/converted          # needs: pip install gguf
  trimode train --stage joint --init runs/converted --out runs/joint   # then train the diffusion pathway
"""


def register(sub) -> None:
    p = sub.add_parser("convert", help="turn an AR checkpoint (transformers dir or GGUF file) into a tri-mode one",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SRC", help="a Llama/Mistral/Ministral-3 transformers directory, or a .gguf file")
    p.add_argument("--out", required=True, metavar="DIR", help="the tri-mode model directory to write")
    p.add_argument("--mask-token-id", type=int, default=None,
                   help="the mask token id (default: the tokenizer's mask token, else a new token appended, "
                        "initialised as the mean embedding)")
    p.add_argument("--block-size", type=positive_int, default=32, help="default block length of the decoders")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32", help="dtype of the saved weights")
    p.add_argument("--overwrite", action="store_true", help="replace a model already in --out")
    add_threads_argument(p, help="torch CPU threads (default: torch's: one per core, or OMP_NUM_THREADS)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..conversion import convert_hf_checkpoint
    from ..loading import quiet_transformers

    out = Path(args.out)
    if (out / "config.json").is_file() and not args.overwrite:
        raise ValueError(f"{out} already holds a model; pass --overwrite to replace it")
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    print(f"converting {args.source} ...", flush=True)
    with quiet_transformers():
        conv = convert_hf_checkpoint(args.source, mask_token_id=args.mask_token_id, block_size=args.block_size,
                                     dtype=getattr(torch, args.dtype))
        conv.model.save_pretrained(out)
        if conv.tokenizer is not None:
            conv.tokenizer.save_pretrained(out)
    params = sum(p.numel() for p in conv.model.parameters())
    print(f"wrote {out}: a {conv.source_type} model, {params / 1e6:.1f}M parameters ({args.dtype}), "
          f"mask token id {conv.mask_token_id}, in {time.perf_counter() - started:.1f}s")
    for note in conv.notes:
        print(f"  {note}")
    if conv.tokenizer is None:
        print("  no tokenizer found beside the weights: copy one into the directory before generating text")
    print(f"the AR pathway equals the source model; train the diffusion pathway next:\n"
          f"  trimode train --stage joint --init {out} --out DIR")
    return 0
