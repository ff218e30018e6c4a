"""What a decoding mode achieves per cycle on some prompts, measured: the acceptance side of
``block_length="auto"`` (:mod:`.autotune` holds the cost side and the decision).

:func:`measure_profile` runs the mode once per prompt (diffusion: once per candidate block)
and records, per cycle, the accepted drafts and the wall time after the first token, with
AR runs on the same prompts interleaved so that machine noise hits both alike.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .names import SPECULATIVE_MODES


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


def sampled_prompts(model, n: int, seed: int) -> list[list[int]]:
    """``n`` prompts sampled from the model itself after BOS (seeded): text the model finds plausible."""
    cfg = model.config
    bos = cfg.bos_token_id if cfg.bos_token_id is not None else 1
    # On the model's device: a decoder refuses a generator on another device.
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    prompts = []
    for _ in range(n):
        out, _ = model.ar_generate([[bos]], max_new_tokens=16, temperature=1.0, generator=gen, eos_token_id=[])
        prompts.append(out[0].tolist())
    return prompts


class _Timer:
    """Timed single-prompt calls of one model; AR steps recorded into ``profile``."""

    def __init__(self, model, max_new_tokens: int, eos_token_id, profile: AcceptanceProfile):
        self.model, self.n, self.eos, self.profile = model, max_new_tokens, eos_token_id, profile

    def __call__(self, mode: str, prompt: list[int], **kw):
        """(stats, decode wall time: after the first token) of one call."""
        start = time.perf_counter()
        _, _, st = self.model.decode_mode(mode, [prompt], max_new_tokens=self.n, eos_token_id=self.eos,
                                          return_stats=True, **kw)
        return st, time.perf_counter() - start - (st.time_to_first_token or 0.0)

    def ar_step(self, prompt: list[int]) -> None:
        st, seconds = self("ar", prompt)
        if st.acceptance_lengths:
            self.profile.ar_step_seconds.append(seconds / len(st.acceptance_lengths))


def measure_profile(model, mode: str, prompts: list[list[int]], blocks: list[int], max_new_tokens: int, *,
                    eos_token_id=None, threshold=None, source: str = "calibration prompts") -> AcceptanceProfile:
    """``mode``'s :class:`AcceptanceProfile` on ``prompts``: speculative modes at the largest of
    ``blocks``, diffusion at each of them; AR only its step time."""
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    if mode == "diffusion":
        profile = AcceptanceProfile(mode, max(blocks), source=source)
        _measure_diffusion(_Timer(model, max_new_tokens, eos_token_id, profile), prompts, blocks, threshold)
    elif mode in SPECULATIVE_MODES:
        profile = AcceptanceProfile(mode, max(blocks), source=source)
        timer = _Timer(model, max_new_tokens, eos_token_id, profile)
        for p in prompts:
            st, seconds = timer(mode, p, block_length=profile.block_length)
            profile.runs += [max(0, min(a - 1, profile.block_length - 1)) for a in st.acceptance_lengths]
            if st.acceptance_lengths:
                profile.cycle_seconds.append(seconds / len(st.acceptance_lengths))
            timer.ar_step(p)  # interleaved with the mode's calls: noise hits both alike
    else:
        profile = AcceptanceProfile(mode, 1, source=source)
        timer = _Timer(model, max_new_tokens, eos_token_id, profile)
        for p in prompts:
            timer.ar_step(p)
    return profile


def _measure_diffusion(timer: _Timer, prompts: list[list[int]], blocks: list[int], threshold) -> None:
    """Per block: decode tokens, denoising forwards and block writes; wall time at the largest block."""
    profile, extra = timer.profile, ({} if threshold is None else {"threshold": threshold})
    for b in blocks:
        tokens = denoise = writes = 0
        for p in prompts:
            st, seconds = timer("diffusion", p, block_length=b, **extra)
            if b == profile.block_length:
                profile.cycle_seconds.append(seconds / max(1, st.nfe - st.prefill_forwards))
                timer.ar_step(p)
            decode_nfe = st.nfe - st.prefill_forwards
            w = min(len(st.acceptance_lengths), decode_nfe)  # a block emitted without a write ends the row
            tokens += sum(st.acceptance_lengths)  # decode tokens only (the prefill's is the same for every B)
            denoise, writes = denoise + decode_nfe - w, writes + w
        profile.diffusion[b] = (tokens, denoise, writes)
