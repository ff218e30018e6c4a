"""The forward-cost curve: what one forward of k new tokens costs, on this machine, for the loaded model.

Every decoder but AR spends its time in forwards of several tokens at once
(a speculative draft and its verification, a diffusion block), so whether a
mode pays off here depends on how the cost of a forward grows with the number
of tokens ``k`` it appends to a cached prefix: about flat on a GPU at small
batch, rising on a CPU. This module measures that curve and keeps it:

- :func:`time_forwards`, the one timing primitive (``block_length="auto"``
  in :mod:`.autotune` uses it too): forwards of each (kind, k) after a cached
  prefix, one untimed warm-up round, then rounds interleaved over every
  (kind, k) so machine noise lands on all of them alike. Kinds: ``write``
  (causal, appends: AR and verification), ``peek`` (bidirectional block with
  the drafter on: drafting, denoising) and ``quadratic`` (quadratic-spec's
  fused ``k + k*k`` layout).
- :func:`measure_curve`, what ``trimode bench --forward-costs`` reports: per
  k the median and the minimum of the rounds, the ratio to k = 1 and the
  tokens/s equivalent, beside a roofline for k = 1: the bytes one decode step
  streams (:func:`decode_step_bytes`) over the memory bandwidth measured in
  the same run (:func:`memory_bandwidth`).
- :class:`CostStore`, the curve on disk, one JSON file per model identity
  and machine under trimode's cache directory, so that every process on the
  same machine and model (``block_length="auto"`` included) uses the same
  curve instead of a fresh, noisy one. ``trimode bench --forward-costs``
  replaces it; auto adds the points it needs and finds missing.

Why the median and the minimum: on a shared machine noise only ever adds
time, so the minimum is the steadiest estimate of a forward's own cost (auto
decides on it); the median is what a typical call costs (the report shows it).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..assembly import cache_root
from ..generation.loop import decoding_cache
from ..masks import block_pattern, quadratic_pattern

KINDS = ("write", "peek", "quadratic")
DEFAULT_KS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_PREFIX_TOKENS = 200
MIN_ROUNDS = 3
"""Rounds :func:`time_forwards` always runs, whatever its time budget."""
STORE_FORMAT = 1
BANDWIDTH_CONVENTION = ("a copy of a float32 buffer on the model's device with the process's torch threads; "
                        "GB/s = (bytes read + bytes written) / seconds of the fastest copy, 1 GB = 1e9 bytes")

Key = tuple[str, int]  # (kind, k)
Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the timing primitive
def forward_width(kind: str, k: int) -> int:
    """Tokens in one forward of ``kind`` for block ``k`` (quadratic: the chain plus k groups of k)."""
    return k + k * k if kind == "quadratic" else k


def cost_inputs(model, kind: str, k: int, prefix: int, device) -> tuple[torch.Tensor, dict]:
    """(tokens, kwargs) of one forward of ``kind`` with ``k`` block tokens after ``prefix`` cached ones."""
    cfg = model.config
    gen = torch.Generator().manual_seed(k)
    low = min(7, cfg.vocab_size - 1)
    if kind == "write":
        return torch.randint(low, cfg.vocab_size, (1, k), generator=gen).to(device), {}
    if kind == "peek":
        tokens = torch.full((1, k), cfg.mask_token_id, dtype=torch.long, device=device)
        return tokens, dict(attention_mask=block_pattern(k, device=device), cache_write=False, use_drafter=True)
    if kind == "quadratic":
        chain = torch.randint(low, cfg.vocab_size, (1, k), generator=gen).to(device)
        groups = torch.full((1, k * k), cfg.mask_token_id, dtype=torch.long, device=device)
        ar = torch.arange(k, device=device)
        group_pos = (ar[:, None] + 1 + ar[None, :]).reshape(-1)
        positions = (prefix + torch.cat([ar, group_pos]))[None]
        return torch.cat([chain, groups], 1), dict(position_ids=positions, cache_write=False,
                                                   attention_mask=quadratic_pattern(k, list(range(k)), k,
                                                                                    device=device))
    raise ValueError(f"forward kind {kind!r} is not one of {', '.join(KINDS)}")


def _sync(device: torch.device) -> None:
    # CUDA runs kernels asynchronously: without a barrier the clock would time the launches only.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forwards(model, needs: Iterable[Key], *, prefix_tokens: int, repeats: int, time_budget: float | None = None,
                  seed: int = 0, progress: Callable[[int, int], None] | None = None) -> dict[Key, list[float]]:
    """Seconds of one forward of each (kind, k) in ``needs``, one sample per timed round.

    A prefill of ``prefix_tokens`` random tokens fills the cache once; every forward is
    cropped back to it. Round 0 runs every shape untimed (first-call allocations), then
    up to ``repeats`` timed rounds each run every key once; the order rotates from round
    to round, so no shape always runs first (or right after another). With a
    ``time_budget`` (seconds), rounds stop once it is spent, after at least ``MIN_ROUNDS``.
    Each timed call includes the softmax/argmax the decoders apply to its logits.
    ``progress(done, total)`` is called after every timed round.
    """
    needs = list(dict.fromkeys(needs))
    if not needs:
        return {}
    device = next(model.parameters()).device
    cfg = model.config
    widest = max(forward_width(kind, k) for kind, k in needs)
    cache = decoding_cache(model, 1, prefix_tokens + widest + 1)  # as a decode would (compiled: full width)
    inputs = {key: cost_inputs(model, *key, prefix_tokens, device) for key in needs}
    samples: dict[Key, list[float]] = {key: [] for key in needs}
    gen = torch.Generator().manual_seed(seed)
    prompt = torch.randint(min(7, cfg.vocab_size - 1), cfg.vocab_size, (1, prefix_tokens), generator=gen)
    with torch.no_grad():
        model(prompt.to(device), past_key_values=cache)
        started = time.perf_counter()
        for round_ in range(repeats + 1):  # round 0 warms every shape up, untimed
            shift = round_ % len(needs)
            for key in needs[shift:] + needs[:shift]:
                tokens, kwargs = inputs[key]
                _sync(device)
                t0 = time.perf_counter()
                logits = model(tokens, past_key_values=cache, **kwargs).logits
                logits.float().softmax(-1).argmax(-1)  # what the decoders do with them (greedy)
                _sync(device)
                elapsed = time.perf_counter() - t0
                cache.crop(prefix_tokens)
                if round_:
                    samples[key].append(elapsed)
            if round_ and progress is not None:
                progress(round_, repeats)
            if (time_budget is not None and round_ >= MIN_ROUNDS
                    and time.perf_counter() - started > time_budget):
                break
    return samples


def monotone(costs: dict[Key, float]) -> dict[Key, float]:
    """Per kind, costs made non-decreasing in k: a wider forward never costs less, a dip is leftover noise."""
    out = dict(costs)
    for kind in {kind for kind, _ in out}:
        running = 0.0
        for k in sorted(k for kd, k in out if kd == kind):
            running = out[(kind, k)] = max(out[(kind, k)], running)
    return out


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
        _sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        _sync(device)
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


# ---------------------------------------------------------------- identity
def _cpu_model() -> str:
    from .environment import cpu_model

    return cpu_model()


def _config_sha256(model) -> str:
    # Fields that say where or by what the model was saved, not what it computes.
    volatile = ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "_commit_hash")
    config = {k: v for k, v in model.config.to_dict().items() if k not in volatile}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _weight_layout(model) -> str:
    """How the projection weights are laid out for the matmuls (their layout changes what a forward
    costs): "packed" (oneDNN-packed, what loading does on CPU), "compiled" or "dense"."""
    if getattr(model, "compiled_forwards", None) is not None:
        return "compiled"
    if any(getattr(m, "packed", False) is True for m in model.modules()):
        return "packed"
    return "dense"


def machine_identity(model) -> dict:
    """What a measured curve depends on: the model (config, parameters, dtype, weight layout) and the
    machine (device, its name, CPU model, torch threads and version). The key of :class:`CostStore`."""
    param = next(model.parameters())
    device = param.device
    cpu = _cpu_model()
    return {
        "config_sha256": _config_sha256(model),
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(param.dtype).removeprefix("torch."),
        "weight_layout": _weight_layout(model),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def machine_facts(model, model_name: str | None = None) -> dict:
    """The identity plus what a reader wants beside it (model name, CPU count, python)."""
    name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__
    return {"model": name} | machine_identity(model) | {"cpu_count": os.cpu_count(),
                                                        "python": platform.python_version()}


# ---------------------------------------------------------------- the persisted curve
def _identity_hash(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def store_path(identity: dict) -> Path:
    return cache_root() / "forward-costs" / f"{_identity_hash(identity)}.json"


def _point_key(kind: str, k: int, prefix: int) -> str:
    return f"{kind}/{k}/{prefix}"  # JSON object keys are strings


@dataclass
class CostStore:
    """The forward costs of one model identity on one machine, as a JSON file (written atomically).

    ``points``: per ``"kind/k/prefix"``, {"min_s", "median_s", "samples"}. ``timings``: what
    :mod:`.autotune` derives from its calibration per ``"mode@block"`` (its per-cycle overhead),
    kept so that a later process decides from the same numbers. Replacing the points (a new
    curve) drops the timings: they were derived against the old points.
    """

    path: Path | None
    identity: dict
    points: dict[str, dict] = field(default_factory=dict)
    timings: dict[str, dict] = field(default_factory=dict)
    loaded_from_disk: bool = False
    measured_in_process: bool = False
    """Set by whoever adds freshly timed points (not saved)."""

    @classmethod
    def load(cls, model, persist: bool = True) -> "CostStore":
        """The store of ``model`` on this machine; empty when there is none yet (or ``persist`` is off)."""
        identity = machine_identity(model)
        if not persist:
            return cls(None, identity)
        path = store_path(identity)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return cls(path, identity)
        if data.get("format") != STORE_FORMAT or data.get("identity") != identity:
            return cls(path, identity)  # another model or machine behind the same hash: start afresh
        return cls(path, identity, dict(data.get("points", {})), dict(data.get("timings", {})), True)

    def get(self, kind: str, k: int, prefix: int) -> dict | None:
        return self.points.get(_point_key(kind, k, prefix))

    def record(self, samples: dict[Key, list[float]], prefix: int) -> None:
        for (kind, k), values in samples.items():
            if values:
                self.points[_point_key(kind, k, prefix)] = {"min_s": min(values),
                                                            "median_s": statistics.median(values),
                                                            "samples": len(values)}

    def minimum_costs(self, prefix: int) -> dict[Key, float]:
        """{(kind, k): fastest seconds} of every stored point at ``prefix``."""
        out = {}
        for key, point in self.points.items():
            kind, k, p = key.split("/")
            if int(p) == prefix:
                out[(kind, int(k))] = point["min_s"]
        return out

    def replace_points(self, samples: dict[Key, list[float]], prefix: int) -> None:
        self.points, self.timings = {}, {}
        self.record(samples, prefix)

    def save(self) -> Path | None:
        """Write the file atomically (a temporary file renamed over it); a failure is a warning, not an error:
        the curve is then only kept in memory."""
        if self.path is None:
            return None
        data = {"format": STORE_FORMAT, "identity": self.identity, "points": self.points, "timings": self.timings}
        tmp = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # A reader (another process deciding "auto") sees the old file or the new one, never half of one.
            with tempfile.NamedTemporaryFile("w", dir=self.path.parent, suffix=".tmp", delete=False) as f:
                tmp = Path(f.name)
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as e:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            warnings.warn(f"could not save the forward costs to {self.path}: {e}", stacklevel=2)
            return None
        return self.path


# ---------------------------------------------------------------- the curve
@dataclass
class CurveConfig:
    """What ``trimode bench --forward-costs`` measures."""

    ks: tuple[int, ...] = DEFAULT_KS
    """New tokens per forward (k = 1 is always added: it is the reference of the ratios)."""
    kinds: tuple[str, ...] = ("write",)
    """Forward kinds: write, peek, quadratic."""
    prefix_tokens: int = DEFAULT_PREFIX_TOKENS
    """Cached tokens every forward attends to."""
    repeats: int = 9
    """Timed rounds (samples per point), after one untimed warm-up round."""
    bandwidth_bytes: int = 256 * 2**20
    """Size of the buffer the bandwidth copy moves."""
    bandwidth_repeats: int = 5
    seed: int = 0

    def validate(self) -> "CurveConfig":
        check_ks(self.ks)
        bad = [kind for kind in self.kinds if kind not in KINDS]
        if not self.kinds or bad:
            raise ValueError(f"forward kinds {list(self.kinds)!r}: each must be one of {', '.join(KINDS)}")
        for name in ("prefix_tokens", "repeats", "bandwidth_bytes", "bandwidth_repeats"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 1")
        return self


def check_ks(ks) -> list[int]:
    """``ks`` sorted with 1 added, or a ValueError that says what is allowed."""
    ks = list(ks)
    bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, int) or k < 1]
    if not ks or bad:
        raise ValueError(f"k values must be positive integers (new tokens per forward, e.g. "
                         f"{','.join(map(str, DEFAULT_KS))}); got {bad[0] if bad else 'none'!r}")
    return sorted(set(ks) | {1})


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
    from .autotune import forget_costs

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
