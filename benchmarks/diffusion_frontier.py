"""Block diffusion's speed/quality frontier: TPF against agreement with AR greedy.

For each block length and confidence threshold, decodes the held-out chat and code prompts
of ``heldout_tpf.py`` and reports TPF over decode forwards (prefill excluded) and the mean
agreement with AR greedy (:func:`trimode.evaluation.metrics.agreement`). Writes a markdown
table and a plot of the frontier.

    python benchmarks/diffusion_frontier.py MODEL_DIR [--block-lengths 4,8] [--thresholds 0.9,0.7,0.5]
        [--out benchmarks/reports/NAME/diffusion_frontier] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from heldout_tpf import CHAT, CODE, NEW_TOKENS


def main() -> None:
    from trimode.evaluation.metrics import mean_agreement
    from trimode.loading import load
    from trimode.tokenization import chat_prompt_ids

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model")
    parser.add_argument("--block-lengths", default="4,8")
    parser.add_argument("--thresholds", default="0.9,0.7,0.5,0.3")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    loaded = load(args.model, device=args.device)
    model, tok = loaded.model, loaded.tokenizer
    out = Path(args.out or f"benchmarks/reports/{loaded.name}/diffusion_frontier")
    out.mkdir(parents=True, exist_ok=True)
    sets = {"chat": [chat_prompt_ids(tok, t) for t in CHAT],
            "code": [tok.encode(t, add_special_tokens=False) for t in CODE]}
    refs = {name: [model.ar_generate([p], max_new_tokens=NEW_TOKENS)[0][0, len(p):].tolist() for p in prompts]
            for name, prompts in sets.items()}
    rows = []
    for block in map(int, args.block_lengths.split(",")):
        for threshold in map(float, args.thresholds.split(",")):
            for name, prompts in sets.items():
                tokens = forwards = 0
                outputs = []
                started = time.perf_counter()
                for p in prompts:
                    ids, nfe, stats = model.decode_mode("diffusion", [p], max_new_tokens=NEW_TOKENS, block_length=block,
                                                        threshold=threshold, return_stats=True)
                    outputs.append(ids[0, len(p):].tolist())
                    tokens += stats.tokens_generated
                    forwards += nfe - stats.prefill_forwards
                row = {"set": name, "block_length": block, "threshold": threshold, "tpf": tokens / forwards,
                       "agreement": mean_agreement(outputs, refs[name]), "seconds": time.perf_counter() - started}
                rows.append(row)
                print(f"{name:4s} B={block:<2d} threshold={threshold:.2f}  TPF {row['tpf']:.2f}  "
                      f"agreement with AR {row['agreement']:.1%}", flush=True)
    (out / "frontier.json").write_text(json.dumps({"model": loaded.name, "new_tokens": NEW_TOKENS, "rows": rows},
                                                  indent=1))
    lines = [f"# Block diffusion frontier: {loaded.name}", "",
             f"`python benchmarks/diffusion_frontier.py {args.model} --block-lengths {args.block_lengths} "
             f"--thresholds {args.thresholds}` ({torch.get_num_threads()} threads, {model.device}); "
             f"{NEW_TOKENS} new tokens per prompt, 6 held-out chat and 6 code prompts (benchmarks/heldout_tpf.py).",
             "TPF counts decode forwards (prefill excluded); agreement is the share of AR greedy's tokens "
             "reproduced at their position, mean over prompts.", "",
             "| set | block length | threshold | TPF | agreement with AR |", "|---|---|---|---|---|"]
    lines += [f"| {r['set']} | {r['block_length']} | {r['threshold']:.2f} | {r['tpf']:.2f} | {r['agreement']:.1%} |"
              for r in rows]
    (out / "frontier.md").write_text("\n".join(lines) + "\n")
    _plot(rows, out / "frontier.png", loaded.name)
    print(f"wrote {out}/frontier.md, frontier.json, frontier.png")


def _plot(rows: list[dict], path: Path, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for (s, b) in sorted({(r["set"], r["block_length"]) for r in rows}):
        pts = sorted((r["tpf"], r["agreement"]) for r in rows if r["set"] == s and r["block_length"] == b)
        ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], marker="o", label=f"{s}, B={b}")
    ax.axhline(90, color="grey", lw=0.8, ls="--", label="goal: 90% agreement")
    ax.set_xlabel("TPF (tokens per decode forward)")
    ax.set_ylabel("agreement with AR greedy (%)")
    ax.set_title(f"{name}: block diffusion, thresholds swept")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
