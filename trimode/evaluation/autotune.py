"""Hardware-aware block length: ``block_length="auto"`` picks the B that maximises tokens/s here.

On a GPU a forward of 32 tokens costs about what a forward of 1 does, so the
largest block wins. On a CPU it does not (see CPU-FACTS: k = 8 costs ~2.7x
k = 1), so the best block depends on the machine *and* on how many drafts the
model gets accepted. This module measures both and combines them:

    tokens/s (B) = tokens per cycle (B) / seconds per cycle (B)

**Forward costs.** ``c(kind, k)``: seconds of one forward of ``k`` new tokens
after a cached prefix of ``prefix_tokens``, for the kinds the decoders run:
``write`` (causal, appends: verification, AR), ``peek`` (bidirectional block,
drafter on: drafting, denoising) and ``quadratic`` (the fused ``B + B*B``
layout). Rounds are interleaved over all (kind, k) so machine noise hits every
k alike, and the *fastest* round is kept: on a shared machine noise only ever
adds time, so the minimum is the steadiest estimate of a forward's own cost.
Per kind, costs are then made non-decreasing in k (a wider forward never costs
less; a dip is leftover noise). Measured once per (device, dtype, threads)
and cached on the model object (attribute ``_trimode_autotune``).

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
the measured cost of their forwards and their predicted acceptance.

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

**Profile source.** :func:`calibrate` (the bench calls it with its own
prompts) or, when ``auto`` is asked for before any calibration, a short run on
generic prompts: a few tokens sampled from the model itself after BOS
(seeded). Profiles are cached per mode and not refreshed from later calls, so
``"auto"`` gives the same B on every call of a process.

AR returns 1 (it has no block). Everything is injectable for tests:
``cost`` (a function ``(kind, k) -> seconds``) and ``profile``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from ..cache import KVCache
from ..generation.modes import MODE_NAMES as MODES, SPECULATIVE_MODES
from ..masks import block_pattern, quadratic_pattern

CostFn = Callable[[str, int], float]
_CACHE_ATTR = "_trimode_autotune"


@dataclass
class AutotuneConfig:
    """How ``auto`` measures.

    Defaults: the forward costs take ~1-2 s on a few-million-parameter model, the calibration
    runs a few more seconds (diffusion, one run per candidate, the most); both once per process.
    """

    candidates: tuple[int, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)
    """Block lengths considered for the speculative modes (capped by the context length)."""
    diffusion_candidates: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    """Block lengths considered for diffusion (each one is a calibration run, so fewer)."""
    prefix_tokens: int = 64
    """Cached prefix the cost forwards attend to (prompt-sized)."""
    repeats: int = 7
    """Timed rounds per (kind, k); the median is kept."""
    time_budget: float = 1.5
    """Seconds after which cost rounds stop (at least 3 rounds always run)."""
    max_quadratic_tokens: int = 72
    """Cap on the quadratic forward width B*(B+1)."""
    calibration_prompts: int = 2
    """Generic prompts when no calibration was given."""
    calibration_tokens: int = 32
    """New tokens per calibration run."""
    seed: int = 0

    def validate(self) -> "AutotuneConfig":
        for name in ("candidates", "diffusion_candidates"):
            values = getattr(self, name)
            if not values or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in values):
                raise ValueError(f"autotune {name}={values!r} must be positive integers")
        for name in ("prefix_tokens", "repeats", "max_quadratic_tokens", "calibration_prompts",
                     "calibration_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"autotune {name}={getattr(self, name)!r} must be >= 1")
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
class BlockChoice:
    """The decision and everything behind it (reported by ``trimode bench``)."""

    mode: str
    block_length: int
    rows: list[dict]  # per candidate: block_length, tokens_per_cycle, seconds_per_cycle, tokens_per_s, speedup_vs_ar
    ar_tokens_per_s: float
    profile_source: str

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

    costs: dict[tuple, dict[tuple[str, int], float]] = field(default_factory=dict)
    profiles: dict[str, AcceptanceProfile] = field(default_factory=dict)
    choices: dict[str, BlockChoice] = field(default_factory=dict)


def _state(model) -> _State:
    state = getattr(model, _CACHE_ATTR, None)
    if state is None:
        state = _State()
        object.__setattr__(model, _CACHE_ATTR, state)  # a plain attribute, not a module or buffer
    return state


def clear_cache(model) -> None:
    """Forget measured costs, profiles and choices (e.g. after loading another drafter)."""
    if getattr(model, _CACHE_ATTR, None) is not None:
        object.__setattr__(model, _CACHE_ATTR, _State())


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
def _cost_inputs(model, kind: str, k: int, prefix: int, device):
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
    raise ValueError(f"forward kind {kind!r} is not one of write, peek, quadratic")


def measure_forward_costs(model, needs: list[tuple[str, int]], config: AutotuneConfig | None = None
                          ) -> dict[tuple[str, int], float]:
    """Seconds of each (kind, k) forward on this machine (fastest of interleaved rounds; see module docstring)."""
    config = (config or AutotuneConfig()).validate()
    param = next(model.parameters())
    prefix = config.prefix_tokens
    widest = max(k + k * k if kind == "quadratic" else k for kind, k in needs)
    cache = KVCache.for_model(model, 1, prefix + widest + 1)
    gen = torch.Generator().manual_seed(config.seed)
    inputs = {key: _cost_inputs(model, *key, prefix, param.device) for key in needs}
    samples: dict[tuple[str, int], list[float]] = {key: [] for key in needs}
    with torch.no_grad():
        cfg = model.config
        model(torch.randint(min(7, cfg.vocab_size - 1), cfg.vocab_size, (1, prefix), generator=gen).to(param.device),
              past_key_values=cache)
        started = time.perf_counter()
        for round_ in range(config.repeats + 1):  # round 0 warms every shape up, untimed
            for key in needs:
                tokens, kwargs = inputs[key]
                t0 = time.perf_counter()
                logits = model(tokens, past_key_values=cache, **kwargs).logits
                logits.float().softmax(-1).argmax(-1)  # what the decoders do with them (greedy)
                elapsed = time.perf_counter() - t0
                cache.crop(prefix)
                if round_:
                    samples[key].append(elapsed)
            if round_ >= 3 and time.perf_counter() - started > config.time_budget:
                break
    best = {key: min(v) for key, v in samples.items()}
    for kind in {kind for kind, _ in best}:
        running = 0.0
        for k in sorted(k for kd, k in best if kd == kind):
            running = best[(kind, k)] = max(best[(kind, k)], running)
    return best


def _needs(mode: str, blocks: list[int]) -> list[tuple[str, int]]:
    needs = {("write", 1)}
    for b in blocks:
        if mode == "quadratic-spec":
            needs.add(("quadratic", b))
        elif b > 1:
            needs |= {("write", b), ("peek", b)}
    return sorted(needs)


def forward_costs(model, mode: str, config: AutotuneConfig | None = None) -> CostFn:
    """The cost function of ``mode``'s candidates on this machine, measured once and cached on the model."""
    config = (config or AutotuneConfig()).validate()
    param = next(model.parameters())
    key = (str(param.device), str(param.dtype), torch.get_num_threads(), config.prefix_tokens)
    table = _state(model).costs.setdefault(key, {})
    missing = [n for n in _needs(mode, candidates_for(model, mode, config)) if n not in table]
    if missing:
        table.update(measure_forward_costs(model, missing, config))

    def cost(kind: str, k: int) -> float:
        if (kind, k) not in table:
            table.update(measure_forward_costs(model, [(kind, k)], config))
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
    """:func:`break_even_acceptance` with forward costs measured on this machine (about a second)."""
    _check_speculative(mode, block_length)
    table = measure_forward_costs(model, _needs(mode, [block_length]), config)
    return break_even_acceptance(mode, lambda kind, k: table[(kind, k)], block_length)


