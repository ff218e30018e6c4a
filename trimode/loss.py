"""The joint AR + block-diffusion training objective.

One forward of length 2L over ``concat(xt, x0)`` under
:func:`trimode.masks.training_mask` trains both pathways of the one head:

- diffusion term: at each masked position i of xt, CE(logits_xt[i], x0[i]) / p
  (no shift: a mask predicts its own token; 1/p weights the ELBO);
- AR term: CE(logits_x0[i], x0[i+1]) over the clean stream (the usual shift);
- loss = (alpha * diffusion + ar_weight * AR) / (n_masked + n_ar_tokens).

``loss_mask`` restricts both terms to some tokens (SFT: the response): only
those may be masked, and the AR term only counts targets inside it.

PEFT adapters (LoRA) attached to the model act where ``adapters`` says. The
default, ``"noisy"``, switches them on for the diffusion stream only, as the
decoders do at inference (draft forwards on, AR and verification forwards off):
the clean stream, its keys/values included, is the base model's, and the
adapters learn from the diffusion term. ``"all"`` trains them on both terms (a
LoRA fine-tune meant to be merged into the weights); ``"none"`` leaves them off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .masks import training_mask

# Where attached adapters act in the joint loss (see the module docstring).
ADAPTER_SCOPES = ("noisy", "all", "none")


@dataclass
class JointLossOutput:
    loss: torch.Tensor  # the scalar to backpropagate
    ar_loss: torch.Tensor  # summed AR cross-entropy (nats)
    diffusion_loss: torch.Tensor  # summed, 1/p-weighted diffusion cross-entropy (nats)
    n_masked: int
    n_ar_tokens: int


def corrupt(input_ids: torch.Tensor, mask_token_id: int, loss_mask: torch.Tensor | None = None,
            eps: float = 1e-3, generator: torch.Generator | None = None):
    """Draw t ~ U(0,1) per sequence, p = (1-eps) t + eps, mask each allowed token with prob p.

    Returns (xt, masked (B, L) bool, p (B,)).
    """
    B, L = input_ids.shape
    dev = input_ids.device
    # Drawn where the generator lives (a seeded CPU generator gives the same corruption whatever
    # device trains), then moved: two small tensors per call.
    draw = generator.device if generator is not None else dev
    t = torch.rand(B, generator=generator, device=draw).to(dev)
    p = (1 - eps) * t + eps
    masked = torch.rand(B, L, generator=generator, device=draw).to(dev) < p[:, None]
    if loss_mask is not None:
        masked &= loss_mask.bool()
    xt = torch.where(masked, torch.full_like(input_ids, mask_token_id), input_ids)
    return xt, masked, p


def joint_loss(model, input_ids: torch.Tensor, loss_mask: torch.Tensor | None = None,
               block_size: int | None = None, alpha: float | None = None, ar_weight: float | None = None,
               eps: float = 1e-3, generator: torch.Generator | None = None,
               corruption: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
               adapters: str = "noisy") -> JointLossOutput:
    """Joint loss of ``model`` on clean sequences ``input_ids`` (B, L).

    Defaults come from ``model.config``: ``block_size``, ``dlm_loss_weight`` (alpha),
    ``ar_loss_weight``. ``corruption`` = (xt, masked, p) replaces the random draw
    (tests, or a trainer that draws it elsewhere). ``adapters``: where attached PEFT
    adapters act, ``"noisy"`` (the diffusion stream), ``"all"`` or ``"none"`` (see above).
    """
    if adapters not in ADAPTER_SCOPES:
        raise ValueError(f"adapters={adapters!r} is not supported; allowed: {', '.join(ADAPTER_SCOPES)}")
    cfg = model.config
    block_size = cfg.block_size if block_size is None else block_size
    alpha = cfg.dlm_loss_weight if alpha is None else alpha
    ar_weight = cfg.ar_loss_weight if ar_weight is None else ar_weight
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise ValueError(f"input_ids must be (batch, L) with L >= 2, got {tuple(input_ids.shape)}")
    B, L = input_ids.shape
    xt, masked, p = corruption if corruption is not None else corrupt(
        input_ids, cfg.mask_token_id, loss_mask, eps, generator)

    positions = torch.arange(L, device=input_ids.device).repeat(2)[None].expand(B, 2 * L)
    mask = training_mask(L, block_size, device=input_ids.device)  # (2L, 2L)
    gate = {"noisy": torch.arange(2 * L, device=input_ids.device) < L, "all": True, "none": False}[adapters]
    logits = model(torch.cat([xt, input_ids], 1), position_ids=positions, attention_mask=mask,
                   use_drafter=gate).logits  # (B, 2L, V)
    logits_xt, logits_x0 = logits[:, :L].float(), logits[:, L:].float()

    diff_ce = F.cross_entropy(logits_xt[masked], input_ids[masked], reduction="none")
    diffusion = (diff_ce / p[:, None].expand(B, L)[masked]).sum()

    ar_targets = input_ids[:, 1:]
    ar_keep = torch.ones_like(ar_targets, dtype=torch.bool) if loss_mask is None else loss_mask[:, 1:].bool()
    ar_ce = F.cross_entropy(logits_x0[:, :-1][ar_keep], ar_targets[ar_keep], reduction="none")
    ar = ar_ce.sum()

    n_masked, n_ar = int(masked.sum()), int(ar_keep.sum())
    loss = (alpha * diffusion + ar_weight * ar) / max(1, n_masked + n_ar)
    return JointLossOutput(loss=loss, ar_loss=ar, diffusion_loss=diffusion, n_masked=n_masked, n_ar_tokens=n_ar)
