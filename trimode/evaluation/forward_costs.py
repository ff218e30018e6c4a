"""The forward-cost curve: what one forward of k new tokens costs, on this machine, for the loaded model.

Every decoder but AR spends its time in forwards of several tokens at once
(a speculative draft and its verification, a diffusion block), so whether a
mode pays off here depends on how the cost of a forward grows with the number
of tokens ``k`` it appends to a cached prefix: about flat on a GPU at small
batch, rising on a CPU. :func:`measure_curve` is what ``trimode bench
--forward-costs`` reports: per k the median and the minimum of the rounds of
:func:`trimode.generation.forward_timing.time_forwards`, the ratio to k = 1
and the tokens/s equivalent, beside a roofline for k = 1: the bytes one decode
step streams (:func:`decode_step_bytes`) over the memory bandwidth measured in
the same run (:func:`memory_bandwidth`). :func:`refresh_store` makes it the
persisted curve that ``block_length="auto"`` decides from.

Why the median and the minimum: on a shared machine noise only ever adds
time, so the minimum is the steadiest estimate of a forward's own cost (auto
decides on it); the median is what a typical call costs (the report shows it).
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..generation.forward_timing import (
    KINDS,
    CostStore,
    Key,
    forward_width,
    machine_identity,
    synchronize,
    time_forwards,
)
from .bench_config import CurveConfig

BANDWIDTH_CONVENTION = ("a copy of a float32 buffer on the model's device with the process's torch threads; "
                        "GB/s = (bytes read + bytes written) / seconds of the fastest copy, 1 GB = 1e9 bytes")

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the timing primitive
# ---------------------------------------------------------------- bandwidth and bytes
def memory_bandwidth(device=None, nbytes: int = 256 * 2**20, repeats: int = 5) -> float:
    """GB/s of copying a float32 buffer of ``nbytes`` (fastest of ``repeats``; see BANDWIDTH_CONVENTION)."""
    device = torch.device(device or "cpu")
    n = max(1, nbytes // 4)
    src = torch.ones(n, dtype=torch.float32, device=device)  # ones, not empty: its pages are touched
    dst = torch.empty_like(src)
    dst.copy_(src)  # untimed: the first copy also pays dst's page faults
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def decode_step_bytes(model) -> dict[str, int]:
    """Bytes of parameters one k = 1 causal decode step reads.

    Every 2-D weight of a Linear layer is streamed whole (the output head included; a
    weight shared by two layers counts once). LoRA adapter layers are left out: a causal
    step runs with the drafter off. The embedding table is gathered, not streamed: one
    row of ``hidden_size`` values per token. Norm weights and the KV cache are not counted.
    """
    seen, linear = set(), 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            w = module.weight
            if w.dim() == 2 and w.data_ptr() not in seen:
                seen.add(w.data_ptr())
                linear += w.numel() * w.element_size()
    embed = model.get_input_embeddings().weight
    row = model.config.hidden_size * embed.element_size()
    return {"linear_weights": linear, "embedding_row": row, "total": linear + row}


def machine_facts(model, model_name: str | None = None) -> dict:
    """The identity plus what a reader wants beside it (model name, CPU count, python)."""
    name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__
    return {"model": name} | machine_identity(model) | {"cpu_count": os.cpu_count(),
                                                        "python": platform.python_version()}


# ---------------------------------------------------------------- the curve
def check_ks(ks) -> list[int]:
    """``ks`` sorted with 1 added, or a ValueError that says what is allowed (as :class:`CurveConfig` does)."""
    return sorted(set(CurveConfig(ks=tuple(ks)).ks) | {1})


def _plan(model, config: CurveConfig) -> tuple[list[Key], list[dict]]:
    """(the (kind, k) to measure, the skipped ones with why): a forward must fit the model's context.
    A write or peek k that does not fit is an error (it was asked for); a quadratic one is skipped,
    its width grows as k*k and the default ks would otherwise fail."""
    context = model.config.max_position_embeddings
    room = context - config.prefix_tokens
    if room < 1:
        raise ValueError(f"prefix_tokens={config.prefix_tokens} leaves no room in the model's context of "
                         f"{context} tokens")
    ks = check_ks(config.ks)
    too_wide = [k for k in ks if k > room]
    if too_wide and set(config.kinds) - {"quadratic"}:
        raise ValueError(f"k={too_wide[0]} after a prefix of {config.prefix_tokens} tokens exceeds the model's "
                         f"context of {context} tokens: k must be <= {room}")
    needs, skipped = [], []
    for kind in config.kinds:
        for k in ks:
            if forward_width(kind, k) <= room:
                needs.append((kind, k))
            else:
                skipped.append({"kind": kind, "k": k, "why": f"{forward_width(kind, k)} tokens exceed the "
                                                             f"{room} the context leaves after the prefix"})
    return needs, skipped


@dataclass
class CostPoint:
    """One (kind, k) of the curve. Ratios are to k = 1 of the same kind, median to median, min to min."""

    kind: str
    k: int
    tokens: int
    median_ms: float
    min_ms: float
    ratio: float
    min_ratio: float
    tokens_per_s: float
    """k / median seconds: the rate if every token of the forward were kept."""
    samples_ms: list[float]


@dataclass
class Roofline:
    """The k = 1 causal step against the memory bound: decode bytes / bandwidth."""

    bandwidth_gb_s: float
    bandwidth_convention: str
    copy_bytes: int
    decode_bytes: dict[str, int]
    k1_roofline_ms: float
    k1_measured_ms: float
    """The median of the write k = 1 point."""
    fraction: float
    """roofline / measured: 1.0 would stream the weights at the copy's bandwidth."""


