"""How close trimode's forwards come to this machine's limit, and what that buys each mode.

One run measures, on one model and the same machine:

1. the k-token forward cost after a cached prefix and the machine's limit: memory
   bandwidth and the bytes one decode token streams, so the roofline of AR decode is
   bandwidth / bytes (all from ``trimode.evaluation.forward_costs``);
2. AR decode, batch 1: trimode against ``transformers`` ``generate()`` on the same
   weights (interleaved runs), as tokens/s and as a fraction of the roofline;
3. with ``--baseline REV``: every mode at batch 1 and batch 8, tokens/s of this tree
   against the tree at git revision REV, each in its own process, runs interleaved
   (new, old, new, old, ...) so that machine noise hits both alike.

It writes a markdown report headed by the command that produced it::

    python benchmarks/fast_forwards.py --baseline 808bede --out benchmarks/reports/trimode-smol/fast_forwards.md
    python benchmarks/fast_forwards.py --model tiny --baseline 808bede --out benchmarks/reports/trimode-tiny/fast_forwards.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = HERE / "prompts"
MODES = ("ar", "diffusion", "linear-spec", "quadratic-spec")


# ------------------------------------------------------------------ child: one tree's speeds
def prompt_ids(tok, n: int) -> list[list[int]]:
    """n held-out prompts (chat requests first, then code prefixes), tokenized as the demo does."""
    chat = PROMPTS.joinpath("heldout_chat.txt").read_text().splitlines()
    code = [json.loads(line)["prompt"] for line in PROMPTS.joinpath("heldout_code.jsonl").read_text().splitlines()]
    texts = (chat + code)[:n]
    rows = []
    for i, text in enumerate(texts):
        if i < len(chat) and getattr(tok, "chat_template", None):
            rows.append(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=True)["input_ids"])
        else:
            rows.append(tok(text, add_special_tokens=True)["input_ids"])
    return rows


def child(args) -> None:
    """Runs inside the tree under test (PYTHONPATH): prints one JSON line of tokens/s per (mode, batch)."""
    import torch

    from trimode.loading import load

    torch.set_num_threads(args.threads)
    loaded = load(args.model)
    model, tok = loaded.model, loaded.tokenizer
    out = {}
    for batch in args.batches:
        prompts = prompt_ids(tok, batch)
        for mode in args.modes:
            kw = dict(max_new_tokens=args.new_tokens, eos_token_id=[], return_stats=True)
            if mode != "ar":
                kw["block_length"] = args.block
            model.decode_mode(mode, prompts, **dict(kw, max_new_tokens=8))  # warm-up
            rates = []
            for _ in range(args.inner):
                start = time.perf_counter()
                ids, nfe, stats = model.decode_mode(mode, prompts, **kw)
                rates.append(sum(stats.tokens_per_row) / (time.perf_counter() - start))
            out[f"{mode}@{batch}"] = {"tokens_per_s": statistics.median(rates),
                                      "tokens": sum(stats.tokens_per_row), "nfe": nfe,
                                      "output": ids.tolist() if mode == "ar" or batch == 1 else None}
    print(json.dumps(out))


def run_tree(tree: Path, args, model: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--model", model, "--threads",
           str(args.threads), "--new-tokens", str(args.new_tokens), "--block", str(args.block),
           "--inner", str(args.inner), "--batches", *map(str, args.batches), "--modes", *args.modes]
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
    if done.returncode:
        raise SystemExit(f"run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def baseline_tree(rev: str) -> Path:
    """A checkout of ``rev`` (git worktree, kept between runs under the temp dir)."""
    sha = subprocess.run(["git", "rev-parse", "--short", rev], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"trimode-{sha}"
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return path


# ------------------------------------------------------------------ parent: the machine, AR, costs
def ar_versus_transformers(model, tok, args) -> dict:
    import torch

    from trimode.export import to_transformers_causal_lm

    hf = to_transformers_causal_lm(model)
    prompt = torch.tensor([prompt_ids(tok, 1)[0]])
    ours, _ = model.ar_generate(prompt, 32, eos_token_id=[])
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             pad_token_id=model.config.pad_token_id or 0)
    same = torch.equal(ours, theirs)
    rates = {"trimode": [], "transformers": []}
    for r in range(args.repeats):
        start = time.perf_counter()
        model.ar_generate(prompt, args.new_tokens, eos_token_id=[])
        rates["trimode"].append(args.new_tokens / (time.perf_counter() - start))
        start = time.perf_counter()
        with torch.no_grad():
            hf.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                        pad_token_id=model.config.pad_token_id or 0)
        rates["transformers"].append(args.new_tokens / (time.perf_counter() - start))
        print(f"AR repeat {r}: trimode {rates['trimode'][-1]:.1f} tok/s, "
              f"transformers {rates['transformers'][-1]:.1f} tok/s", file=sys.stderr)
    return {"same_tokens": same, "prompt_tokens": prompt.shape[1],
            **{k: statistics.median(v) for k, v in rates.items()}}


def environment() -> dict:
    import torch
    import transformers

    from trimode.generation.forward_timing import cpu_model

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "transformers": transformers.__version__, "commit": commit, "dtype": "float32"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory or shipped name (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each timed run")
    parser.add_argument("--inner", type=int, default=1,
                        help="timed runs of each mode inside one process (its median is that process's figure)")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64],
                        help="forward widths of the cost curve")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--baseline", default=None, help="git revision to compare every mode against")
    parser.add_argument("--out", default=None, help="markdown report path (default: print only)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return 0

    import torch

    from trimode.evaluation.forward_costs import CurveConfig, measure_curve
    from trimode.loading import default_model_path, load

    torch.set_num_threads(args.threads)
    model_arg = args.model or str(default_model_path())
    if Path(model_arg).exists():  # the child processes run elsewhere
        model_arg = str(Path(model_arg).resolve())
    loaded = load(model_arg)
    model, tok = loaded.model, loaded.tokenizer
    costs, _ = measure_curve(model, CurveConfig(ks=tuple(args.ks)), model_name=loaded.name)
    ar = ar_versus_transformers(model, tok, args)
    bandwidth = costs.roofline.bandwidth_gb_s * 1e9
    nbytes = costs.roofline.decode_bytes["total"]
    roofline = bandwidth / nbytes
    report = {"command": "python benchmarks/fast_forwards.py " + " ".join(sys.argv[1:]), "model": loaded.name,
              "parameters": sum(p.numel() for p in model.parameters()), "environment": environment(),
              "bandwidth_bytes_per_s": bandwidth, "streamed_bytes_per_token": nbytes,
              "roofline_tokens_per_s": roofline, "ar": ar, "forward_costs": costs.to_dict()}
    del model, loaded
    if args.baseline:
        trees = {"new": ROOT, "old": baseline_tree(args.baseline)}
        runs = {name: [] for name in trees}
        for r in range(args.repeats):
            for name, tree in trees.items():
                runs[name].append(run_tree(tree, args, model_arg))
                print(f"modes repeat {r} {name}: " + ", ".join(
                    f"{k} {v['tokens_per_s']:.1f}" for k, v in runs[name][-1].items()), file=sys.stderr)
        report["baseline"] = args.baseline
        report["modes"] = {key: {name: statistics.median(run[key]["tokens_per_s"] for run in runs[name])
                                 for name in trees} for key in runs["new"][0]}
        report["modes_same_output"] = all(
            runs["new"][0][k]["output"] == runs["old"][0][k]["output"] for k in runs["new"][0]
            if runs["new"][0][k]["output"] is not None)
    text = markdown(report, args)
    publish(text, report, args.out)
    return 0


def publish(text: str, report: dict, out: str | None) -> None:
    """Print the markdown report; with ``out``, write it there and the raw figures beside it as JSON."""
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        Path(out).with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")


def markdown(rep: dict, args) -> str:
    env, ar = rep["environment"], rep["ar"]
    roof = rep["roofline_tokens_per_s"]
    lines = [f"# Fast forwards: {rep['model']} on {env['cpu']} ({env['threads']} threads)", "",
             f"Command: `{rep['command']}`", "", f"Environment: `{json.dumps(env)}`", "",
             "## The machine's limit", "",
             f"- copy bandwidth (bytes read + written): {rep['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s",
             f"- bytes streamed per decode token: {rep['streamed_bytes_per_token'] / 1e6:.1f} MB "
             f"({rep['parameters'] / 1e6:.1f}M parameters, float32)",
             f"- AR roofline: {roof:.1f} tokens/s", "",
             "## AR decode, batch 1", "",
             f"Prompt {ar['prompt_tokens']} tokens, {args.new_tokens} new tokens, greedy, median of "
             f"{args.repeats} interleaved runs; first 32 tokens identical to transformers: {ar['same_tokens']}.", "",
             "| | tokens/s | of roofline | vs transformers |", "|---|---|---|---|",
             f"| trimode | {ar['trimode']:.1f} | {ar['trimode'] / roof:.0%} | {ar['trimode'] / ar['transformers']:.2f}x |",
             f"| transformers `generate()` | {ar['transformers']:.1f} | {ar['transformers'] / roof:.0%} | 1.00x |",
             "", "## Forward of k new tokens after a cached prefix", ""]
    fc = rep["forward_costs"]
    lines += forward_cost_rows(fc)
    if "modes" in rep:
        lines += ["", f"## Every mode, this tree against `{rep['baseline']}`", "",
                  f"Block length {args.block} (speculative modes and diffusion), {args.new_tokens} new tokens per "
                  f"row, no EOS stop, held-out chat/code prompts, each tree in its own process, median of "
                  f"{args.repeats} interleaved processes (each the median of its {args.inner} runs). Greedy outputs identical between the trees: "
                  f"{rep['modes_same_output']}.", "",
                  "| mode @ batch | new tokens/s | old tokens/s | new / old |", "|---|---|---|---|"]
        for key, v in rep["modes"].items():
            lines.append(f"| {key} | {v['new']:.1f} | {v['old']:.1f} | {v['new'] / v['old']:.2f}x |")
    return "\n".join(lines) + "\n"


def forward_cost_rows(fc: dict) -> list[str]:
    """The forward-cost table, from ForwardCosts.to_dict()."""
    rows = [f"Causal forwards after a {fc['prefix_tokens']}-token cached prefix, {fc['repeats']} interleaved rounds.",
            "", "| k | ms (median) | ms (min) | x k=1 (median) | x k=1 (min) |", "|---|---|---|---|---|"]
    for p in fc["points"]:
        rows.append(f"| {p['k']} | {p['median_ms']:.1f} | {p['min_ms']:.1f} | {p['ratio']:.2f} | {p['min_ratio']:.2f} |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
