"""Switching the LoRA drafter on and off, per forward or per position.

The drafter is a PEFT LoRA adapter on the model's projections, active in draft forwards
only. :func:`set_drafter_active` turns it on or off for the whole forward, or gates its
update position by position (quadratic-spec drafts and verifies in one forward).
:func:`drafter_state` / :func:`drafter_state_applied` record that switch and set it again: a
forward recomputed later (activation checkpointing recomputes it during backward) must see the
adapter as it was, whatever later forwards switched it to.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import torch
from torch import nn


def set_drafter_active(model: nn.Module, active: bool | torch.Tensor) -> None:
    """Switch every PEFT adapter layer inside ``model`` on (draft forwards) or off (all others).

    ``active`` may also be a bool tensor over the forward's tokens, (B, Q) or (Q,): the
    adapter then acts only at the True positions (quadratic-spec's mask groups). At the
    other positions the LoRA update is multiplied by zero before it is added, so a position
    that attends to no gated one (quadratic-spec's verified chain never attends to its mask
    groups) gets exactly the adapter-free model's logits and keys/values: lossless.

    A no-op when PEFT is not loaded or the model carries no adapter.
    """
    if "peft" not in sys.modules:
        return
    gate = active if isinstance(active, torch.Tensor) else None
    on = gate is not None or bool(active)
    for layer, downs in _adapter_layers(model):
        if layer.disable_adapters == on:
            layer.enable_adapters(on)
        for down in downs:
            _set_lora_gate(down, gate)


def _adapter_layers(model: nn.Module) -> list[tuple[nn.Module, list[nn.Module]]]:
    """Every PEFT adapter layer in ``model`` with its LoRA down-projections, found once per adapter set.

    Walking every module on each forward cost milliseconds (a decode step of a 135M model
    runs in tens); PEFT records its adapters in ``model.peft_config`` when it injects or adds
    them, so that dict (its identity and keys) says when to look again.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    config = getattr(model, "peft_config", None)
    key = (id(config), tuple(config) if isinstance(config, dict) else None)
    cached = model.__dict__.get("_trimode_adapter_layers")
    if cached is None or cached[0] != key:
        layers = [(m, list(getattr(m, "lora_A", {}).values())) for m in model.modules()
                  if isinstance(m, BaseTunerLayer)]
        cached = (key, layers)
        object.__setattr__(model, "_trimode_adapter_layers", cached)  # a plain attribute, not a submodule
    return cached[1]


def _set_lora_gate(down: nn.Module, gate: torch.Tensor | None) -> None:
    """Gate a LoRA down-projection's output per position (None: ungated). The hook is
    registered the first time a gate is set, and does nothing while the gate is None."""
    if not hasattr(down, "_trimode_gate"):
        if gate is None:
            return
        down.register_forward_hook(_apply_lora_gate)
    down._trimode_gate = gate


def _apply_lora_gate(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
    gate = module._trimode_gate  # (B, Q) or (Q,) bool
    if gate is None:
        return None
    return output * gate.expand(output.shape[:-1]).unsqueeze(-1).to(output.dtype)  # (B, Q, r)


# One adapter layer's switch: (layer, adapters disabled?, [(LoRA down-projection, its gate)]).
DrafterState = list[tuple[nn.Module, bool, list[tuple[nn.Module, "torch.Tensor | None"]]]]


def drafter_state(module: nn.Module) -> DrafterState:
    """The drafter switch of every adapter layer inside ``module``, as it is now (empty without PEFT)."""
    if "peft" not in sys.modules:
        return []
    from peft.tuners.tuners_utils import BaseTunerLayer

    return _state_of([m for m in module.modules() if isinstance(m, BaseTunerLayer)])


@contextlib.contextmanager
def drafter_state_applied(state: DrafterState) -> Iterator[None]:
    """Run the block with the adapter switch of ``state``, then put back the switch found on entry.

    Sets the switch directly: PEFT's ``enable_adapters`` would also flip ``requires_grad`` of
    the adapter weights, which a recomputation in the middle of backward must not touch.
    """
    if not state:
        yield
        return
    found = _state_of([layer for layer, _, _ in state])
    _apply(state)
    try:
        yield
    finally:
        _apply(found)


def _state_of(layers: list[nn.Module]) -> DrafterState:
    return [(m, bool(m.disable_adapters), [(d, getattr(d, "_trimode_gate", None))
                                          for d in getattr(m, "lora_A", {}).values()]) for m in layers]


def _apply(state: DrafterState) -> None:
    for layer, disabled, gates in state:
        layer._disable_adapters = disabled
        for down, gate in gates:
            _set_lora_gate(down, gate)
