"""``trimode export``: the AR pathway of a tri-mode or published model -> a standard ``transformers``
causal-LM directory (what vLLM, SGLang and TGI serve as they are) and/or a llama.cpp GGUF file.

Only the AR mode survives the export: self-speculation and diffusion need trimode's decoders
(``trimode serve``) or the published SGLang fork.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .common import add_model_arguments, load_model

EXAMPLES = """\
examples:
  trimode export --out runs/smol-hf                                # the default model, transformers directory
  trimode export --model runs/joint --out runs/joint-hf --gguf runs/joint.gguf
  vllm serve runs/smol-hf                                          # AR at scale (on a machine with vLLM)
  llama-cli -m runs/joint.gguf -p "Hello"                          # llama.cpp / Ollama: llama-style models only
"""


def register(sub) -> None:
    p = sub.add_parser("export", help="write the AR pathway as a transformers directory and/or a GGUF file",
                       description=__doc__.splitlines()[0], epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p)
    p.add_argument("--out", metavar="DIR", help="the transformers causal-LM directory to write")
    p.add_argument("--gguf", metavar="FILE", help="the GGUF file to write (llama-style models only; needs the "
                   "gguf package: pip install 'trimode[gguf]')")
    p.add_argument("--architecture", choices=["auto", "llama", "ministral3"], default="auto",
                   help="class of the transformers directory (default auto: LlamaForCausalLM unless the model "
                        "scales queries by position, Ministral-3 style, which only Ministral3ForCausalLM expresses)")
    p.add_argument("--save-dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="dtype of the written weights (default: as loaded; GGUF: float32 or float16, default float32)")
    p.add_argument("--overwrite", action="store_true", help="replace a model or file already at --out / --gguf")
    p.set_defaults(func=run)


def _check_targets(args) -> None:
    if not args.out and not args.gguf:
        raise ValueError("nothing to write: give --out DIR (transformers directory) and/or --gguf FILE")
    if args.out and (Path(args.out) / "config.json").is_file() and not args.overwrite:
        raise ValueError(f"{args.out} already holds a model; pass --overwrite to replace it")
    if args.gguf:
        if not args.gguf.endswith(".gguf"):
            raise ValueError(f"--gguf {args.gguf}: the file name must end in .gguf")
        if Path(args.gguf).exists() and not args.overwrite:
            raise ValueError(f"{args.gguf} exists; pass --overwrite to replace it")
        if args.save_dtype == "bfloat16":
            raise ValueError("--save-dtype bfloat16 is not written to GGUF here; use float32 or float16")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..export import export_gguf, export_transformers, gguf_blocker
    from ..loading import quiet_transformers

    _check_targets(args)
    loaded = load_model(args, drafter=False)  # the drafter serves the other modes only
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.gguf:  # refuse before writing anything
        why = gguf_blocker(model.config)
        if why:
            raise ValueError(f"{loaded.name} cannot be exported to GGUF: {why}. "
                             f"A transformers directory (--out DIR) works for every text model")
    dtype = getattr(torch, args.save_dtype) if args.save_dtype else None
    started = time.perf_counter()
    if args.out:
        with quiet_transformers(enabled=not args.verbose):  # no per-shard progress bar for a one-file write
            cls = export_transformers(model, tokenizer, args.out, architecture=args.architecture, dtype=dtype)
        print(f"wrote {args.out}: {cls} ({loaded.name}'s AR pathway) in {time.perf_counter() - started:.1f}s")
        print(f"  serve it with any engine that runs {cls}, e.g.: vllm serve {args.out}")
    if args.gguf:
        path = export_gguf(model, tokenizer, args.gguf, dtype=dtype or torch.float32)
        size = path.stat().st_size / 1e6
        print(f"wrote {path}: llama.cpp 'llama' architecture, {size:.1f} MB, in {time.perf_counter() - started:.1f}s")
    if tokenizer is None:
        print("  no tokenizer in the model directory: the export has none either")
    print("  exported: the AR mode only (self-speculation and diffusion: trimode serve)")
    return 0
