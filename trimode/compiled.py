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
run in ``reduce-overhead`` mode (CUDA graphs).
"""

from __future__ import annotations

import sys
import time
from typing import Iterable

import torch
from torch import nn


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
        self.compile_seconds: dict[tuple[int, int, int], float] = {}
        self.calls = 0
        self.verbose = verbose

    def capacity_for(self, needed: int) -> int:
        step = self.capacity_step
        return -(-needed // step) * step

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
