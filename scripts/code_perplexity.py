"""Held-out code perplexity of a model: AR cross-entropy on stdlib files of the held-out split.

    python scripts/code_perplexity.py [--model DIR] [--max-tokens 20000] [--seq-len 256]

Files are tokenized as the trainer does (raw text, special-token strings split), cut into
non-overlapping windows of --seq-len tokens, and scored with the model's AR pathway.
"""

from __future__ import annotations

import argparse
import math

import torch
import torch.nn.functional as F

from trimode.data.corpus import CodeCorpus
from trimode.loading import load


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-tokens", type=int, default=20000)
    ap.add_argument("--seq-len", type=int, default=256)
    args = ap.parse_args()
    loaded = load(args.model)
    model, tok = loaded.model, loaded.tokenizer
    nll, count, files = 0.0, 0, 0
    with torch.no_grad():
        for _, text in CodeCorpus(split="heldout"):
            ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
            files += 1
            for start in range(0, len(ids) - 1, args.seq_len):
                window = torch.tensor([ids[start:start + args.seq_len + 1]])
                if window.shape[1] < 2:
                    continue
                logits = model(window[:, :-1]).logits[0]
                nll += F.cross_entropy(logits.float(), window[0, 1:], reduction="sum").item()
                count += window.shape[1] - 1
                if count >= args.max_tokens:
                    break
            if count >= args.max_tokens:
                break
    print(f"held-out code: {count} tokens from {files} files, loss {nll / count:.3f} nats/token, "
          f"perplexity {math.exp(nll / count):.1f}")


if __name__ == "__main__":
    main()
