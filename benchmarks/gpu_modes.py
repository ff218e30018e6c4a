"""The decoders on a GPU: a model of over 1B parameters in bfloat16, batch 1 and 8, one run.

Random weights (timing only: no checkpoint of this size can be fetched on the GPU machine), so
drafts are almost never accepted and the speculative modes' tokens/s here is their *floor*
(about one token per cycle). What carries over to a trained model is the cost of a cycle; the
report therefore also gives each mode's milliseconds per cycle, the k-token forward cost curve
and the tokens/s a cycle cost buys at a given tokens-per-forward (derived, and labelled so).

Measured in one process, in this order:

1. the k-token forward cost after a 512-token cached prefix, batch 1 (``trimode.generation.
   forward_timing.time_forwards``, the curve ``block_length="auto"`` reads): write forwards
   (AR verify / linear spec) for k = 1..64 and quadratic forwards for k = 2..8;
2. every mode at batch 1 and 8: tokens/s, forwards, cycles, ms per cycle (median of
   ``--repeats`` runs after a warm-up);
3. host synchronisations per decode forward, counted by PyTorch's sync debug mode;
4. AR with compiled forwards (``compile_forwards``: CUDA graphs via ``reduce-overhead``) at batch 1
   and 8: compile seconds and tokens/s against eager.

It writes a markdown report headed by the command that produced it::

    python benchmarks/gpu_modes.py --out benchmarks/reports/gpu/h200_1b.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODES = ("ar", "linear-spec", "quadratic-spec", "diffusion")
# A Llama-3.2-1B-shaped backbone with an untied diffusion head: 1.50B parameters.
SHAPE_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, max_position_embeddings=8192,
                mask_token_id=128255, eos_token_id=128001, bos_token_id=128000, pad_token_id=128004,
                block_size=32, tie_word_embeddings=False)


def build_model(device: torch.device, dtype: torch.dtype):
    import trimode

    torch.manual_seed(0)
    config = trimode.TrimodeConfig(**SHAPE_1B)
    with torch.device(device):
        model = trimode.TrimodeModel(config)
    return model.to(dtype).eval().requires_grad_(False)


def sync() -> None:
    torch.cuda.synchronize()


def forward_costs(model, prefix: int, repeats: int) -> dict:
    from trimode.generation.forward_timing import time_forwards

    needs = [("write", k) for k in (1, 2, 4, 8, 16, 32, 64)] + [("quadratic", k) for k in (2, 4, 8)]
    samples = time_forwards(model, needs, prefix_tokens=prefix, repeats=repeats)
    ms = {f"{kind}@{k}": 1e3 * statistics.median(v) for (kind, k), v in samples.items()}
    return {"prefix_tokens": prefix, "ms": ms}


def prompts(batch: int, length: int, vocab: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(batch)
    return torch.randint(1000, vocab - 1000, (batch, length), generator=gen).tolist()


def run_mode(model, mode: str, rows, args) -> dict:
    kw = dict(max_new_tokens=args.new_tokens, eos_token_id=[], return_stats=True)
    if mode != "ar":
        kw["block_length"] = args.block
    model.decode_mode(mode, rows, **dict(kw, max_new_tokens=2 * args.block))  # warm-up
    rates, cycle_ms = [], []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        _, nfe, stats = model.decode_mode(mode, rows, **kw)
        sync()
        elapsed = time.perf_counter() - start
        tokens = sum(stats.tokens_per_row)
        forwards = nfe - stats.prefill_forwards
        cycles = forwards // 2 if mode == "linear-spec" else forwards  # linear: a draft and a verify per cycle
        rates.append(tokens / elapsed)
        cycle_ms.append(1e3 * stats.decode_time / max(cycles, 1))
    return {"tokens_per_s": statistics.median(rates), "tokens": tokens, "forwards": forwards, "cycles": cycles,
            "tokens_per_forward": tokens / len(rows) / max(forwards, 1), "ms_per_cycle": statistics.median(cycle_ms),
            "prefill_ms": 1e3 * stats.prefill_time}


def count_syncs(model, mode: str, rows, args) -> dict:
    kw = dict(max_new_tokens=4 * args.block, eos_token_id=[], return_stats=True)
    if mode != "ar":
        kw["block_length"] = args.block
    from trimode.generation.forward_timing import counted_syncs

    with counted_syncs() as messages:
        _, nfe, stats = model.decode_mode(mode, rows, **kw)
    return {"syncs": len(messages), "decode_forwards": nfe - stats.prefill_forwards,
            "first": messages[0].splitlines()[0] if messages else None}


def agreement(model, batch: int, args) -> dict:
    """Greedy tokens of each speculative mode against AR's, in this dtype: rows identical, and the
    first position where a row differs. In bfloat16 a k-token forward rounds differently from k
    one-token forwards, so a near-tie in the logits can flip (float32 on CPU: identical, tested)."""
    rows = prompts(batch, args.prompt_tokens, model.config.vocab_size)
    kw = dict(max_new_tokens=64, eos_token_id=[])
    ref = model.ar_generate(rows, **kw)[0][:, args.prompt_tokens:]
    out = {}
    for mode in ("linear-spec", "quadratic-spec"):
        got = model.decode_mode(mode, rows, block_length=args.block, **kw)[0][:, args.prompt_tokens:]
        differs = (got != ref).int()
        first = [int(d.argmax()) if d.any() else None for d in differs]
        out[mode] = {"identical_rows": sum(f is None for f in first), "rows": batch, "first_difference": first}
    return out


def compiled_ar(model, batch: int, args) -> dict:
    rows = prompts(batch, args.prompt_tokens, model.config.vocab_size)
    kw = dict(max_new_tokens=args.new_tokens, eos_token_id=[], return_stats=True)
    eager = run_mode(model, "ar", rows, args)
    model.compile_forwards(widths=(1,), verbose=False)
    try:
        sync()
        start = time.perf_counter()
        first, _, _ = model.decode_mode("ar", rows, **kw)  # compiles (and records the CUDA graphs)
        sync()
        compile_s = time.perf_counter() - start
        compiled = run_mode(model, "ar", rows, args)
        same = torch.equal(first, model.decode_mode("ar", rows, **kw)[0])
    finally:
        model.compile_forwards(enabled=False)
    reference, _, _ = model.decode_mode("ar", rows, **kw)
    return {"eager_tokens_per_s": eager["tokens_per_s"], "compiled_tokens_per_s": compiled["tokens_per_s"],
            "first_call_s": compile_s, "same_tokens_as_eager": same and torch.equal(first, reference)}


def markdown(rep: dict, command: str) -> str:
    env = rep["environment"]
    lines = [f"# trimode's decoders on {env['gpu']}: {rep['parameters'] / 1e9:.2f}B parameters, bfloat16", "",
             f"Command: `{command}`", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, commit {env['commit']}; random weights, "
             f"prompts of {rep['prompt_tokens']} tokens, {rep['new_tokens']} new tokens per row, "
             f"block length {rep['block']}, median of {rep['repeats']} runs after a warm-up.", "",
             "Random weights accept almost no drafts: the speculative rows are the floor of those modes (about one "
             "token per cycle); a trained drafter's tokens/s is about (accepted + 1) / ms per cycle.", "",
             "## Every mode", "",
             "| mode | batch | tokens/s | tokens per forward | ms per cycle | prefill ms | syncs / decode forward |",
             "|---|---|---|---|---|---|---|"]
    for key, r in rep["modes"].items():
        mode, batch = key.split("@")
        s = rep["syncs"].get(key)
        ratio = f"{s['syncs']} / {s['decode_forwards']}" if s else "-"
        lines.append(f"| {mode} | {batch} | {r['tokens_per_s']:.1f} | {r['tokens_per_forward']:.2f} | "
                     f"{r['ms_per_cycle']:.2f} | {r['prefill_ms']:.1f} | {ratio} |")
    fc = rep["forward_costs"]
    base = fc["ms"]["write@1"]
    lines += ["", f"## k-token forward cost, batch 1, after {fc['prefix_tokens']} cached tokens", "",
              "| forward | ms | vs k=1 |", "|---|---|---|"]
    lines += [f"| {key} | {ms:.2f} | {ms / base:.2f} |" for key, ms in fc["ms"].items()]
    lines += ["", "## What a cycle buys (derived from the ms per cycle above, batch 1)", "",
              "| mode | tokens per cycle | tokens/s |", "|---|---|---|"]
    for mode in ("linear-spec", "quadratic-spec"):
        r = rep["modes"].get(f"{mode}@1")
        if r:
            lines += [f"| {mode} | {t} | {1e3 * t / r['ms_per_cycle']:.0f} |" for t in (1, 3, 5)]
    if rep.get("agreement"):
        lines += ["", "## Greedy tokens against AR's (64 new tokens per row, this dtype)", "",
                  "| mode | batch | rows identical to AR | first differing position per row |", "|---|---|---|---|"]
        for batch, modes in rep["agreement"].items():
            for mode, a in modes.items():
                lines.append(f"| {mode} | {batch} | {a['identical_rows']} / {a['rows']} | {a['first_difference']} |")
    if rep.get("compiled"):
        lines += ["", "## AR with compiled forwards (CUDA graphs)", "",
                  "| batch | eager tokens/s | compiled tokens/s | first call s | same tokens |", "|---|---|---|---|---|"]
        for batch, c in rep["compiled"].items():
            if "error" in c:
                lines.append(f"| {batch} | - | failed: {c['error']} | - | - |")
            else:
                lines.append(f"| {batch} | {c['eager_tokens_per_s']:.1f} | {c['compiled_tokens_per_s']:.1f} | "
                             f"{c['first_call_s']:.1f} | {c['same_tokens_as_eager']} |")
    lines += ["", f"Peak GPU memory: {rep['peak_memory_gb']:.1f} GB.", ""]
    return "\n".join(lines)


def command() -> str:
    return "python benchmarks/" + Path(__file__).name + " " + " ".join(sys.argv[1:])


def save(rep: dict, args) -> None:
    """Write the report so far (markdown, and the raw figures as JSON beside it)."""
    rep["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown(rep, command()))
        Path(args.out).with_suffix(".json").write_text(json.dumps(rep, indent=1) + "\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the markdown report here (and its JSON beside it)")
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--no-compile", action="store_true", help="skip the compiled-forwards part")
    p.add_argument("--commit", default="?", help="the commit measured (the GPU machine's copy has no git)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_modes.py needs a CUDA device")
    device = torch.device("cuda")
    model = build_model(device, torch.bfloat16)
    rep = {"environment": {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "commit": args.commit},
           "parameters": sum(p.numel() for p in model.parameters()), "prompt_tokens": args.prompt_tokens,
           "new_tokens": args.new_tokens, "block": args.block, "repeats": args.repeats,
           "modes": {}, "syncs": {}, "agreement": {}, "compiled": {}}
    t0 = time.perf_counter()
    rep["forward_costs"] = forward_costs(model, 512, repeats=10)
    print(f"forward costs done ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    for batch in args.batches:
        rows = prompts(batch, args.prompt_tokens, model.config.vocab_size)
        for mode in MODES:
            rep["modes"][f"{mode}@{batch}"] = run_mode(model, mode, rows, args)
            rep["syncs"][f"{mode}@{batch}"] = count_syncs(model, mode, rows, args)
            print(f"{mode}@{batch}: {rep['modes'][f'{mode}@{batch}']} syncs {rep['syncs'][f'{mode}@{batch}']} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    for batch in args.batches:
        rep["agreement"][str(batch)] = agreement(model, batch, args)
        print(f"agreement@{batch}: {rep['agreement'][str(batch)]}", file=sys.stderr, flush=True)
    save(rep, args)  # the modes are kept even if compiling below runs out of time
    if not args.no_compile:
        for batch in args.batches:
            try:
                rep["compiled"][str(batch)] = compiled_ar(model, batch, args)
            except Exception as exc:  # a compile failure is a finding to report, not a reason to lose the rest
                rep["compiled"][str(batch)] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
            print(f"compiled AR@{batch}: {rep['compiled'][str(batch)]} ({time.perf_counter() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            save(rep, args)
    print(markdown(rep, command()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
