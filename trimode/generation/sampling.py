"""Turning logits into tokens: greedy, tempered sampling, and exact speculative acceptance.

All randomness goes through an explicit ``torch.Generator`` (never the global RNG).
``temperature == 0`` means greedy (argmax); then every function here is
deterministic and speculative acceptance reduces to "draft == AR argmax".
Speculative acceptance works on the whole batch at once, on the device
(:func:`speculative_accept_batch`), so a decoding cycle needs no per-row host sync.
"""

from __future__ import annotations

from typing import Optional

import torch
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass

from ..typed_config import one_line_errors


@one_line_errors()
@dataclass(frozen=True, config=ConfigDict(strict=True, extra="forbid"))
class SamplingParams:
    """How tokens are drawn from the logits; checked when built (strict: ``True`` is not a number)."""

    temperature: float = Field(0.0, ge=0, description="softmax temperature; 0 = greedy (argmax)")
    top_k: Optional[int] = Field(None, ge=0, description="keep only the k most likely tokens (0 or None = off)")
    top_p: Optional[float] = Field(None, gt=0, le=1, description="keep the most likely tokens whose probability "
                                                                 "mass reaches top_p (None = off)")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> "SamplingParams":
        """``self``: the values were checked when it was built (it is frozen)."""
        return self


def probabilities(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 probabilities after temperature, top-k, top-p.

    In greedy mode this is the plain softmax: tokens are then the argmax (see
    :func:`sample`), and the probabilities serve as confidences (block diffusion).
    """
    logits = logits.float()
    if params.greedy:
        return logits.softmax(-1)
    # Shift by the max first: a tiny temperature then sends other logits to -inf, never to NaN.
    # (a temperature below the dtype's smallest normal would round to 0 and give 0/0).
    temperature = max(params.temperature, torch.finfo(logits.dtype).tiny)
    logits = (logits - logits.amax(-1, keepdim=True)) / temperature
    if params.top_k:
        kth = torch.topk(logits, min(params.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p is not None and params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p (the top token always stays).
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= params.top_p
        drop_sorted[..., 0] = False  # even a top_p that rounds to 0 keeps the most likely token
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def sample(probs: torch.Tensor, generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
    """(..., V) probabilities -> (...) token ids."""
    if greedy:
        return probs.argmax(-1)
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def choose(logits: torch.Tensor, params: SamplingParams, generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., V) logits -> tokens (...) and their probabilities (..., V)."""
    probs = probabilities(logits, params)
    return sample(probs, generator, params.greedy), probs


def speculative_accept_batch(
    drafts: torch.Tensor, draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
    params: SamplingParams, generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact speculative acceptance for a whole batch, on the device (no host sync).

    drafts: (B, m) proposed tokens d_1..d_m; draft_probs: (B, m, V) the distributions q_i
    they were sampled from (None in greedy mode, or when m == 0); target_probs: (B, m + 1, V)
    the AR distributions p_0..p_m, where p_{i-1} is the target for d_i and p_m gives the
    bonus token.

    Returns (accepted, token), both (B,) long on the device: each row accepts its first
    ``accepted`` drafts, then emits ``token``: the AR argmax in greedy mode; otherwise a
    sample from normalize(max(0, p_k - q_k)) at the rejection index k, or from p_m after
    full acceptance. Accepting d with probability min(1, p(d)/q(d)) makes the emitted
    sequence distributed exactly as AR sampling from p.

    Random draws, in this fixed order (so a seeded run is reproducible): one uniform per
    draft, (B, m), then one multinomial draw per row.
    """
    m = drafts.shape[1]
    if params.greedy:
        argmax = target_probs.argmax(-1)  # (B, m + 1)
        accepted = _prefix_length(drafts == argmax[:, :m])
        return accepted, argmax.gather(1, accepted[:, None]).squeeze(1)
    if m == 0:
        return (torch.zeros(drafts.shape[0], dtype=torch.long, device=drafts.device),
                sample(target_probs[:, 0], generator, False))
    assert draft_probs is not None, "sampling mode needs the draft distributions"
    p = target_probs[:, :m].gather(-1, drafts[..., None]).squeeze(-1)  # (B, m): p_{i-1}(d_i)
    q = draft_probs.gather(-1, drafts[..., None]).squeeze(-1)  # (B, m): q_i(d_i)
    u = torch.rand(p.shape, generator=generator, device=p.device)
    accepted = _prefix_length((u * q <= p) & (q > 0))  # u < p/q without dividing by zero
    return accepted, sample(_emission_weights(draft_probs, target_probs, accepted), generator, False)


def _prefix_length(ok: torch.Tensor) -> torch.Tensor:
    """(B, m) bool -> (B,) long: how many leading entries of each row are True."""
    return ok.long().cumprod(-1).sum(-1)


def _emission_weights(draft_probs: torch.Tensor, target_probs: torch.Tensor, accepted: torch.Tensor
                      ) -> torch.Tensor:
    """(B, V) unnormalised distribution of the token emitted after ``accepted`` (B,) drafts.

    Rejected at k: max(0, p_k - q_k); where that is all zero (p_k == q_k exactly, so the
    rejection had probability 0) it falls back to p_k. All accepted (k == m): p_m.
    """
    m = draft_probs.shape[1]
    rows = torch.arange(accepted.shape[0], device=accepted.device)
    p_k = target_probs[rows, accepted]  # (B, V)
    q_k = draft_probs[rows, accepted.clamp(max=m - 1)]  # (B, V); unused where accepted == m
    residual = (p_k - q_k).clamp_min(0)
    use_p = (accepted == m) | (residual.sum(-1) <= 0)
    weights = torch.where(use_p[:, None], p_k, residual)
    return weights / weights.sum(-1, keepdim=True)


def speculative_accept(
    drafts: list[int], draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
    params: SamplingParams, generator: torch.Generator | None,
) -> tuple[int, int]:
    """:func:`speculative_accept_batch` for one row: drafts (m,) as a list, draft_probs (m, V),
    target_probs (m + 1, V). Returns (k, token) as Python ints (a host sync: not for hot loops)."""
    d = torch.as_tensor(drafts, dtype=torch.long, device=target_probs.device).reshape(1, -1)
    accepted, token = speculative_accept_batch(d, None if draft_probs is None else draft_probs[None],
                                               target_probs[None], params, generator)
    k, tok = torch.stack([accepted, token], 1)[0].tolist()
    return k, tok
