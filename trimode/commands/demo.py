"""``trimode demo``: the shipped model on a code prompt and a task prompt, in all four modes.

No arguments needed: it loads ``models/trimode-tiny`` (or ``--model DIR``), takes a
held-out stdlib file prefix and a held-out checkable task, and prints each mode's
text and a table of nfe, TPF, acceptance length and tokens/s.
"""

from __future__ import annotations

import argparse
import time

import torch

from .common import MODE_CHOICES, add_model_argument, positive_int, stats_table

CODE_TOKENS = 96  # new tokens of the code prompt
COLUMNS = [("prompt", "prompt"), ("mode", "mode"), ("tokens", "tokens"), ("nfe", "nfe"), ("tpf", "TPF"),
           ("acceptance", "accept len"), ("tokens_per_s", "tok/s"), ("correct", "correct")]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the shipped model in all four modes (no arguments needed)",
                       description=__doc__.splitlines()[0])
    add_model_argument(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"new tokens per prompt (default: {CODE_TOKENS} for the code prompt; for the task, its "
                        "answer (EOS included) + 16, so every mode can finish it)")
    p.add_argument("--block-length", type=positive_int, default=None, help="default: the model's config")
    p.add_argument("--code-chars", type=positive_int, default=300, help="characters of code used as prompt")
    p.set_defaults(func=run)


def demo_prompts(tokenizer, code_chars: int, families: list[str] | None = None) -> list[tuple[str, list[int], object]]:
    """(name, prompt ids, task or None): a held-out code prefix and a held-out task of the
    first of ``families`` (the model's trained families; ``json`` if unknown)."""
    from ..data.corpus import CodeCorpus
    from ..data.tasks import format_prompt, generate_tasks

    relpath, text = next(iter(CodeCorpus(split="heldout")))
    code = text[:code_chars]
    task = generate_tasks("heldout", 1, seed=0, families=(families or ["json"])[:1])[0]
    code_ids = tokenizer.encode(code, add_special_tokens=False, split_special_tokens=True)
    task_ids = tokenizer.encode(format_prompt(task), add_special_tokens=False)
    return [(f"code ({relpath})", code_ids, None), (f"task ({task.family})", task_ids, task)]


def run(args: argparse.Namespace) -> int:
    from ..data.tasks import score
    from ..evaluation.accuracy import answer_budget
    from ..evaluation.prompts import trained_families
    from ..loading import load

    started = time.perf_counter()
    loaded = load(args.model)
    model, tok = loaded.model, loaded.tokenizer
    if tok is None:
        raise ValueError(f"{loaded.path} has no tokenizer; the demo needs one")
    print(f"model: {loaded.path} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"drafter: {'yes' if loaded.has_drafter else 'no'}), threads: {torch.get_num_threads()}\n")
    rows = []
    for name, ids, task in demo_prompts(tok, args.code_chars, trained_families(model.config)):
        print(f"##### {name}\n{tok.decode(ids)}")
        for mode in MODE_CHOICES:
            # code: a fixed length; the task: room for its whole answer in every mode, as in eval
            default = CODE_TOKENS if task is None else answer_budget(tok, task)
            kwargs = dict(max_new_tokens=args.max_new_tokens or default, return_stats=True)
            if args.block_length:
                kwargs["block_length"] = args.block_length
            out, nfe, stats = model.decode_mode(mode, [ids], **kwargs)
            text = tok.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
            print(f"--- {mode}\n{text}")
            rows.append({"prompt": name.split()[0], "mode": mode, "tokens": stats.tokens_generated, "nfe": nfe,
                         "tpf": stats.tpf, "acceptance": stats.mean_acceptance,
                         "tokens_per_s": stats.tokens_per_second,
                         "correct": None if task is None else ("yes" if score(task, text) else "no")})
        print()
    print(stats_table(rows, COLUMNS))
    print(f"\n(TPF = generated tokens per forward; accept len = tokens per cycle incl. the bonus token; "
          f"done in {time.perf_counter() - started:.1f}s)")
    return 0
