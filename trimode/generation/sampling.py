"""Turning logits into tokens: greedy, tempered sampling, and exact speculative acceptance.

All randomness goes through an explicit ``torch.Generator`` (never the global RNG).
``temperature == 0`` means greedy (argmax); then every function here is
deterministic and speculative acceptance reduces to "draft == AR argmax".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> "SamplingParams":
        t, k, p = self.temperature, self.top_k, self.top_p
        if not isinstance(t, (int, float)) or t < 0 or t != t:
            raise ValueError(f"temperature={t!r} must be a number >= 0 (0 = greedy)")
        if k is not None and (not isinstance(k, int) or k < 0):
            raise ValueError(f"top_k={k!r} must be a non-negative integer (0 or None = off)")
        if p is not None and (not isinstance(p, (int, float)) or not 0 < p <= 1):
            raise ValueError(f"top_p={p!r} must be in (0, 1] (None = off)")
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


def speculative_accept(
    drafts: list[int], draft_probs: torch.Tensor | None, target_probs: torch.Tensor,
    params: SamplingParams, generator: torch.Generator | None,
) -> tuple[int, int]:
    """Exact speculative acceptance for one row.

    drafts: d_1..d_m proposed tokens; draft_probs: (m, V) the distributions q_i they were
    sampled from (None in greedy mode); target_probs: (m + 1, V) the AR distributions
    p_0..p_m, where p_{i-1} is the target for d_i and p_m gives the bonus token.

    Returns (k, token): k drafts accepted, then ``token`` is emitted after them: the AR
    argmax in greedy mode; otherwise a sample from normalize(max(0, p - q)) on rejection
    or from p_m after full acceptance. Accepting d with probability min(1, p(d)/q(d))
    makes the emitted sequence distributed exactly as AR sampling from p.
    """
    m = len(drafts)
    if params.greedy:
        argmax = target_probs.argmax(-1).tolist()
        k = 0
        while k < m and drafts[k] == argmax[k]:
            k += 1
        return k, argmax[k]
    if m == 0:
        return 0, int(sample(target_probs[0], generator, False))
    assert draft_probs is not None, "sampling mode needs the draft distributions"
    d = torch.as_tensor(drafts, dtype=torch.long, device=target_probs.device)
    p = target_probs[:m].gather(-1, d[:, None]).squeeze(-1)
    q = draft_probs.gather(-1, d[:, None]).squeeze(-1)
    u = torch.rand(m, generator=generator, device=target_probs.device)
    ok = (u * q <= p) & (q > 0)  # u < p/q without dividing by zero
    k = int(ok.long().cumprod(0).sum())
    if k == m:
        return k, int(sample(target_probs[m], generator, False))
    residual = (target_probs[k] - draft_probs[k]).clamp_min(0)
    total = residual.sum()
    if total <= 0:  # p == q exactly: the rejection had probability 0; fall back to p
        residual, total = target_probs[k], target_probs[k].sum()
    return k, int(sample(residual / total, generator, False))
