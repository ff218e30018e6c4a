"""Attention masks: small composable functions, one module for every mode.

A *mask function* takes query and key indices (broadcastable integer tensors,
e.g. ``(Q, 1)`` and ``(1, K)``) and returns a bool tensor, ``True`` = may
attend. They combine with :func:`and_masks` / :func:`or_masks` and are
materialised with :func:`materialize`.

Two levels are used:

1. A *pattern* ``(Q, Q)`` says how the ``Q`` new tokens of a forward see each
   other: :func:`causal_pattern` (prefill, AR step, verification),
   :func:`block_pattern` (diffusion denoising and drafting: bidirectional),
   :func:`quadratic_pattern` (fused draft + verify).
2. :func:`with_prefix` places a pattern after each row's committed cache prefix
   (every new token sees the whole prefix) and hides the slots of rows that are
   shorter than the longest row: ``(batch, 1, Q, max_len + Q)``.

:func:`training_mask` builds the ``2L x 2L`` mask of the joint loss (spec
section 3) from the same primitives.
"""

from __future__ import annotations

from typing import Callable

import torch

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# ---------------------------------------------------------------- primitives
def causal(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Key at or before the query."""
    return k <= q


def same_block(block_size: int) -> MaskFn:
    """Query and key in the same block of ``block_size`` positions."""
    return lambda q, k: (q // block_size) == (k // block_size)


def earlier_block(block_size: int) -> MaskFn:
    """Key in a strictly earlier block than the query."""
    return lambda q, k: (k // block_size) < (q // block_size)


def everything(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(q + k, dtype=torch.bool)


def and_masks(*fns: MaskFn) -> MaskFn:
    def fn(q, k):
        out = fns[0](q, k)
        for f in fns[1:]:
            out = out & f(q, k)
        return out
    return fn


def or_masks(*fns: MaskFn) -> MaskFn:
    def fn(q, k):
        out = fns[0](q, k)
        for f in fns[1:]:
            out = out | f(q, k)
        return out
    return fn


def materialize(fn: MaskFn, n_q: int, n_k: int | None = None, device=None) -> torch.Tensor:
    """Evaluate a mask function on a ``(n_q, n_k)`` grid."""
    n_k = n_q if n_k is None else n_k
    q = torch.arange(n_q, device=device)[:, None]
    k = torch.arange(n_k, device=device)[None, :]
    return fn(q, k).expand(n_q, n_k)


# ------------------------------------------------------------------ patterns
def causal_pattern(n: int, device=None) -> torch.Tensor:
    """(n, n): new tokens see earlier new tokens (write forwards)."""
    return materialize(causal, n, device=device)


def block_pattern(n: int, device=None) -> torch.Tensor:
    """(n, n): one bidirectional block (diffusion denoising, linear drafting)."""
    return materialize(everything, n, device=device)


def quadratic_pattern(n_causal: int, anchors: list[int], group_size: int, device=None) -> torch.Tensor:
    """Fused draft + verify layout (quadratic self-speculation).

    New tokens are ordered ``[c_0 .. c_{n_causal-1}, group_0, group_1, ...]`` with
    ``len(anchors)`` groups of ``group_size`` mask tokens. The ``c`` tokens are
    causal among themselves (their logits are AR logits, their keys exact, so
    an accepted prefix of them can be committed as is). Group ``g`` sees
    ``c_0 .. c_{anchors[g]}`` and its own group, bidirectionally: it drafts the
    continuation *as if* ``c_0 .. c_{anchors[g]}`` were accepted.

    Returns (n_causal + len(anchors) * group_size,) squared.
    """
    n = n_causal + len(anchors) * group_size
    idx = torch.arange(n, device=device)
    is_mask = idx >= n_causal
    group = torch.where(is_mask, (idx - n_causal) // group_size, -1)
    anchor_t = torch.as_tensor(anchors, device=device, dtype=torch.long)
    # For a causal token its "anchor" is itself; for a mask token, its group's anchor.
    anchor = torch.where(is_mask, anchor_t[group.clamp(min=0)], idx)
    q_anchor, q_group, q_mask = anchor[:, None], group[:, None], is_mask[:, None]
    k_idx, k_group, k_mask = idx[None, :], group[None, :], is_mask[None, :]
    sees_causal = ~k_mask & (k_idx <= q_anchor)
    sees_own_group = q_mask & k_mask & (k_group == q_group)
    return sees_causal | sees_own_group


def quadratic_offsets(n: int, device=None) -> torch.Tensor:
    """Positions of quadratic_pattern(n, range(n), n)'s tokens relative to the first chain token.

    Chain token i sits at i; mask slot m of group g drafts the token after chain token g,
    at g + 1 + m. Returns (n + n*n,) longs.
    """
    idx = torch.arange(n, device=device)
    return torch.cat([idx, (idx[:, None] + 1 + idx[None, :]).reshape(-1)])


def with_prefix(pattern: torch.Tensor, past_lengths: torch.Tensor, max_past: int | None = None) -> torch.Tensor:
    """Full mask over the cache: every new token sees its row's prefix, then ``pattern``.

    pattern: (Q, Q) or (batch, Q, Q) bool; past_lengths: (batch,) committed tokens per row;
    max_past: ``max(past_lengths)`` when the caller knows it on the host (the cache's
    ``max_length``): reading it from a device tensor would be a host sync per forward.
    Returns (batch, 1, Q, max(past_lengths) + Q) bool, matching :meth:`KVCache.store`'s
    layout (row b's new tokens sit at slots past_lengths[b] ..).
    """
    batch = past_lengths.shape[0]
    n_q = pattern.shape[-1]
    kv_len = (int(past_lengths.max()) if max_past is None else max_past) + n_q
    slot = torch.arange(kv_len, device=pattern.device)[None, :]  # (1, K)
    rel = slot - past_lengths[:, None]  # (batch, K): slot relative to the row's first new token
    in_prefix = rel < 0
    in_new = (rel >= 0) & (rel < n_q)
    pat = pattern.expand(batch, n_q, n_q)
    gathered = torch.gather(pat, 2, rel.clamp(0, n_q - 1)[:, None, :].expand(batch, n_q, kv_len))
    full = in_prefix[:, None, :] | (in_new[:, None, :] & gathered)
    return full[:, None]


# ------------------------------------------------------------------ training
def training_mask(seq_len: int, block_size: int, device=None) -> torch.Tensor:
    """(2L, 2L) mask of the joint loss over ``concat(xt, x0)`` (the noisy copy, then the clean one).

    - xt query -> xt key: same block (bidirectional inside the block)
    - xt query -> x0 key: strictly earlier block (clean context)
    - x0 query -> x0 key: key <= query (the AR stream)
    - x0 query -> xt key: never
    Positions restart at 0 in each half, so blocks are aligned across halves.
    """
    L = seq_len

    def half(i):
        return i // L

    def local(fn: MaskFn) -> MaskFn:
        return lambda q, k: fn(q % L, k % L)

    def in_halves(qh: int, kh: int) -> MaskFn:
        return lambda q, k: (half(q) == qh) & (half(k) == kh)

    fn = or_masks(
        and_masks(in_halves(0, 0), local(same_block(block_size))),
        and_masks(in_halves(0, 1), local(earlier_block(block_size))),
        and_masks(in_halves(1, 1), local(causal)),
    )
    return materialize(fn, 2 * L, device=device)
