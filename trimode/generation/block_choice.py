"""The arithmetic of ``block_length="auto"``'s decision: pure functions of forward costs and an
acceptance profile, so a test can check each by hand. :mod:`.autotune` measures both, caches the
choice, and its docstring explains the model (seconds per cycle, overhead, the margin rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

from .calibration import AcceptanceProfile
from .names import MODE_NAMES, SPECULATIVE_MODES

CostFn = Callable[[str, int], float]
"""(kind, k) -> seconds of one forward of k new tokens (see :mod:`.forward_timing`)."""
DEFAULT_MARGIN = 0.03


@dataclass
class CycleTiming:
    """What a cycle costs beyond its forwards, from calibration wall time (module docstring)."""

    overhead_s: float
    """Per cycle (speculative modes) or per forward (diffusion)."""
    ar_step_s: float
    """Seconds of one AR step, overhead included."""
    source: str = "calibration"


@dataclass
class BlockChoice:
    """The decision and everything behind it (reported by ``trimode bench``)."""

    mode: str
    block_length: int
    rows: list[dict]  # per candidate: block_length, tokens_per_cycle, seconds_per_cycle, tokens_per_s, speedup_vs_ar
    ar_tokens_per_s: float
    profile_source: str
    fastest_block_length: int | None = None
    """The argmax of predicted tokens/s (``block_length`` is the smallest within ``margin`` of it)."""
    margin: float = 0.0
    cost_source: str = "given"
    timing_source: str = "calibration"

    @property
    def predicted_speedup(self) -> float:
        return next(r["speedup_vs_ar"] for r in self.rows if r["block_length"] == self.block_length)

    def predicted_gain_over(self, block_length: int) -> float | None:
        """Predicted tokens/s of the choice over ``block_length`` (None if not a candidate)."""
        other = [r for r in self.rows if r["block_length"] == block_length]
        return self.predicted_speedup / other[0]["speedup_vs_ar"] if other else None

    def as_dict(self) -> dict:
        return asdict(self) | {"predicted_speedup": self.predicted_speedup}


def cycle_forward_seconds(mode: str, cost: CostFn, block_length: int) -> float:
    """Seconds of the forwards of one cycle: quadratic-spec one draft-and-verify forward,
    linear-spec (B > 1) a draft peek plus a verify write, anything else one AR step."""
    if mode == "quadratic-spec":
        return cost("quadratic", block_length)
    if mode == "linear-spec" and block_length > 1:
        return cost("peek", block_length) + cost("write", block_length)
    return cost("write", 1)


def break_even_acceptance(mode: str, cost: CostFn, block_length: int) -> float:
    """Tokens per cycle at which a speculative ``mode`` matches AR's tokens/s: one cycle's forwards
    over one AR forward. Where a B-token forward costs what a 1-token one does (a GPU at small
    batch) that is 2.0 for linear-spec; on a CPU, whose forward cost grows with B, it is higher."""
    check_speculative(mode, block_length)
    return cycle_forward_seconds(mode, cost, block_length) / cost("write", 1)


def check_speculative(mode: str, block_length: int) -> None:
    if mode not in SPECULATIVE_MODES:
        raise ValueError(f"mode={mode!r}: break-even acceptance is defined for {' and '.join(SPECULATIVE_MODES)}")
    if block_length < 2:
        raise ValueError(f"block_length={block_length} must be >= 2 for speculation to draft anything")


def _diffusion_forwards(profile: AcceptanceProfile, cost: CostFn, b: int) -> tuple[float, int]:
    """(seconds of the forwards diffusion ran at block ``b``, their number)."""
    _, denoise, writes = profile.diffusion[b]
    return denoise * cost("peek", b) + writes * cost("write", b), denoise + writes


def cycle_timing(mode: str, profile: AcceptanceProfile, cost: CostFn) -> CycleTiming:
    """The overhead and AR step time the calibration wall time implies (see module docstring).

    The fastest call is kept, as for the costs: noise only adds time, and per-cycle time barely
    depends on the prompt. No calibration timing: no overhead, and AR's step is one write forward.
    """
    ar_step = cost("write", 1)
    if profile.ar_step_seconds:
        ar_step = max(ar_step, min(profile.ar_step_seconds))
    overhead = 0.0  # per cycle (speculative) or per forward (diffusion)
    if profile.cycle_seconds:
        if mode == "diffusion" and profile.block_length in profile.diffusion:
            seconds, count = _diffusion_forwards(profile, cost, profile.block_length)
            overhead = max(0.0, min(profile.cycle_seconds) - seconds / max(1, count))
        elif mode != "diffusion":
            overhead = max(0.0, min(profile.cycle_seconds) - cycle_forward_seconds(mode, cost, profile.block_length))
    return CycleTiming(overhead, ar_step)


def pick_within_margin(rows: list[dict], margin: float) -> tuple[dict, dict]:
    """(the chosen row, the fastest row): the smallest block whose predicted tokens/s is at least
    ``(1 - margin)`` of the best (module docstring); exact ties go to the smaller block as well."""
    fastest = max(rows, key=lambda r: (r["tokens_per_s"], -r["block_length"]))
    floor = (1.0 - margin) * fastest["tokens_per_s"]
    chosen = min((r for r in rows if r["tokens_per_s"] >= floor), key=lambda r: r["block_length"])
    return chosen, fastest


def choose_block_length(mode: str, profile: AcceptanceProfile, cost: CostFn, candidates: list[int], *,
                        timing: CycleTiming | None = None, margin: float = DEFAULT_MARGIN) -> BlockChoice:
    """Pure decision: predicted tokens/s per candidate; the smallest block within ``margin`` of the best.

    ``timing``: the overhead and AR step time (None: derived from the profile's calibration timing).
    """
    check_mode(mode)
    timing = timing or cycle_timing(mode, profile, cost)
    ar_step, overhead = timing.ar_step_s, timing.overhead_s
    ar_rate = 1.0 / ar_step
    rows = []
    for b in sorted(candidates):
        if b == 1 and mode in ("diffusion", "linear-spec"):
            # One token per cycle through a single write forward: the AR step, overhead included.
            rows.append({"block_length": 1, "tokens_per_cycle": 1.0, "seconds_per_cycle": ar_step,
                         "tokens_per_s": ar_rate, "speedup_vs_ar": 1.0})
            continue
        if mode == "diffusion":
            if b not in profile.diffusion or not profile.diffusion[b][0]:
                continue
            tokens, _, writes = profile.diffusion[b]
            seconds, count = _diffusion_forwards(profile, cost, b)
            seconds += overhead * count
            blocks = max(1, writes)
            per_cycle, spc = tokens / blocks, seconds / blocks
            rate = tokens / seconds if seconds > 0 else 0.0
        else:
            if mode in SPECULATIVE_MODES and b > profile.block_length:
                continue
            per_cycle = profile.tokens_per_cycle(b) if mode != "ar" else 1.0
            spc = cycle_forward_seconds(mode, cost, b) + overhead
            rate = per_cycle / spc
        rows.append({"block_length": b, "tokens_per_cycle": per_cycle, "seconds_per_cycle": spc,
                     "tokens_per_s": rate, "speedup_vs_ar": rate / ar_rate})
    if not rows:
        raise ValueError(f"no candidate block length of {sorted(candidates)} could be predicted for mode "
                         f"{mode!r} (profile measured at block {profile.block_length})")
    chosen, fastest = pick_within_margin(rows, margin)
    return BlockChoice(mode, chosen["block_length"], rows, ar_rate, profile.source,
                       fastest_block_length=fastest["block_length"], margin=margin, timing_source=timing.source)


def check_mode(mode: str) -> None:
    if mode not in MODE_NAMES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MODE_NAMES)}")
