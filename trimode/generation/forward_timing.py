"""Timing k-token forwards, and the costs kept per model and machine.

What ``block_length="auto"`` (:mod:`.autotune`) decides from, and what
``trimode bench --forward-costs`` (:mod:`trimode.evaluation.forward_costs`) reports:

- :func:`time_forwards`, the one timing primitive: forwards of each (kind, k)
  after a cached prefix, one untimed warm-up round, then rounds interleaved over
  every (kind, k) so machine noise lands on all of them alike. Kinds: ``write``
  (causal, appends: AR and verification), ``peek`` (bidirectional block with the
  drafter on: drafting, denoising) and ``quadratic`` (quadratic-spec's fused
  ``k + k*k`` layout).
- :class:`CostStore`, the measured costs on disk, one JSON file per model
  identity and machine (:func:`machine_identity`) under trimode's cache
  directory, so that every process on the same machine and model decides from
  the same numbers instead of a fresh, noisy measurement.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from ..cache_dir import cache_root
from ..masks import block_pattern, quadratic_offsets, quadratic_pattern
from .loop import decoding_cache

KINDS = ("write", "peek", "quadratic")
DEFAULT_PREFIX_TOKENS = 200
MIN_ROUNDS = 3
"""Rounds :func:`time_forwards` always runs, whatever its time budget."""
STORE_FORMAT = 1

Key = tuple[str, int]  # (kind, k)


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
        positions = (prefix + quadratic_offsets(k, device=device))[None]
        return torch.cat([chain, groups], 1), dict(position_ids=positions, cache_write=False,
                                                   attention_mask=quadratic_pattern(k, list(range(k)), k,
                                                                                    device=device))
    raise ValueError(f"forward kind {kind!r} is not one of {', '.join(KINDS)}")


@contextmanager
def counted_syncs() -> Iterator[list[str]]:
    """Record every host-device synchronisation inside the block (CUDA; PyTorch's sync debug mode).

    Yields a list that receives one message per sync: what a GPU run checks to prove that
    decoding waits for the device once per cycle, not per row or per layer."""
    torch.cuda.synchronize()  # work queued before the block is not the block's
    syncs: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield syncs
        finally:
            torch.cuda.set_sync_debug_mode("default")
            # One warning per sync ("called a synchronizing CUDA operation"); not the mode's own notice.
            syncs.extend(str(w.message) for w in caught if str(w.message).startswith("called a synchronizing"))


def synchronize(device: torch.device) -> None:
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
                synchronize(device)
                t0 = time.perf_counter()
                logits = model(tokens, past_key_values=cache, **kwargs).logits
                logits.float().softmax(-1).argmax(-1)  # what the decoders do with them (greedy)
                synchronize(device)
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


# ---------------------------------------------------------------- identity
def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


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
    cpu = cpu_model()
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
