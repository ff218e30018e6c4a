"""The one KV cache every decoding mode uses.

Layout: per layer, preallocated keys and values of shape
``(batch, num_kv_heads, capacity, head_dim)``, batch first, and one vector
``lengths`` (batch,) of committed tokens per row. Slot ``j`` of row ``b`` holds
the token at position ``j``, so positions never need to be stored.

Every forward puts the keys/values of its ``q`` new tokens in the slots right
after each row's committed prefix, ``[lengths[b], lengths[b] + q)``, and
attends over ``[0, max(lengths) + q)`` under a mask. What differs is only the
bookkeeping afterwards:

- a *write* forward (prefill, AR step, verification) then calls
  :meth:`KVCache.advance` so the new tokens become part of the prefix;
- a *peek* forward (diffusion denoising, drafting) leaves ``lengths`` alone, so
  the next forward simply overwrites the scratch slots;
- rolling back is :meth:`KVCache.crop` (lengths only: nothing is copied).

A speculative mode can therefore run one forward as a peek and afterwards
commit only the verified prefix of it with ``advance(n)``: the keys of those
tokens are already in place. The quadratic decoder relies on that.

The cache never allocates during decoding; ``capacity`` must cover the
longest prompt, the generated tokens and the widest forward's scratch.
"""

from __future__ import annotations

import torch


class KVCache:
    """Preallocated, batch-first KV cache with per-row lengths.

    Args:
        num_layers, batch_size, num_kv_heads, head_dim: shapes of the model.
        capacity: slots per row (committed prefix + scratch of the widest forward).
        device, dtype: where the keys/values live.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 capacity: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        if capacity <= 0 or batch_size <= 0:
            raise ValueError(f"KVCache: capacity={capacity} and batch_size={batch_size} must be positive")
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.capacity = capacity
        self._uniform = True  # all rows share one length: writes are plain slices

    @classmethod
    def for_model(cls, model, batch_size: int, capacity: int) -> "KVCache":
        """A cache shaped for ``model`` (any module with a TrimodeConfig-like ``config``)."""
        cfg = model.config
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        return cls(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, cfg.head_dim,
                   capacity, device=device, dtype=dtype)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    # ------------------------------------------------------------------ writes
    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Place new keys/values after each row's prefix; return the attendable keys/values.

        k, v: (batch, num_kv_heads, q, head_dim).
        Returns keys/values (batch, num_kv_heads, max(lengths) + q, head_dim): the prefix,
        the new tokens, and (for rows shorter than the longest) slots the mask must hide.
        """
        q = k.shape[2]
        start = int(self.lengths.max()) if not self._uniform else int(self.lengths[0])
        if start + q > self.capacity:
            raise RuntimeError(
                f"KVCache overflow: {start} cached + {q} new tokens > capacity {self.capacity}")
        keys, values = self.keys[layer], self.values[layer]
        if self._uniform:
            keys[:, :, start:start + q] = k
            values[:, :, start:start + q] = v
        else:
            # Row b writes slots lengths[b] .. lengths[b]+q-1. Advanced indices (rows, slots)
            # separated by the head slice move to the front: target shape (batch, q, heads, dim).
            slots = self.lengths[:, None] + torch.arange(q, device=k.device)
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            keys[rows, :, slots] = k.transpose(1, 2)
            values[rows, :, slots] = v.transpose(1, 2)
        end = start + q
        return keys[:, :, :end], values[:, :, :end]

    # ------------------------------------------------------------ bookkeeping
    def advance(self, n: int | torch.Tensor) -> None:
        """Commit the first ``n`` (per row, or for all rows) tokens of the last forward."""
        self.lengths += n if isinstance(n, int) else n.to(self.lengths)
        self._refresh()

    def crop(self, lengths: int | torch.Tensor) -> None:
        """Roll back to ``lengths`` committed tokens (per row or for all rows). Nothing is copied."""
        new = torch.as_tensor(lengths, dtype=torch.long, device=self.lengths.device).expand_as(self.lengths)
        if bool((new > self.lengths).any()) or bool((new < 0).any()):
            raise ValueError(f"KVCache.crop: {new.tolist()} must be within [0, {self.lengths.tolist()}]")
        self.lengths = new.clone()
        self._refresh()

    def _refresh(self) -> None:
        self._uniform = bool((self.lengths == self.lengths[0]).all())

    def reset(self) -> None:
        self.lengths.zero_()
        self._uniform = True
