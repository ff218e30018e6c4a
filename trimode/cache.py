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

*Full width* (``full_width=True``, what compiled forwards use): every forward
attends over all ``capacity`` slots, the mask hiding the unused ones, and new
keys/values are scattered at each row's slots by device-side indices. A
forward's shapes then depend on (batch, q, capacity) only, never on how many
tokens are cached, so one compiled graph serves every step of a width.

The cache never allocates during decoding; ``capacity`` must cover the
longest prompt, the generated tokens and the widest forward's scratch.

Host mirror: the cache also keeps the lengths as Python ints
(:attr:`KVCache.host_lengths`, :attr:`~KVCache.max_length`,
:attr:`~KVCache.uniform`), so a forward (:meth:`KVCache.store`, the mask) never
reads the device tensor back: on a GPU each such read is a device->host sync.
``advance``/``crop`` keep both in step: an int updates the mirror for free; a
device tensor comes with its ``host`` values when the caller has them (the
decoders do, after their one sync per cycle), else the mirror is refreshed with
one ``.tolist()``.
"""

from __future__ import annotations

from typing import Sequence

import torch


class KVCache:
    """Preallocated, batch-first KV cache with per-row lengths.

    Args:
        num_layers, batch_size, num_kv_heads, head_dim: shapes of the model.
        capacity: slots per row (committed prefix + scratch of the widest forward).
        device, dtype: where the keys/values live.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int,
                 capacity: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 full_width: bool = False):
        if capacity <= 0 or batch_size <= 0:
            raise ValueError(f"KVCache: capacity={capacity} and batch_size={batch_size} must be positive")
        shape = (batch_size, num_kv_heads, capacity, head_dim)
        self.keys = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.capacity = capacity
        self.full_width = full_width
        self._set_host([0] * batch_size)

    @classmethod
    def for_model(cls, model, batch_size: int, capacity: int, full_width: bool = False) -> "KVCache":
        """A cache shaped for ``model`` (any module with a TrimodeConfig-like ``config``)."""
        cfg = model.config
        param = next(model.parameters(), None)
        device = param.device if param is not None else "cpu"
        dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
        return cls(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, cfg.head_dim,
                   capacity, device=device, dtype=dtype, full_width=full_width)

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def host_lengths(self) -> list[int]:
        """``lengths`` as Python ints (a copy), read without touching the device."""
        return list(self._host)

    @property
    def max_length(self) -> int:
        """The longest row's committed tokens, from the host mirror."""
        return self._max

    @property
    def uniform(self) -> bool:
        """All rows share one length, so writes are plain slices (from the host mirror)."""
        return self._uniform

    # ------------------------------------------------------------------ writes
    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Place new keys/values after each row's prefix; return the attendable keys/values.

        k, v: (batch, num_kv_heads, q, head_dim).
        Returns keys/values (batch, num_kv_heads, max(lengths) + q, head_dim): the prefix,
        the new tokens, and (for rows shorter than the longest) slots the mask must hide;
        full width: all ``capacity`` slots (the caller checks room first, :meth:`check_room`).
        """
        q = k.shape[2]
        keys, values = self.keys[layer], self.values[layer]
        if self.full_width:  # no host value read: a compiled graph must not depend on one
            slots = self.lengths[:, None] + torch.arange(q, device=k.device)  # (batch, q)
            index = slots[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[3])
            keys.scatter_(2, index, k)
            values.scatter_(2, index, v)
            return keys, values
        self.check_room(q)
        start = self._max  # host mirror: no device read per layer
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

    def check_room(self, q: int) -> None:
        """RuntimeError unless ``q`` new tokens fit after the longest row (host mirror only)."""
        if self._max + q > self.capacity:
            raise RuntimeError(f"KVCache overflow: {self._max} cached + {q} new tokens > capacity {self.capacity}")

    # ------------------------------------------------------------ bookkeeping
    def advance(self, n: int | Sequence[int] | torch.Tensor, host: Sequence[int] | None = None) -> None:
        """Commit the first ``n`` (per row, or for all rows) tokens of the last forward.

        ``n``: an int, per-row ints, or a (batch,) device tensor; with a tensor, ``host`` may
        give the same counts as ints (no sync), else they are read back once.
        """
        if isinstance(n, int):
            self.lengths += n
            self._set_host([h + n for h in self._host])
        elif isinstance(n, torch.Tensor):
            self.lengths += n.to(self.lengths)
            self._set_host([h + int(c) for h, c in zip(self._host, host)] if host is not None
                           else self.lengths.tolist())
        else:
            self.advance(self._on_device(n), host=n)

    def crop(self, lengths: int | Sequence[int] | torch.Tensor, host: Sequence[int] | None = None) -> None:
        """Roll back to ``lengths`` committed tokens (per row or for all rows). Nothing is copied.

        ``lengths``: an int, per-row ints, or a (batch,) device tensor; with a tensor, ``host``
        may give the same values as ints (no sync), else they are read back once.
        """
        if isinstance(lengths, int):
            new, new_host = torch.full_like(self.lengths, lengths), [lengths] * self.batch_size
        elif isinstance(lengths, torch.Tensor):
            new = lengths.to(self.lengths).expand_as(self.lengths).clone()
            new_host = [int(h) for h in host] if host is not None else new.tolist()
        else:
            new_host = [int(h) for h in lengths]
            new = self._on_device(new_host)
        if len(new_host) != self.batch_size or any(not 0 <= n <= h for n, h in zip(new_host, self._host)):
            raise ValueError(f"KVCache.crop: {new_host} must be within [0, {self._host}]")
        self.lengths = new
        self._set_host(new_host)

    def reset(self) -> None:
        self.lengths.zero_()
        self._set_host([0] * self.batch_size)

    def _on_device(self, values: Sequence[int]) -> torch.Tensor:
        """Per-row ints as a (batch,) tensor next to ``lengths`` (a host->device copy: not per forward)."""
        return torch.as_tensor(list(values), dtype=torch.long).to(self.lengths.device).expand_as(self.lengths)

    def _set_host(self, host: list[int]) -> None:
        self._host = host
        self._max = max(host)
        self._uniform = all(h == host[0] for h in host)
