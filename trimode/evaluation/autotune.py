"""Hardware-aware block length: ``block_length="auto"`` picks the B that maximises tokens/s here.

On a GPU a forward of 32 tokens costs about what a forward of 1 does, so the
largest block wins. On a CPU it does not (``trimode bench --forward-costs``
prints the curve of this machine), so the best block depends on the machine
*and* on how many drafts the model gets accepted. This module measures both and combines them:

    tokens/s (B) = tokens per cycle (B) / seconds per cycle (B)

**Forward costs.** ``c(kind, k)``: seconds of one forward of ``k`` new tokens
after a cached prefix of ``prefix_tokens``, for the kinds the decoders run:
``write`` (causal, appends: verification, AR), ``peek`` (bidirectional block,
drafter on: drafting, denoising) and ``quadratic`` (the fused ``B + B*B``
layout). They come from the forward-cost curve of :mod:`.forward_costs` (one
timing primitive for both): rounds interleaved over all (kind, k) so machine
noise hits every k alike, and the *fastest* round is kept: on a shared machine
noise only ever adds time, so the minimum is the steadiest estimate of a
forward's own cost. Per kind, costs are then made non-decreasing in k (a wider
forward never costs less; a dip is leftover noise).

The curve is persisted: one JSON file per model identity and machine under
trimode's cache directory (:class:`.forward_costs.CostStore`). ``auto`` reads
the points it needs from it and measures (and adds) only the missing ones, so
every process on the same machine and model decides from the same curve
instead of a fresh, noisy one; ``trimode bench --forward-costs`` replaces it.
In memory the store is also cached on the model object (attribute
``_trimode_autotune``); ``AutotuneConfig(persist=False)`` keeps it in memory only.

Each timed call is a forward plus the softmax/argmax the decoders apply to
its logits (for the quadratic layout, ``B + B*B`` rows of logits).

**Seconds per cycle** (spec section 4):

- linear-spec: ``c(peek, B) + c(write, B)`` (B = 1 drafts nothing: an AR step);
- quadratic-spec: ``c(quadratic, B)``, one forward over ``B + B*B`` tokens;
  candidates are capped so that ``B*(B+1) <= max_quadratic_tokens``;
- diffusion: measured directly, see below (B = 1 is an AR step too);

plus a per-cycle *overhead*: what the decoder spends outside those calls
(acceptance, emission, cache bookkeeping; it dominates for tiny models). It is
the residual between the calibration run's wall time (after its first token)
and what the costs above predict for it, per cycle, at the calibration block,
and is assumed the same for every B. AR's rate is measured the same way (an
AR run on each calibration prompt, right after the mode's). As for the costs,
the fastest call's time per cycle is kept. So at the calibration block the
prediction reproduces the measured speed, and other blocks differ from it by
the measured cost of their forwards and their predicted acceptance. Wall time
is as noisy as the costs, so the overhead and AR's step time are persisted
beside the curve (per mode and calibration block) the first time they are
derived, and later decisions reuse them: the same curve and the same (greedy,
deterministic) calibration then give the same decision.

**Tokens per cycle.** Speculative modes: one calibration run per prompt at
the largest candidate ``B_cal`` records the accepted drafts of every cycle,
``r`` (acceptance length - 1). Each cycle is a *streak* of ``r + 1`` tokens
(the accepted drafts and the bonus token) ended by the first rejected draft.
A block B emits ``min(r, B - 1) + 1`` tokens per cycle, so it needs
``ceil((r + 1) / B)`` cycles for the streak, and the prediction is

    tokens per cycle (B) = sum(r + 1) / sum(ceil((r + 1) / B))

This is an approximation: it assumes a shorter block drafts the same tokens
(drafts do not depend on how many masks follow them), so a draft is rejected
at the same place whatever the block. It reproduces the calibration exactly at
``B_cal``; for blocks with ``r < B - 1`` everywhere it is the familiar
``mean(min(r, B - 1)) + 1``, and it does not undercount long streaks, which a
small block consumes in several full cycles. The last cycle of a run, cut by
EOS or ``max_new_tokens``, counts as observed (a lower bound). ``trimode
bench`` reports predicted against measured acceptance per B, so the
approximation is checked on every run.

Diffusion: denoising depends on the block, so each candidate B is run and its
forwards counted: seconds per token = ``(denoise_nfe * c(peek, B) +
block_writes * c(write, B) + overhead * forwards) / tokens``.

**Decision.** Among the candidates, the *smallest* block whose predicted
tokens/s is within ``margin`` (default 3%) of the best one's. Predictions that
close are within the noise of the measurements behind them, so an argmax
would move with that noise; the smaller block is the safer of two equals (a
rejected draft wastes less of its forward, and its prediction extrapolates
less from the calibration).

**Profile source.** :func:`calibrate` (the bench calls it with its own
prompts) or, when ``auto`` is asked for before any calibration, a short run on
generic prompts: a few tokens sampled from the model itself after BOS
(seeded). Profiles are cached per mode and not refreshed from later calls, so
``"auto"`` gives the same B on every call of a process.

AR returns 1 (it has no block). Everything is injectable for tests:
``cost`` (a function ``(kind, k) -> seconds``) and ``profile``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..generation.modes import MODE_NAMES as MODES, SPECULATIVE_MODES
from . import forward_costs as curve
from .forward_costs import DEFAULT_PREFIX_TOKENS, CostStore

CostFn = Callable[[str, int], float]
_CACHE_ATTR = "_trimode_autotune"
DEFAULT_MARGIN = 0.03


@dataclass
class AutotuneConfig:
    """How ``auto`` measures.

    The forward costs are measured once per model and machine (then read from disk), within
    ``time_budget``; the calibration runs once per process and mode (diffusion, one run per
    candidate, the longest).
    """

    candidates: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    """Block lengths considered for the speculative modes (capped by the context length)."""
    diffusion_candidates: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Block lengths considered for diffusion (each one is a calibration run, so fewer)."""
    prefix_tokens: int = DEFAULT_PREFIX_TOKENS
    """Cached prefix the cost forwards attend to (prompt-sized; the curve's default, so that auto reads
    the points ``trimode bench --forward-costs`` measured)."""
    repeats: int = 7
    """Timed rounds per (kind, k); the fastest is kept."""
    time_budget: float = 1.5
    """Seconds after which cost rounds stop (at least 3 rounds always run)."""
    max_quadratic_tokens: int = 72
    """Cap on the quadratic forward width B*(B+1)."""
    calibration_prompts: int = 2
    """Generic prompts when no calibration was given."""
    calibration_tokens: int = 32
    """New tokens per calibration run."""
    seed: int = 0
    margin: float = DEFAULT_MARGIN
    """Relative tokens/s below the best within which the smallest block is chosen (module docstring)."""
    persist: bool = True
    """Read and write the forward costs and calibration timings on disk (:class:`.forward_costs.CostStore`)."""

    def validate(self) -> "AutotuneConfig":
        for name in ("candidates", "diffusion_candidates"):
            values = getattr(self, name)
            if not values or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values):
                raise ValueError(f"autotune {name}={values!r} must be positive integers")
        for name in ("prefix_tokens", "repeats", "max_quadratic_tokens", "calibration_prompts",
                     "calibration_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"autotune {name}={getattr(self, name)!r} must be >= 1")
        if not 0 <= self.margin < 1:
            raise ValueError(f"autotune margin={self.margin!r} must be in [0, 1)")
        return self


@dataclass
class AcceptanceProfile:
    """What a mode achieves per cycle on some prompts.

    Speculative modes: ``runs`` = accepted drafts per cycle measured at block ``block_length``.
    Diffusion: ``diffusion`` = per candidate B, (decode tokens, denoise forwards, block writes).
    """

    mode: str
    block_length: int = 1
    runs: list[int] = field(default_factory=list)
    diffusion: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    source: str = "given"
    cycle_seconds: list[float] = field(default_factory=list)
    """Per calibration call at ``block_length``: wall time after the first token / cycles (diffusion: /
    forwards). Empty: unknown, no overhead is added."""
    ar_step_seconds: list[float] = field(default_factory=list)
    """The same for AR on the same prompts: seconds per step (empty: AR's rate is 1 / c(write, 1))."""

    def tokens_per_cycle(self, block: int) -> float:
        """Predicted tokens per cycle at ``block``: sum(r + 1) / sum(ceil((r + 1) / block)) (module docstring)."""
        if block > self.block_length and self.runs:
            raise ValueError(f"profile measured at block {self.block_length} cannot predict block {block}")
        if not self.runs:
            return 1.0
        return sum(r + 1 for r in self.runs) / sum(-(-(r + 1) // block) for r in self.runs)

    @classmethod
    def from_acceptance(cls, mode: str, block_length: int, acceptance_lengths: list[int],
                        source: str = "given") -> "AcceptanceProfile":
        return cls(mode, block_length, [max(0, min(a - 1, block_length - 1)) for a in acceptance_lengths],
                   source=source)


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


@dataclass
class _State:
    """What is cached on a model object."""

    stores: dict[str, CostStore] = field(default_factory=dict)  # per machine identity (threads change)
    profiles: dict[str, AcceptanceProfile] = field(default_factory=dict)
    choices: dict[str, BlockChoice] = field(default_factory=dict)


def _state(model) -> _State:
    state = getattr(model, _CACHE_ATTR, None)
    if state is None:
        state = _State()
        object.__setattr__(model, _CACHE_ATTR, state)  # a plain attribute, not a module or buffer
    return state


def clear_cache(model) -> None:
    """Forget the in-memory costs, profiles and choices (e.g. after loading another drafter). The
    persisted curve stays: the next decision reads it again."""
    if getattr(model, _CACHE_ATTR, None) is not None:
        object.__setattr__(model, _CACHE_ATTR, _State())


def forget_costs(model) -> None:
    """Forget the in-memory copy of the persisted curve, and the choices made from it (it was replaced)."""
    state = getattr(model, _CACHE_ATTR, None)
    if state is not None:
        state.stores.clear()
        state.choices.clear()


# ---------------------------------------------------------------- candidates
def candidates_for(model, mode: str, config: AutotuneConfig) -> list[int]:
    """The candidate blocks of ``mode`` that fit the model's context (and the quadratic cap)."""
    limit = max(1, model.config.max_position_embeddings - config.prefix_tokens - 1)
    pool = config.diffusion_candidates if mode == "diffusion" else config.candidates
    out = [b for b in sorted(set(pool)) if b <= limit]
    if mode == "quadratic-spec":
        out = [b for b in out if b * (b + 1) <= config.max_quadratic_tokens] or [1]
    return out or [1]


# ---------------------------------------------------------------- forward costs
def measure_forward_costs(model, needs: list[tuple[str, int]], config: AutotuneConfig | None = None
                          ) -> dict[tuple[str, int], float]:
    """Seconds of each (kind, k) forward on this machine, measured now (fastest of interleaved rounds,
    made monotone; see module docstring). Neither reads nor writes the persisted curve."""
    config = (config or AutotuneConfig()).validate()
    samples = curve.time_forwards(model, needs, prefix_tokens=config.prefix_tokens, repeats=config.repeats,
                                  time_budget=config.time_budget, seed=config.seed)
    return curve.monotone({key: min(v) for key, v in samples.items()})


def _store(model, config: AutotuneConfig) -> CostStore:
    """The cost store of ``model`` on this machine: in memory, else from disk (or empty)."""
    identity = curve.machine_identity(model)
    key = json.dumps(identity, sort_keys=True) + f" persist={config.persist}"
    stores = _state(model).stores
    if key not in stores:
        stores[key] = CostStore.load(model, persist=config.persist)
    return stores[key]


def _cost_table(model, needs: list[tuple[str, int]], config: AutotuneConfig) -> dict[tuple[str, int], float]:
    """Fastest seconds (monotone per kind) of every stored point at the config's prefix; the ``needs``
    the store lacks are measured first and persisted."""
    store = _store(model, config)
    prefix = config.prefix_tokens
    missing = [key for key in dict.fromkeys(needs) if store.get(*key, prefix) is None]
    if missing:
        store.record(curve.time_forwards(model, missing, prefix_tokens=prefix, repeats=config.repeats,
                                         time_budget=config.time_budget, seed=config.seed), prefix)
        store.measured_in_process = True
        store.save()
    return curve.monotone(store.minimum_costs(prefix))


def _needs(mode: str, blocks: list[int]) -> list[tuple[str, int]]:
    needs = {("write", 1)}
    for b in blocks:
        if mode == "quadratic-spec":
            needs.add(("quadratic", b))
        elif b > 1:
            needs |= {("write", b), ("peek", b)}
    return sorted(needs)


def forward_costs(model, mode: str, config: AutotuneConfig | None = None) -> CostFn:
    """The cost function of ``mode``'s candidates on this machine: the persisted curve, its missing
    points measured once (and persisted)."""
    config = (config or AutotuneConfig()).validate()
    table = _cost_table(model, _needs(mode, candidates_for(model, mode, config)), config)

    def cost(kind: str, k: int) -> float:
        if (kind, k) not in table:
            table.update(_cost_table(model, [(kind, k)], config))
        return table[(kind, k)]

    return cost


# ---------------------------------------------------------------- acceptance
def generic_prompts(model, config: AutotuneConfig) -> list[list[int]]:
    """A few prompts sampled from the model itself after BOS (seeded): text the model finds plausible."""
    cfg = model.config
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else 1
    gen = torch.Generator().manual_seed(config.seed)
    prompts = []
    for _ in range(config.calibration_prompts):
        out, _ = model.ar_generate([[bos]], max_new_tokens=16, temperature=1.0, generator=gen, eos_token_id=[])
        prompts.append(out[0].tolist())
    return prompts


def calibrate(model, mode: str, prompts: list[list[int]], *, config: AutotuneConfig | None = None,
              max_new_tokens: int | None = None, eos_token_id=None, threshold=None,
              source: str = "calibration prompts") -> AcceptanceProfile:
    """Measure ``mode``'s acceptance on ``prompts`` (one call per prompt) and cache it on the model.

    ``threshold``: diffusion only (None: the config's threshold).
    """
    config = (config or AutotuneConfig()).validate()
    _check_mode(mode)
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    n = max_new_tokens or config.calibration_tokens
    blocks = candidates_for(model, mode, config)

    def timed(m: str, prompt: list[int], **kw):
        start = time.perf_counter()
        _, _, st = model.decode_mode(m, [prompt], max_new_tokens=n, eos_token_id=eos_token_id, return_stats=True,
                                     **kw)
        return st, time.perf_counter() - start - (st.time_to_first_token or 0.0)  # decode wall time

    def ar_step(prompt: list[int]) -> None:  # interleaved with the mode's calls: noise hits both alike
        st, seconds = timed("ar", prompt)
        if st.acceptance_lengths:
            profile.ar_step_seconds.append(seconds / len(st.acceptance_lengths))

    if mode == "diffusion":
        profile = AcceptanceProfile(mode, max(blocks), source=source)
        extra = {} if threshold is None else {"threshold": threshold}
        for b in blocks:
            tokens = denoise = writes = 0
            for p in prompts:
                st, seconds = timed(mode, p, block_length=b, **extra)
                if b == max(blocks):
                    profile.cycle_seconds.append(seconds / max(1, st.nfe - st.prefill_forwards))
                    ar_step(p)
                blocks_run = len(st.acceptance_lengths)
                decode_nfe = st.nfe - st.prefill_forwards
                w = min(blocks_run, decode_nfe)  # a block emitted without a write ends the row
                # decode tokens only (the prefill's token is the same for every B)
                tokens += sum(st.acceptance_lengths)
                denoise, writes = denoise + decode_nfe - w, writes + w
            profile.diffusion[b] = (tokens, denoise, writes)
    elif mode in SPECULATIVE_MODES:
        b_cal = max(blocks)
        profile = AcceptanceProfile(mode, b_cal, source=source)
        for p in prompts:
            st, seconds = timed(mode, p, block_length=b_cal)
            profile.runs += [max(0, min(a - 1, b_cal - 1)) for a in st.acceptance_lengths]
            if st.acceptance_lengths:
                profile.cycle_seconds.append(seconds / len(st.acceptance_lengths))
            ar_step(p)
    else:
        profile = AcceptanceProfile(mode, 1, source=source)
        for p in prompts:
            ar_step(p)
    state = _state(model)
    state.profiles[mode] = profile
    state.choices.pop(mode, None)
    return profile


# ---------------------------------------------------------------- decision
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
    _check_speculative(mode, block_length)
    return cycle_forward_seconds(mode, cost, block_length) / cost("write", 1)


def _check_speculative(mode: str, block_length: int) -> None:
    if mode not in SPECULATIVE_MODES:
        raise ValueError(f"mode={mode!r}: break-even acceptance is defined for {' and '.join(SPECULATIVE_MODES)}")
    if block_length < 2:
        raise ValueError(f"block_length={block_length} must be >= 2 for speculation to draft anything")


def measured_break_even(model, mode: str, block_length: int, config: AutotuneConfig | None = None) -> float:
    """:func:`break_even_acceptance` with this machine's forward costs (the persisted curve; points it
    lacks are measured, about a second)."""
    _check_speculative(mode, block_length)
    table = _cost_table(model, _needs(mode, [block_length]), (config or AutotuneConfig()).validate())
    return break_even_acceptance(mode, lambda kind, k: table[(kind, k)], block_length)


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
    _check_mode(mode)
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


def auto_block_length(model, mode: str, *, cost: CostFn | None = None, profile: AcceptanceProfile | None = None,
                      config: AutotuneConfig | None = None) -> int:
    """The block length of ``mode`` that maximises predicted tokens/s on this machine (see module docstring).

    The engine calls this for ``block_length="auto"``. The decision is cached on the model per mode
    unless ``cost`` or ``profile`` is given.
    """
    return auto_block_choice(model, mode, cost=cost, profile=profile, config=config).block_length


def auto_block_choice(model, mode: str, *, cost: CostFn | None = None, profile: AcceptanceProfile | None = None,
                      config: AutotuneConfig | None = None) -> BlockChoice:
    """Like :func:`auto_block_length`, returning the whole :class:`BlockChoice`."""
    _check_mode(mode)
    config = (config or AutotuneConfig()).validate()
    state = _state(model)
    injected = cost is not None or profile is not None
    if not injected and mode in state.choices:
        return state.choices[mode]
    if mode == "ar":
        choice = BlockChoice(mode, 1, [{"block_length": 1, "tokens_per_cycle": 1.0, "seconds_per_cycle": None,
                                        "tokens_per_s": None, "speedup_vs_ar": 1.0}], 0.0, "ar has no block",
                             fastest_block_length=1, cost_source="none")
    else:
        if profile is None:
            profile = state.profiles.get(mode)
        if profile is None:
            profile = calibrate(model, mode, generic_prompts(model, config), config=config,
                                source="generic prompts sampled from the model")
        candidates = candidates_for(model, mode, config)
        timing, cost_source = None, "given"
        if cost is None:
            cost = forward_costs(model, mode, config)
            store = _store(model, config)
            cost_source = _cost_source(store)
            if not injected:  # a given profile's timing is the caller's: neither persisted nor replaced
                timing = _stored_timing(store, mode, profile, cost)
        choice = choose_block_length(mode, profile, cost, candidates, timing=timing, margin=config.margin)
        choice.cost_source = cost_source
    if not injected:
        state.choices[mode] = choice
    return choice


def _cost_source(store: CostStore) -> str:
    where = str(store.path) if store.path is not None else "memory only"
    return f"measured in this process ({where})" if store.measured_in_process else f"persisted ({where})"


def _stored_timing(store: CostStore, mode: str, profile: AcceptanceProfile, cost: CostFn) -> CycleTiming:
    """The persisted timing of ``mode`` at the profile's calibration block; derived from the profile
    and persisted the first time (when the calibration measured any)."""
    key = f"{mode}@{profile.block_length}"
    if key in store.timings:
        return CycleTiming(**store.timings[key], source=f"persisted ({store.path})")
    timing = cycle_timing(mode, profile, cost)
    if profile.cycle_seconds or profile.ar_step_seconds:
        store.timings[key] = {"overhead_s": timing.overhead_s, "ar_step_s": timing.ar_step_s}
        store.save()
    return timing


def last_choice(model, mode: str) -> BlockChoice | None:
    """The cached ``auto`` decision of ``mode`` for this model, if any."""
    state = getattr(model, _CACHE_ATTR, None)
    return None if state is None else state.choices.get(mode)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
