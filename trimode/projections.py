"""Linear projections with a packed CPU layout, and several projections of one input in one matmul.

A bandwidth-bound forward streams every weight once; how fast depends on the layout
the matmul reads. :class:`Projection` is an ``nn.Linear`` whose weight can be handed to
a :class:`PackedWeights` (oneDNN's blocked layout; q/k/v stacked into one matrix, gate/up
into another), and :func:`project_together` runs such a group as one matmul, PEFT
wrappers included. :meth:`trimode.modeling.TrimodeModel.pack_weights` decides what packs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Projection(nn.Linear):
    """``nn.Linear`` whose weight can be packed for fast CPU inference.

    A bandwidth-bound forward streams every weight once; how fast depends on the layout
    the matmul reads. :meth:`TrimodeModel.pack_weights` hands each projection's weight to
    a :class:`PackedWeights` (oneDNN's blocked layout, one for q/k/v together and one for
    gate/up together), which serves a 1-token decode step and a 16-token verify alike.
    The parameter keeps its name and shape (checkpoints, PEFT targeting and LoRA work as
    before) but no longer holds its own copy: its data becomes a one-element placeholder.
    ``state_dict`` still returns the real values, and anything that needs the dense
    weight back (a forward with gradients, ``.to()``, ``load_state_dict``) unpacks first.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: PackedWeights | None = None
        self._precomputed: tuple[torch.Tensor, torch.Tensor] | None = None  # (input, output) from a group

    @property
    def packed(self) -> bool:
        return self._packed is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self._precomputed
        if pre is not None:
            self.__dict__["_precomputed"] = None  # skips nn.Module.__setattr__: this runs per projection call
            if pre[0] is x:  # computed together with its group (see project_together)
                return pre[1]
        if self._packed is not None:
            if not (torch.is_grad_enabled() and self.weight.requires_grad):
                return self._packed(x)[self._packed.members.index(self)]
            self._packed.unpack()  # training: gradients need the dense weight
        return F.linear(x, self.weight, self.bias)

    def __setstate__(self, state):
        super().__setstate__(state)
        if self._packed is not None:  # a copy (deepcopy, pickle) of a packed projection: no dense stand-in
            _drop_dense(self.weight)

    def _apply(self, fn, recurse=True):
        # .to(), .float(), .cuda(), ...: move the real values, not the placeholder.
        if self._packed is not None:
            self._packed.unpack()
        return super()._apply(fn, recurse)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._packed is not None:
            destination[prefix + "weight"] = self._packed.dense(self)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self._packed is not None:
            self._packed.unpack()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _drop_dense(weight: nn.Parameter) -> None:
    """Free a packed weight's dense values: its data becomes one element expanded to its shape
    (the same Parameter object, name and shape, which optimizers and PEFT hold)."""
    weight.data = torch.empty(1, dtype=weight.dtype, device=weight.device).expand(weight.shape)