@dataclass
class ForwardCosts:
    """The measured curve, JSON-ready (:meth:`to_dict` / :meth:`from_dict`)."""

    machine: dict
    prefix_tokens: int
    repeats: int
    points: list[CostPoint]
    skipped: list[dict]
    roofline: Roofline | None
    elapsed_s: float
    kind: str = "forward_costs"

    def point(self, kind: str, k: int) -> CostPoint:
        return next(p for p in self.points if p.kind == kind and p.k == k)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ForwardCosts":
        data = dict(data)
        data["points"] = [CostPoint(**p) for p in data["points"]]
        data["roofline"] = Roofline(**data["roofline"]) if data.get("roofline") else None
        return cls(**data)


def _points(samples: dict[Key, list[float]]) -> list[CostPoint]:
    out = []
    for (kind, k), values in sorted(samples.items(), key=lambda item: (KINDS.index(item[0][0]), item[0][1])):
        ref = samples[(kind, 1)]
        median, ref_median = statistics.median(values), statistics.median(ref)
        out.append(CostPoint(kind, k, forward_width(kind, k), median * 1e3, min(values) * 1e3, median / ref_median,
                             min(values) / min(ref), k / median, [v * 1e3 for v in values]))
    return out


def _roofline(model, points: list[CostPoint], config: CurveConfig, log: Log) -> Roofline | None:
    """The roofline of the write k = 1 point (None without one: the roofline is a decode step's)."""
    step = next((p for p in points if p.kind == "write" and p.k == 1), None)
    if step is None:
        return None
    log(f"forward costs: memory bandwidth ({config.bandwidth_repeats} copies of "
        f"{config.bandwidth_bytes / 2**20:.0f} MiB) ...")
    device = next(model.parameters()).device
    gb_s = memory_bandwidth(device, config.bandwidth_bytes, config.bandwidth_repeats)
    decode = decode_step_bytes(model)
    roofline_ms = decode["total"] / (gb_s * 1e9) * 1e3
    return Roofline(gb_s, BANDWIDTH_CONVENTION, config.bandwidth_bytes, decode, roofline_ms, step.median_ms,
                    roofline_ms / step.median_ms)


def _round_progress(log: Log, started: float) -> Callable[[int, int], None]:
    """Progress lines for the rounds, at most one a second (a short run prints none)."""
    last = [started]

    def report(done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] >= 1.0 or (done == total and now - started >= 1.0):
            last[0] = now
            log(f"forward costs: round {done}/{total} ({now - started:.1f} s)")

    return report


