"""Tokens per decode forward of a model's speculative modes on held-out chat and code prompts.

A quick probe for a converted model and its adapters (issue: a real default model): the
prompts below were never trained on (training uses stdlib code and synthetic tasks). It
also checks that both speculative modes return exactly the AR greedy output.

    python benchmarks/heldout_tpf.py MODEL_DIR [BLOCK_LENGTH]

TPF here counts decode forwards only (prefill excluded), generated tokens over forwards.
"""

from __future__ import annotations

import sys
import time

import torch

CHAT = ["Write a haiku about the sea.", "Explain what a hash table is in two sentences.",
        "Give me three tips for staying focused while studying.",
        "What is the capital of France, and why is it famous?",
        "Summarize the plot of Romeo and Juliet in one paragraph.", "List four fruits that are high in vitamin C."]
CODE = ['def is_prime(n):\n    """Return True if n is a prime number."""\n',
        'def reverse_words(sentence):\n    """Reverse the order of words in a sentence."""\n',
        'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
        'def flatten(nested):\n    """Flatten a list of lists into one list."""\n',
        'def count_vowels(text):\n    """Count the vowels in text."""\n',
        'def merge_sorted(a, b):\n    """Merge two sorted lists into one sorted list."""\n']
NEW_TOKENS = 64


def main() -> None:
    from trimode.loading import load
    from trimode.tokenization import chat_prompt_ids

    path, block = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 8
    loaded = load(path)
    model, tok = loaded.model, loaded.tokenizer
    sets = {"chat": [chat_prompt_ids(tok, t) for t in CHAT],
            "code": [tok.encode(t, add_special_tokens=False) for t in CODE]}
    print(f"{path}: drafter {loaded.has_drafter}, block {block}, {NEW_TOKENS} new tokens, "
          f"{torch.get_num_threads()} threads")
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
