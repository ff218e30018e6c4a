"""Activation checkpointing per decoder layer: keep each layer's input, recompute the rest in backward.

torch's own ``torch.utils.checkpoint.checkpoint`` (non-reentrant) runs each decoder layer; the layer's
``forward`` is replaced on the instance only, so the module tree, parameter names and ``state_dict``
keys stay exactly as they were (checkpoints, exports and FSDP2's sharding see the same model).

Two things make the recomputation equal the forward it replays:

- the LoRA drafter is switched per forward by module state (:mod:`trimode.drafter_gate`), and the
  recomputation runs during backward, when a later forward may have switched it: each checkpointed
  forward records the switch of its layer's adapters and the recomputation runs under that record;
- the recomputed function is the layer's own ``forward``, not ``layer(...)``: hooks on the layer
  (FSDP2's all-gather / reshard) run once, around the original call, and are not replayed.

Forwards without gradients (evaluation, the drafter's cached prefix) run the layer as it is.
"""

from __future__ import annotations

import functools

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..backbone import DecoderLayer
from ..drafter_gate import drafter_state, drafter_state_applied


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers, in order (the units that are checkpointed and sharded)."""
    layers = [m for m in model.modules() if isinstance(m, DecoderLayer)]
    if not layers:
        raise ValueError(f"{type(model).__name__} has no decoder layer ({DecoderLayer.__name__}) to checkpoint "
                         "or shard")
    return layers


def checkpoint_decoder_layers(model: nn.Module) -> int:
    """Turn on activation checkpointing for every decoder layer of ``model``; returns how many."""
    layers = decoder_layers(model)
    for layer in layers:
        if not isinstance(layer.__dict__.get("forward"), functools.partial):  # once per layer
            layer.forward = functools.partial(_checkpointed_forward, layer, layer.forward)
    return len(layers)


def _checkpointed_forward(layer: nn.Module, forward, *args, **kwargs):
    """``forward(*args)`` keeping only its inputs; backward recomputes it with this call's drafter switch."""
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    state = drafter_state(layer)

    def replay(*a, **k):
        with drafter_state_applied(state):  # a no-op in the forward itself: the switch is already this
            return forward(*a, **k)

    return checkpoint(replay, *args, use_reentrant=False, **kwargs)
