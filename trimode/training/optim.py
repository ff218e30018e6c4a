"""AdamW with a warmup-stable-decay (WSD) learning rate, as the published recipe uses.

- Weight decay applies to matrices (linear weights, embeddings) only; RMSNorm gains and
  biases are not decayed (the usual GPT recipe).
- The schedule is a pure function of the step, :func:`wsd_factor`, run by a
  ``LambdaLR``: its state is just the step count, saved as JSON in checkpoints.

WSD over ``steps`` updates (update index s = 0 .. steps-1)::

    warmup  s <  W:            (s + 1) / W                 (W = round(warmup_frac * steps))
    stable  W <= s < steps-D:  1
    decay   s >= steps - D:    1 - (1 - min_ratio) * (s - (steps - D) + 1) / D   (D = round(decay_frac * steps))

so the last update runs at exactly ``min_lr_ratio * lr``.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

from .config import TrainConfig


def wsd_factor(step: int, steps: int, warmup_frac: float, decay_frac: float, min_ratio: float) -> float:
    warmup = round(warmup_frac * steps)
    decay = round(decay_frac * steps)
    if step < warmup:
        return (step + 1) / warmup
    if step < steps - decay or decay == 0:  # decay 0 (a few steps): no decay, and no division by it
        return 1.0
    progress = min(1.0, (step - (steps - decay) + 1) / decay)
    return 1.0 - (1.0 - min_ratio) * progress


def build_optimizer(named_params: Iterable[tuple[str, torch.nn.Parameter]], cfg: TrainConfig,
                    device: torch.device, lr_scale: Callable[[str], float] | None = None) -> torch.optim.AdamW:
    """AdamW over the parameters that require grad; ``lr_scale(name)``: a multiple of ``cfg.lr`` per parameter
    (one parameter group per scale; the schedule multiplies every group's rate alike)."""
    groups: dict[tuple[bool, float], list] = {}
    for name, p in named_params:
        if p.requires_grad:
            scale = 1.0 if lr_scale is None else float(lr_scale(name))
            groups.setdefault((p.dim() >= 2, scale), []).append(p)
    if not groups:
        raise ValueError("nothing to train: no parameter requires grad")
    # Decayed matrices first, then the rest, as with one scale (the order of a checkpoint's groups).
    groups = [{"params": params, "weight_decay": cfg.weight_decay if decayed else 0.0, "lr": cfg.lr * scale}
              for (decayed, scale), params in sorted(groups.items(), key=lambda kv: (not kv[0][0], -kv[0][1]))]
    # fused kernels are a CUDA speed-up; the math (and so the result) is AdamW either way.
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps,
                             fused=device.type == "cuda" or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    steps, w, d, m = cfg.steps, cfg.warmup_frac, cfg.decay_frac, cfg.min_lr_ratio
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: wsd_factor(s, steps, w, d, m))
