"""Tokens per decode forward of a model's speculative modes on held-out chat and code prompts.

A quick probe for a converted model and its adapters (issue: a real default model): the
prompts below were never trained on (training uses stdlib code and synthetic tasks). It
also checks that both speculative modes return exactly the AR greedy output.

    python benchmarks/heldout_tpf.py MODEL_DIR [BLOCK_LENGTH] [--device cuda]

TPF here counts decode forwards only (prefill excluded), generated tokens over forwards.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

# Held-out prompts, never trained on (training uses stdlib code, synthetic tasks and templated
# instructions); the same files feed `trimode bench --prompts-file`.
PROMPTS = Path(__file__).resolve().parent / "prompts"
CHAT = PROMPTS.joinpath("heldout_chat.txt").read_text().splitlines()
CODE = [json.loads(line)["prompt"] for line in PROMPTS.joinpath("heldout_code.jsonl").read_text().splitlines()]
NEW_TOKENS = 64


def main() -> None:
    from trimode.loading import load
    from trimode.tokenization import chat_prompt_ids

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("block", type=int, nargs="?", default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    path, block = args.model, args.block
    loaded = load(path, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    sets = {"chat": [chat_prompt_ids(tok, t) for t in CHAT],
            "code": [tok.encode(t, add_special_tokens=False) for t in CODE]}
    print(f"{path}: drafter {loaded.has_drafter}, block {block}, {NEW_TOKENS} new tokens, "
          f"{torch.get_num_threads()} threads, {loaded.model.device}")
    for name, prompts in sets.items():
        refs = [model.ar_generate([p], max_new_tokens=NEW_TOKENS)[0] for p in prompts]
        for mode in ("linear-spec", "quadratic-spec"):
            tokens = forwards = 0
            same = True
            started = time.perf_counter()
            for prompt, ref in zip(prompts, refs):
                out, nfe, stats = model.decode_mode(mode, [prompt], max_new_tokens=NEW_TOKENS, block_length=block,
                                                    return_stats=True)
                same &= torch.equal(out, ref)
                tokens += stats.tokens_generated
                forwards += nfe - stats.prefill_forwards
            print(f"{name:5s} {mode:15s} TPF {tokens / forwards:.2f}  identical to AR: {same}  "
                  f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