class PackedWeights:
    """oneDNN-packed weights for one or more :class:`Projection` s that read the same input.

    Stacking q/k/v (or gate/up) makes one bigger matmul instead of three (two) small
    ones; the packed layout is what oneDNN's CPU kernels stream fastest for any number
    of rows. The stacked rows are packed in chunks of at most ``CHUNK_BYTES``, each
    member's dense weight released as soon as its rows are packed, so packing a model
    never holds more than one chunk twice. CPU float32 only (see :func:`packable`).
    """

    ROWS_HINT = 16  # the row count oneDNN tunes the layout for; it stays fast from 1 to hundreds
    CHUNK_BYTES = 32 * 2**20
    # Below this many weights a group stays dense: oneDNN's packed call costs about 20 us whatever the
    # size, more than a plain matmul of a (512, 256) weight takes for one row.
    MIN_ELEMENTS = 2**18

    def __init__(self, members: list[Projection]):
        self.members = members
        self.sizes = [m.out_features for m in members]
        w = members[0].weight
        rows = self.rows = max(1, self.CHUNK_BYTES // (w.shape[1] * w.element_size()))
        self.chunks: list[torch.Tensor] = []  # packed (rows_i, in) pieces of the stacked (sum(out), in) matrix
        total, done = sum(self.sizes), 0
        ends = [sum(self.sizes[:i + 1]) for i in range(len(members))]
        for start in range(0, total, rows):
            stop = min(start + rows, total)
            self.chunks.append(torch.ops.mkldnn._reorder_linear_weight(self._rows(start, stop), self.ROWS_HINT))
            while done < len(members) and ends[done] <= stop:  # every row of this member is packed
                self._release(members[done])
                done += 1
        biases = [m.bias for m in members]
        self._bias_chunks = None if biases[0] is None else list(torch.cat([b.detach() for b in biases]).split(rows))

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the members' weights stacked, as one contiguous (stop - start, in) tensor."""
        pieces, offset = [], 0
        for m, size in zip(self.members, self.sizes):
            lo, hi = max(start, offset), min(stop, offset + size)
            if lo < hi:
                pieces.append(m.weight.detach()[lo - offset:hi - offset])
            offset += size
        return pieces[0].contiguous() if len(pieces) == 1 else torch.cat(pieces)

    def _release(self, member: Projection) -> None:
        _drop_dense(member.weight)
        member._packed = self

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x (..., in) -> one (..., out_i) view per member."""
        outs = [torch.ops.mkldnn._linear_pointwise(x, w, None if self._bias_chunks is None else self._bias_chunks[i],
                                                   "none", [], "")
                for i, w in enumerate(self.chunks)]
        out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)  # (..., sum(out))
        return list(out.split(self.sizes, dim=-1)) if len(self.sizes) > 1 else [out]

    # copy.deepcopy / pickle: oneDNN's opaque tensors have no storage to copy; their dense values do.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["chunks"] = [c.to_dense() for c in self.chunks]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.chunks = [torch.ops.mkldnn._reorder_linear_weight(c, self.ROWS_HINT) for c in self.chunks]

    def _dense_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) of the stacked matrix as a new dense (stop - start, in) tensor; only the
        chunks holding them are converted."""
        first, last = start // self.rows, (stop - 1) // self.rows
        dense = torch.cat([c.to_dense() for c in self.chunks[first:last + 1]])
        offset = first * self.rows
        return dense[start - offset:stop - offset].clone()

    def dense(self, member: Projection) -> torch.Tensor:
        """member's dense (out, in) weight."""
        i = self.members.index(member)
        start = sum(self.sizes[:i])
        return self._dense_rows(start, start + self.sizes[i])

    def unpack(self) -> None:
        """Give every member its dense weight back and drop the packed copy."""
        for m, w in zip(self.members, self._dense_rows(0, sum(self.sizes)).split(self.sizes)):
            m.weight.data = w.clone()
            m._packed = None
        self.members, self.chunks = [], []


def packable(projections: list[Projection]) -> bool:
    """Packing pays for float32 CPU weights (bfloat16 is the choice when memory is short, and packing a
    memory-mapped checkpoint would keep its file pages beside the packed copy); a group packs
    together when dtype, device and bias agree."""
    w = projections[0].weight
    return (torch.backends.mkldnn.is_available() and w.device.type == "cpu" and w.dtype == torch.float32
            and all(p.weight.dtype == w.dtype and p.weight.device == w.device
                    and (p.bias is None) == (projections[0].bias is None) and p._packed is None
                    for p in projections))


def base_projection(module: nn.Module) -> nn.Module:
    """The layer under PEFT wrappers (``base_layer`` chains); the module itself otherwise."""
    while hasattr(module, "base_layer"):
        module = module.base_layer
    return module


def project_together(modules: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    """``[m(x) for m in modules]``, with one matmul when their weights are packed together.

    Each module is a :class:`Projection` or a PEFT layer wrapping one. The group's
    output is handed to each base projection for exactly this input, then every module
    is called as usual, so a wrapping LoRA adds its update (and per-position gate) to it.
    """
    bases = [base_projection(m) for m in modules]
    group = getattr(bases[0], "_packed", None)
    if (group is not None and len(group.members) == len(bases)
            and all(b._packed is group for b in bases)
            and not (torch.is_grad_enabled() and bases[0].weight.requires_grad)):
        for base, out in zip(bases, group(x)):
            base.__dict__["_precomputed"] = (x, out)
    return [m(x) for m in modules]
