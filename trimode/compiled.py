"""Compiled forwards: the backbone under ``torch.compile``, one static graph per forward shape.

:meth:`TrimodeModel.compile_forwards` wraps the backbone (embeddings, layers, final
norm) in a :class:`CompiledBackbone`. A forward takes the compiled graph when
its width (new tokens per row) is one of the compiled *widths* and its KV cache is
*full width* (see :mod:`trimode.cache`): attention then spans every cache slot
under a mask, so the graph's shapes are (batch, width, capacity) and one graph
serves every step of a decode. The decoding loop makes its cache full width and
rounds its capacity up to :attr:`CompiledBackbone.capacity_step` when the model
has compiled forwards, so calls of similar lengths share graphs. Other widths
(a prompt's prefill, a block shortened at the end of a generation) run eagerly.

On CPU, inductor *freezes* the weights (constants folded into the graph, linear
layers packed for oneDNN), which is why compiling is for inference only: after
changing weights, compile again. The first forward of each (batch, width,
capacity) compiles; the seconds it took are kept in
:attr:`CompiledBackbone.compile_seconds` and said on stderr. On CUDA the graphs
run in ``reduce-overhead`` mode (CUDA graphs). A graph writes the KV cache in place, which
CUDA graphs allow only for inputs at fixed addresses: on CUDA the cache tensors are marked
static, and a decode's cache is reused by the next decode of the same (batch, capacity)
(:meth:`CompiledBackbone.cache_for` / :meth:`~CompiledBackbone.release`), so the graphs
recorded with it keep serving instead of being recorded again.
"""

from __future__ import annotations

import sys
import time
from typing import Iterable

import torch
from torch import nn

from .cache import KVCache


class CompiledBackbone:
    """``encoder(input_ids, position_ids, mask, cache) -> hidden``, compiled for some widths."""

    capacity_step = 256  # cache capacities are rounded up to this, so calls share graphs

    def __init__(self, encoder: nn.Module, widths: Iterable[int], verbose: bool = True):
        widths = sorted(set(widths))
        if not widths or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths):
            raise ValueError(f"compile widths {widths!r} must be positive integers (new tokens per forward)")
        self.widths = frozenset(widths)
        device = next(encoder.parameters()).device
        self.freeze = device.type == "cpu"
        mode = "reduce-overhead" if device.type == "cuda" else None
        self._fn = torch.compile(encoder, dynamic=False, mode=mode)
        self.static_caches = device.type == "cuda"  # CUDA graphs: the cache must keep its addresses
        self._free: dict[tuple[int, int], KVCache] = {}  # caches of finished decodes, by (batch, capacity)
        self.compile_seconds: dict[tuple[int, int, int], float] = {}
        self.calls = 0
        self.verbose = verbose

    def capacity_for(self, needed: int) -> int:
        step = self.capacity_step
        return -(-needed // step) * step

    def cache_for(self, model: nn.Module, batch: int, needed: int) -> KVCache:
        """A full-width cache for one decode with at least ``needed`` slots (rounded up).

        On CUDA a released cache of the same (batch, capacity) is handed out again, emptied: the
        CUDA graphs recorded with its tensors (marked static) then replay as they are."""
        capacity = self.capacity_for(needed)
        cache = self._free.pop((batch, capacity), None) if self.static_caches else None
        if cache is not None:
            cache.crop(0)
            return cache
        cache = KVCache.for_model(model, batch, capacity, full_width=True)
        if self.static_caches:
            for tensor in (*cache.keys, *cache.values):
                torch._dynamo.mark_static_address(tensor)
        return cache

    def release(self, cache: KVCache) -> None:
        """A decode is done with ``cache``: the next decode of its shape may reuse it (CUDA)."""
        if self.static_caches and cache.full_width:
            self._free[(cache.batch_size, cache.capacity)] = cache

    def __call__(self, input_ids: torch.Tensor, position_ids: torch.Tensor, mask, cache) -> torch.Tensor:
        shape = (input_ids.shape[0], input_ids.shape[1], cache.capacity)  # (batch, width, capacity)
        first = shape not in self.compile_seconds
        if first and self.verbose:
            print(f"trimode: compiling the forward for batch {shape[0]}, width {shape[1]}, cache {shape[2]} ...",
                  file=sys.stderr, flush=True)
        start = time.perf_counter()
        with torch._inductor.config.patch(freezing=self.freeze):
            hidden = self._fn(input_ids, position_ids, mask, cache)
        if first:
            self.compile_seconds[shape] = time.perf_counter() - start
            if self.verbose:
                print(f"trimode: compiled in {self.compile_seconds[shape]:.1f} s", file=sys.stderr, flush=True)
        self.calls += 1
        return hidden
