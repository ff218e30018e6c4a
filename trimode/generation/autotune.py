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
layout). They come from the forward-cost curve of :mod:`.forward_timing` (one
timing primitive for both): rounds interleaved over all (kind, k) so machine
noise hits every k alike, and the *fastest* round is kept: on a shared machine
noise only ever adds time, so the minimum is the steadiest estimate of a
forward's own cost. Per kind, costs are then made non-decreasing in k (a wider
forward never costs less; a dip is leftover noise).

The curve is persisted: one JSON file per model identity and machine under
trimode's cache directory (:class:`.forward_timing.CostStore`). ``auto`` reads
the points it needs from it and measures (and adds) only the missing ones, so
every process on the same machine and model decides from the same curve
instead of a fresh, noisy one; ``trimode bench --forward-costs`` replaces it.
In memory the store is also cached on the model object (attribute
``_trimode_autotune``); ``AutotuneConfig(persist=False)`` keeps it in memory only.

Each timed call is a forward plus the softmax/argmax the decoders apply to
its logits (for the quadratic layout, ``B + B*B`` rows of logits).

**Seconds per cycle**:

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
from dataclasses import dataclass, field, replace
from typing import Annotated

from pydantic import ConfigDict, Field, Strict
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ..typed_config import one_line_errors
from . import forward_timing as timing
from .block_choice import (
    DEFAULT_MARGIN,
    BlockChoice,
    CostFn,
    CycleTiming,
    break_even_acceptance,
    check_mode,
    check_speculative,
    choose_block_length,
    cycle_timing,
)
from .calibration import AcceptanceProfile, measure_profile, sampled_prompts
from .forward_timing import DEFAULT_PREFIX_TOKENS, CostStore

_CACHE_ATTR = "_trimode_autotune"


_BlockLengths = tuple[Annotated[int, Strict(), Field(ge=1)], ...]  # a list is taken too; its items must be integers


@one_line_errors("autotune ")
@pydantic_dataclass(config=ConfigDict(strict=True, extra="forbid"))
class AutotuneConfig:
    """How ``auto`` measures; checked when built, and by :meth:`validate` after fields were assigned.

    The forward costs are measured once per model and machine (then read from disk), within
    ``time_budget``; the calibration runs once per process and mode (diffusion, one run per
    candidate, the longest).
    """

    candidates: _BlockLengths = Field((1, 2, 3, 4, 6, 8, 12, 16, 24, 32), min_length=1, strict=False, description=(
        "block lengths considered for the speculative modes (capped by the context length)"))
    diffusion_candidates: _BlockLengths = Field((1, 2, 4, 8, 16, 32), min_length=1, strict=False, description=(
        "block lengths considered for diffusion (each one is a calibration run, so fewer)"))
    prefix_tokens: int = Field(DEFAULT_PREFIX_TOKENS, ge=1, description=(
        "cached prefix the cost forwards attend to (prompt-sized; the curve's default, so that auto reads the "
        "points `trimode bench --forward-costs` measured)"))
    repeats: int = Field(7, ge=1, description="timed rounds per (kind, k); the fastest is kept")
    time_budget: float = Field(1.5, description="seconds after which cost rounds stop (at least 3 rounds always run)")
    max_quadratic_tokens: int = Field(72, ge=1, description="cap on the quadratic forward width B*(B+1)")
    calibration_prompts: int = Field(2, ge=1, description="generic prompts when no calibration was given")
    calibration_tokens: int = Field(32, ge=1, description="new tokens per calibration run")
    seed: int = Field(0, description="seed of the generic calibration prompts and the cost forwards' inputs")
    margin: float = Field(DEFAULT_MARGIN, ge=0, lt=1, description=(
        "relative tokens/s below the best within which the smallest block is chosen (module docstring)"))
    persist: bool = Field(True, description=(
        "read and write the forward costs and calibration timings on disk (forward_timing.CostStore)"))

    def validate(self) -> "AutotuneConfig":
        """Check the fields again (assignment does not); returns ``self``."""
        replace(self)
        return self


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
    made monotone; see module docstring). Neither reads nor writes the persisted timing."""
    config = (config or AutotuneConfig()).validate()
    samples = timing.time_forwards(model, needs, prefix_tokens=config.prefix_tokens, repeats=config.repeats,
                                  time_budget=config.time_budget, seed=config.seed)
    return timing.monotone({key: min(v) for key, v in samples.items()})


def _store(model, config: AutotuneConfig) -> CostStore:
    """The cost store of ``model`` on this machine: in memory, else from disk (or empty)."""
    identity = timing.machine_identity(model)
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
        store.record(timing.time_forwards(model, missing, prefix_tokens=prefix, repeats=config.repeats,
                                         time_budget=config.time_budget, seed=config.seed), prefix)
        store.measured_in_process = True
        store.save()
    return timing.monotone(store.minimum_costs(prefix))


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
    return sampled_prompts(model, config.calibration_prompts, config.seed)


def calibrate(model, mode: str, prompts: list[list[int]], *, config: AutotuneConfig | None = None,
              max_new_tokens: int | None = None, eos_token_id=None, threshold=None,
              source: str = "calibration prompts") -> AcceptanceProfile:
    """Measure ``mode``'s acceptance on ``prompts`` (one call per prompt) and cache it on the model.

    ``threshold``: diffusion only (None: the config's threshold).
    """
    config = (config or AutotuneConfig()).validate()
    check_mode(mode)
    profile = measure_profile(model, mode, prompts, candidates_for(model, mode, config),
                              max_new_tokens or config.calibration_tokens, eos_token_id=eos_token_id,
                              threshold=threshold, source=source)
    state = _state(model)
    state.profiles[mode] = profile
    state.choices.pop(mode, None)
    return profile


# ---------------------------------------------------------------- decision
def measured_break_even(model, mode: str, block_length: int, config: AutotuneConfig | None = None) -> float:
    """:func:`break_even_acceptance` with this machine's forward costs (the persisted curve; points it
    lacks are measured, about a second)."""
    check_speculative(mode, block_length)
    table = _cost_table(model, _needs(mode, [block_length]), (config or AutotuneConfig()).validate())
    return break_even_acceptance(mode, lambda kind, k: table[(kind, k)], block_length)


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
    check_mode(mode)
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