def choose_block_length(mode: str, profile: AcceptanceProfile, cost: CostFn, candidates: list[int]) -> BlockChoice:
    """Pure decision: predicted tokens/s per candidate, argmax (ties: the smaller block)."""
    _check_mode(mode)

    def diffusion_forwards(b: int) -> tuple[float, int]:  # (seconds of the forwards, their number)
        _, denoise, writes = profile.diffusion[b]
        return denoise * cost("peek", b) + writes * cost("write", b), denoise + writes

    # Overheads: calibration wall time the forward costs do not explain (see module docstring). The
    # fastest call is kept, as for the costs: noise only adds time, and per-cycle time barely
    # depends on the prompt.
    ar_step = cost("write", 1)
    if profile.ar_step_seconds:
        ar_step = max(ar_step, min(profile.ar_step_seconds))
    overhead = 0.0  # per cycle (speculative) or per forward (diffusion)
    if profile.cycle_seconds:
        if mode == "diffusion" and profile.block_length in profile.diffusion:
            seconds, count = diffusion_forwards(profile.block_length)
            overhead = max(0.0, min(profile.cycle_seconds) - seconds / max(1, count))
        elif mode != "diffusion":
            overhead = max(0.0, min(profile.cycle_seconds) - cycle_forward_seconds(mode, cost, profile.block_length))
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
            seconds, count = diffusion_forwards(b)
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
    best = max(rows, key=lambda r: (r["tokens_per_s"], -r["block_length"]))
    return BlockChoice(mode, best["block_length"], rows, ar_rate, profile.source)


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
                                        "tokens_per_s": None, "speedup_vs_ar": 1.0}], 0.0, "ar has no block")
    else:
        if profile is None:
            profile = state.profiles.get(mode)
        if profile is None:
            profile = calibrate(model, mode, generic_prompts(model, config), config=config,
                                source="generic prompts sampled from the model")
        candidates = candidates_for(model, mode, config)
        choice = choose_block_length(mode, profile, cost or forward_costs(model, mode, config), candidates)
    if not injected:
        state.choices[mode] = choice
    return choice


def last_choice(model, mode: str) -> BlockChoice | None:
    """The cached ``auto`` decision of ``mode`` for this model, if any."""
    state = getattr(model, _CACHE_ATTR, None)
    return None if state is None else state.choices.get(mode)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