def measure_curve(model, config: CurveConfig | None = None, *, model_name: str | None = None,
                  log: Log = _stderr) -> tuple[ForwardCosts, dict[Key, list[float]]]:
    """Measure the curve (and the bandwidth); returns it with the raw samples in seconds (for the store)."""
    config = (config or CurveConfig()).validate()
    needs, skipped = _plan(model, config)
    for kind in config.kinds:  # peek and quadratic ratios need their own k = 1
        if (kind, 1) not in needs:
            raise ValueError(f"kind {kind!r} at k = 1 does not fit the model's context after the prefix")
    started = time.perf_counter()
    log(f"forward costs: {len(needs)} forward shapes x {config.repeats} rounds after a {config.prefix_tokens}-token "
        "prefix ...")
    samples = time_forwards(model, needs, prefix_tokens=config.prefix_tokens, repeats=config.repeats,
                            seed=config.seed, progress=_round_progress(log, started))
    points = _points(samples)
    roofline = _roofline(model, points, config, log)
    return ForwardCosts(machine_facts(model, model_name), config.prefix_tokens, config.repeats, points, skipped,
                        roofline, time.perf_counter() - started), samples


def refresh_store(model, samples: dict[Key, list[float]], prefix: int) -> Path | None:
    """Replace the persisted curve of ``model`` on this machine with ``samples``; returns its path
    (None when it could not be written). Autotune's in-memory copy of it is dropped."""
    store = CostStore.load(model)
    store.replace_points(samples, prefix)
    path = store.save()
    from ..generation.autotune import forget_costs

    forget_costs(model)
    return path


# ---------------------------------------------------------------- output
def format_table(result: ForwardCosts) -> str:
    """The curve as a plain-text table, then the roofline line."""
    multi = len({p.kind for p in result.points}) > 1
    k1 = result.roofline.fraction if result.roofline else None
    rows = [{"kind": p.kind, "k": p.k, "ms": p.median_ms, "min_ms": p.min_ms, "ratio": f"{p.ratio:.2f}x",
             "tok_s": f"{p.tokens_per_s:.0f}",
             "roofline": f"{k1:.0%}" if p.kind == "write" and p.k == 1 and k1 is not None else None}
            for p in result.points]
    columns = ([("kind", "kind")] if multi else []) + [
        ("k", "k"), ("ms", "ms (median)"), ("min_ms", "ms (min)"), ("ratio", "x k=1"), ("tok_s", "tokens/s"),
        ("roofline", "of roofline")]
    m = result.machine
    threads = f"{m['threads']} thread" + ("s" if m["threads"] != 1 else "")
    lines = [f"Forward cost of k new tokens after a {result.prefix_tokens}-token cached prefix: {m['model']} "
             f"({m['parameters'] / 1e6:.1f}M parameters, {m['dtype']}) on {m['device_name']} ({m['device']}, "
             f"{threads}), {result.repeats} rounds", "", _text_table(rows, columns)]
    for s in result.skipped:
        lines.append(f"skipped {s['kind']} k={s['k']}: {s['why']}")
    r = result.roofline
    if r is not None:
        lines += ["", f"roofline k=1: {r.decode_bytes['total'] / 1e6:.2f} MB of weights / {r.bandwidth_gb_s:.1f} GB/s "
                      f"= {r.k1_roofline_ms:.3f} ms; measured {r.k1_measured_ms:.3f} ms (median) = {r.fraction:.0%} "
                      "of the roofline",
                  f"bandwidth: {r.bandwidth_convention}"]
    return "\n".join(lines)


def _text_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Right-aligned plain-text columns: (key, header); None prints as '-'."""
    def cell(v) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    cells = [[h for _, h in columns]] + [[cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_curve(result: ForwardCosts, out_dir: str | Path, plots: bool = True) -> list[Path]:
    """Write forward_costs.json (and forward_costs.png) into ``out_dir``; return the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "forward_costs.json"
    path.write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    paths = [path]
    if plots:
        from .plots import forward_cost_plot

        paths.append(forward_cost_plot(result.to_dict(), out / "forward_costs.png"))
    return paths
