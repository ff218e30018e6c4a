"""Does ``compile_forwards`` pay on this machine? Eager (packed) against compiled, one process.

For AR at batch 1 and linear-spec at batch 8 (block 8): tokens/s with the eager forwards
``load()`` sets up, then the same after ``model.compile_forwards(widths=(1, 8))``, the
seconds each graph took to compile and the resident memory before and after. Greedy
outputs are checked identical. Writes a markdown report headed by its command::

    python benchmarks/compiled_forwards.py --out benchmarks/reports/trimode-smol/compiled_forwards.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from fast_forwards import environment, prompt_ids


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rates(model, runs: dict, new_tokens: int, repeats: int) -> dict:
    """Median tokens/s (and the greedy outputs) of each named run."""
    out = {}
    for name, (mode, prompts, kw) in runs.items():
        samples, ids = [], None
        for _ in range(repeats):
            start = time.perf_counter()
            ids, _, stats = model.decode_mode(mode, prompts, max_new_tokens=new_tokens, eos_token_id=[],
                                              return_stats=True, **kw)
            samples.append(sum(stats.tokens_per_row) / (time.perf_counter() - start))
        out[name] = {"tokens_per_s": statistics.median(samples), "output": ids.tolist()}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    import torch

    from trimode.loading import default_model_path, load

    torch.set_num_threads(args.threads)
    loaded = load(args.model or default_model_path())
    model, tok = loaded.model, loaded.tokenizer
    runs = {"ar @ 1": ("ar", prompt_ids(tok, 1), {}),
            "linear-spec @ 8": ("linear-spec", prompt_ids(tok, 8), {"block_length": 8})}
    warm = 2 * 8 + 2  # full blocks of 8 and a short last one: every width the timed runs use
    rates(model, runs, warm, 1)  # warm-up
    memory = {"eager": resident_mb()}
    eager = rates(model, runs, args.new_tokens, args.repeats)
    model.compile_forwards(widths=(1, 8))
    rates(model, runs, warm, 1)  # compiles every graph the runs use
    memory["compiled"] = resident_mb()
    compiled = rates(model, runs, args.new_tokens, args.repeats)
    seconds = model.compiled_forwards.compile_seconds
    shapes = {f"batch {b}, width {w}, cache {c}": s for (b, w, c), s in seconds.items()}
    compile_total = sum(seconds.values())

    command = "python " + " ".join(sys.argv)  # as typed (its --out is relative to where it ran)
    lines = [f"# Compiled forwards against eager: {loaded.name}", "", f"Command: `{command}`", "",
             f"Environment: `{json.dumps(environment())}`", "",
             f"{args.new_tokens} new tokens per row, no EOS stop, held-out prompts, median of {args.repeats} runs "
             f"each; eager = the packed weights `load()` sets up on CPU.", "",
             "| run | eager tokens/s | compiled tokens/s | compiled / eager | same tokens |", "|---|---|---|---|---|"]
    for name in runs:
        e, c = eager[name], compiled[name]
        lines.append(f"| {name} | {e['tokens_per_s']:.1f} | {c['tokens_per_s']:.1f} | "
                     f"{c['tokens_per_s'] / e['tokens_per_s']:.2f}x | {e['output'] == c['output']} |")
    lines += ["", f"Compiling took {compile_total:.0f} s in all (before the timed runs):", ""]
    lines += [f"- {shape}: {seconds:.1f} s" for shape, seconds in shapes.items()]
    lines += ["", f"Resident memory: {memory['eager']:.0f} MB eager, {memory['compiled']:.0f} MB with the graphs "
                  "(the backbone's weights dense again, plus the constants frozen into each graph)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
