"""``trimode demo``: the shipped model on a code prompt and a task prompt, in all four modes.

No arguments needed: it loads ``models/trimode-tiny`` (or ``--model DIR``), says what
the model was trained for, runs the fixed prompts of :mod:`.demo_prompts` (a code
prompt and a held-out checkable task) in every mode, and prints each mode's text and
a table of nfe, TPF, tokens and forwards per cycle, tokens/s and whether the task's
answer is right.
"""

from __future__ import annotations

import argparse
import time

from .common import (MODE_CHOICES, STAT_COLUMNS, STATS_LEGEND, add_model_arguments, load_model, positive_int,
                     stats_row, stats_table)

CODE_TOKENS = 64  # new tokens of the code prompt
COLUMNS = [("prompt", "prompt")] + STAT_COLUMNS + [("correct", "correct")]


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the shipped model in all four modes (no arguments needed)",
                       description="Run the shipped model (or --model DIR) on a fixed code prompt and a held-out "
                                   "task in all four decoding modes; print each mode's text and statistics.")
    add_model_arguments(p)
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help=f"new tokens per prompt (default: {CODE_TOKENS} for the code prompt; for the task, its "
                        "answer (EOS included) + 16, so every mode can finish it)")
    p.add_argument("--block-length", type=positive_int, default=None, help="block length (default: the model's config)")
    p.set_defaults(func=run)


def demo_prompts(tokenizer, families: list[str] | None) -> list[tuple[str, list[int], object]]:
    """(name, prompt ids, task or None): the code prompt, then the task of the first of
    ``families`` (the model's trained families) that the demo has."""
    from ..data.tasks import format_prompt
    from .demo_prompts import CODE_NAME, CODE_PROMPT, demo_task

    task = demo_task(families)
    code_ids = tokenizer.encode(CODE_PROMPT, add_special_tokens=False, split_special_tokens=True)
    task_ids = tokenizer.encode(format_prompt(task), add_special_tokens=False)
    return [(CODE_NAME, code_ids, None), (f"task ({task.family}, held out)", task_ids, task)]


def describe(loaded, families: list[str] | None) -> str:
    """One line: the model, its size, and what it was trained for (from its config)."""
    base = sum(p.numel() for n, p in loaded.model.named_parameters() if "lora_" not in n)  # the drafter aside
    line = f"{loaded.path.resolve().name}: {base / 1e6:.1f}M parameters"
    if families:  # written by `trimode train`, which trains on stdlib code and these task families
        line += f", trained on Python stdlib code and synthetic tasks ({', '.join(families)}); not a chat model"
    return line


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data.tasks import score
    from ..evaluation.accuracy import answer_budget
    from ..evaluation.prompts import trained_families

    started = time.perf_counter()
    loaded = load_model(args, need="to encode its prompts")
    model, tok = loaded.model, loaded.tokenizer
    families = trained_families(model.config)
    print(describe(loaded, families))
    print(f"({loaded.path}; LoRA drafter: {'yes' if loaded.has_drafter else 'no'}; "
          f"{next(model.parameters()).dtype}; threads: {torch.get_num_threads()})\n")
    rows = []
    for name, ids, task in demo_prompts(tok, families):
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
            rows.append({"prompt": name.split()[0], **stats_row(mode, nfe, stats),
                         "correct": None if task is None else ("yes" if score(task, text) else "no")})
        print()
    print(stats_table(rows, COLUMNS))
    print(f"\n{STATS_LEGEND}\n(done in {time.perf_counter() - started:.1f}s)")
    return 0
