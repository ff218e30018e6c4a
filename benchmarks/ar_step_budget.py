"""Where the time of one AR decode token goes, against what this machine can stream.

A k = 1 decode step is bandwidth-bound: it reads every weight once. This benchmark
splits one token's time into parts, all measured in one process, interleaved:

- the machine: read bandwidth (summing a large float32 buffer) and copy bandwidth
  (``trimode.evaluation.forward_costs.memory_bandwidth``, the roofline's convention);
- *matmuls alone*: every projection of the model (packed groups as the forward calls
  them, the output head included) run back to back on a 1-token input: the fastest a
  forward can be with the library's matmul kernels and nothing else;
- *forward*: one causal 1-token forward after a cached prefix (``time_forwards``);
- *AR token*: ``ar_generate`` time per token (forward + sampling + bookkeeping).

It says what fraction of the roofline each part leaves reachable, which is what the
"AR decode >= 70% of the roofline" goal asks of the engine::

    python benchmarks/ar_step_budget.py --out benchmarks/reports/trimode-smol/ar_step_budget.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fast_forwards import environment, prompt_ids, publish  # noqa: E402


def read_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 5) -> float:
    """GB/s of summing a float32 buffer of ``nbytes`` (bytes read / seconds of the fastest sum)."""
    buf = torch.ones(nbytes // 4)
    buf.sum()
    best = min(_seconds(buf.sum) for _ in range(repeats))
    return buf.numel() * 4 / best / 1e9


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_pass(model):
    """A function running every projection of ``model`` once on a 1-token input, as a forward would."""
    calls = []
    for group in model._projection_groups():
        x = torch.randn(1, 1, group[0].in_features)
        packed = group[0]._packed
        if packed is not None:
            calls.append(lambda x=x, p=packed: p(x))
        else:
            calls += [lambda x=x, m=m: F.linear(x, m.weight, m.bias) for m in group]

    def run():
        for call in calls:
            call()
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory or shipped name (default: the default model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds of every timed part")
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per timed ar_generate call")
    parser.add_argument("--out", default=None, help="markdown report path (default: print only)")
    args = parser.parse_args()

    from trimode.evaluation.forward_costs import decode_step_bytes, memory_bandwidth
    from trimode.generation.forward_timing import time_forwards
    from trimode.loading import load

    torch.set_num_threads(args.threads)
    loaded = load(args.model)
    model, tok = loaded.model, loaded.tokenizer
    prompt = torch.tensor([prompt_ids(tok, 1)[0]])
    matmuls = matmul_pass(model)
    nbytes = decode_step_bytes(model)["total"]
    parts = {"read_gb_s": [], "copy_gb_s": [], "matmuls_ms": [], "forward_ms": [], "ar_token_ms": []}
    with torch.no_grad():
        matmuls()
        model.ar_generate(prompt, 4, eos_token_id=[])
        for r in range(args.rounds):
            parts["read_gb_s"].append(read_bandwidth())
            parts["copy_gb_s"].append(memory_bandwidth())
            parts["matmuls_ms"].append(1e3 * statistics.median(_seconds(matmuls) for _ in range(5)))
            parts["forward_ms"].append(1e3 * statistics.median(
                time_forwards(model, [("write", 1)], prefix_tokens=200, repeats=5)[("write", 1)]))
            parts["ar_token_ms"].append(1e3 * _seconds(
                lambda: model.ar_generate(prompt, args.new_tokens, eos_token_id=[])) / args.new_tokens)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in parts.items()), file=sys.stderr)
    med = {k: statistics.median(v) for k, v in parts.items()}
    report = {"command": "python benchmarks/ar_step_budget.py " + " ".join(sys.argv[1:]), "model": loaded.name,
              "environment": environment(), "streamed_bytes_per_token": nbytes, "rounds": args.rounds,
              "median": med, "samples": parts}
    text = markdown(report)
    publish(text, report, args.out)
    return 0


def markdown(rep: dict) -> str:
    med, nbytes = rep["median"], rep["streamed_bytes_per_token"]
    roofline_ms = nbytes / (med["copy_gb_s"] * 1e9) * 1e3  # the roofline's convention: copy bandwidth

    def row(name: str, ms: float, what: str) -> str:
        return (f"| {name} | {ms:.1f} | {nbytes / ms / 1e6:.1f} | {1e3 / ms:.1f} | {roofline_ms / ms:.0%} | "
                f"{what} |")

    env = rep["environment"]
    return "\n".join([
        f"# One AR decode token: {rep['model']} on {env['cpu']} ({env['threads']} threads)", "",
        f"Command: `{rep['command']}`", "",
        f"Environment: `{json.dumps(env)}`", "",
        f"Medians of {rep['rounds']} interleaved rounds, one process. Bytes streamed per token: "
        f"{nbytes / 1e6:.1f} MB (every projection weight once).", "",
        f"- read bandwidth (sum of a 512 MiB buffer): {med['read_gb_s']:.1f} GB/s",
        f"- copy bandwidth (bytes read + written; the roofline's convention): {med['copy_gb_s']:.1f} GB/s",
        f"- roofline: {roofline_ms:.1f} ms per token ({1e3 / roofline_ms:.1f} tokens/s); 70% of it: "
        f"{roofline_ms / 0.7:.1f} ms per token", "",
        "| part | ms per token | effective GB/s | tokens/s if only this | of roofline | what it is |",
        "|---|---|---|---|---|---|",
        row("matmuls alone", med["matmuls_ms"], "every projection, back to back, 1-token input"),
        row("forward", med["forward_ms"], "one causal 1-token forward after 200 cached tokens"),
        row("AR token", med["ar_token_ms"], "`ar_generate`, per token (forward + sampling + loop)"),
        "",
        f"Beside the matmuls, a forward spends {med['forward_ms'] - med['matmuls_ms']:.1f} ms (norms, RoPE, "
        f"attention, cache writes, residuals, op dispatch) and the loop {med['ar_token_ms'] - med['forward_ms']:.1f} "
        "ms more per token.", "",
    ])


if __name__ == "__main__":
    sys.exit(main())
