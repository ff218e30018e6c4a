"""Can a model copy from its prompt? Cheap probes for a model directory or a training checkpoint.

    python scripts/copy_diagnostics.py --model DIR [--checkpoint DIR/checkpoints/step-N ...]

1. Induction probes: a random token sequence repeated twice, and windows of held-out code
   repeated twice. A model that copies from its context has a much lower loss on the second
   copy than on the first. A model that copies only inside the task formats can show none:
   the diverse-words SFT model of the model card copies list items but not random token
   strings (11.2 -> 11.1).
2. Answer loss per task family: AR cross-entropy (nats/token) of held-out task answers (EOS
   included), given their prompts. Copy-type families (repeat, enumerate, json) drop sharply
   once the model copies; see models/trimode-tiny/README.md, "How the recipe was found".

With --checkpoint, each checkpoint's weights (``weights.safetensors`` of a full-model stage) are
loaded into the model of --model in turn, so a running stage can be watched.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from trimode.data.tasks import FAMILIES, generate_tasks, sft_example
from trimode.loading import load


def repeat_loss(model, x: torch.Tensor) -> tuple[float, float]:
    """(first-copy loss, second-copy loss) of the rows of ``x`` (rows, width) written twice."""
    rows, width = x.shape
    ids = torch.cat([x, x], 1)  # (rows, 2 * width)
    logits = model(input_ids=ids).logits[:, :-1]
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    loss = loss.view(rows, -1)
    return loss[:, :width - 1].mean().item(), loss[:, width:].mean().item()


def induction_probe(model, vocab_low: int = 100, length: int = 50, rows: int = 8) -> tuple[float, float]:
    """:func:`repeat_loss` of ``rows`` random sequences of ``length`` tokens."""
    g = torch.Generator().manual_seed(0)
    return repeat_loss(model, torch.randint(vocab_low, model.config.vocab_size, (rows, length), generator=g))


def code_copy_probe(model, tokenizer, width: int = 64, rows: int = 8) -> tuple[float, float]:
    """(first-copy loss, second-copy loss) on windows of held-out stdlib files written twice,
    the form of the ``copy_windows`` training data: a model that copies from its context
    predicts the second copy almost perfectly."""
    from trimode.data.corpus import CodeCorpus
    from trimode.training.data import encode_code

    windows = []
    for _, text in CodeCorpus(split="heldout"):
        ids = encode_code(tokenizer, text)
        windows += [ids[i:i + width] for i in range(0, len(ids) - width, 4 * width)][:2]
        if len(windows) >= rows:
            break
    return repeat_loss(model, torch.tensor(windows[:rows]))


def answer_loss(model, tokenizer, family: str, n: int) -> float:
    """Mean AR cross-entropy of the answers (+ EOS) of ``n`` held-out tasks of ``family``."""
    total, count = 0.0, 0
    for task in generate_tasks("heldout", n, seed=0, families=[family]):
        prompt, response = sft_example(task, tokenizer)
        target = response + [tokenizer.eos_token_id]
        ids = torch.tensor([prompt + target])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1]  # predicts each target token
        total += F.cross_entropy(logits, ids[0, len(prompt):], reduction="sum").item()
        count += len(target)
    return total / count


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="model directory (config, weights, tokenizer)")
    ap.add_argument("--checkpoint", nargs="*", default=[], help="training checkpoints to load in turn")
    ap.add_argument("--families", default="add,enumerate,json,repeat",
                    help=f"comma list of task families (allowed: {', '.join(FAMILIES)})")
    ap.add_argument("--tasks", type=int, default=12, help="held-out tasks per family")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 leaves a core to a running job)")
    args = ap.parse_args()
    families = [f for f in args.families.split(",") if f]
    bad = [f for f in families if f not in FAMILIES]
    if bad:
        ap.error(f"--families: unknown {bad}; allowed: {', '.join(FAMILIES)}")
    torch.set_num_threads(args.threads)
    loaded = load(args.model, drafter=False)
    model, tokenizer = loaded.model, loaded.tokenizer
    for source in [None, *args.checkpoint]:
        if source is not None:
            model.load_state_dict(load_file(f"{source}/weights.safetensors"))
        with torch.no_grad():
            first, second = induction_probe(model)
            code_first, code_second = code_copy_probe(model, tokenizer)
            losses = {f: answer_loss(model, tokenizer, f, args.tasks) for f in families}
        print(f"{source or args.model}: induction {first:.2f} -> {second:.2f} nats; code copy "
              f"{code_first:.2f} -> {code_second:.2f}; answer loss "
              + ", ".join(f"{f} {v:.3f}" for f, v in losses.items()), flush=True)


if __name__ == "__main__":
    main()
