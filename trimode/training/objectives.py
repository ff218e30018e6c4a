"""Training objectives as small strategies: prepare a micro-batch, then return loss *sums*.

An objective splits its work in two so the trainer can normalise globally:

1. ``prepare(batch, step, first_index, purpose)`` (no model): draws the random choices of
   each sample from a generator seeded by (seed, purpose, step, global sample index),
   moves tensors to the device, and counts the tokens the loss is summed over.
2. ``terms(engine, prepared)``: one forward; returns the differentiable *sum*
   (``numerator``) and a vector of logged sums (``stat_names``).

The trainer all-reduces the counts of every micro-batch of every process first and
backpropagates ``numerator / global_count`` (times world size, undoing DDP's mean), so the
gradient is that of the loss over the whole global batch, however it is split.

- :class:`AutoregressiveObjective` (stage ``ar``): plain causal forward of length L,
  cross-entropy of token i+1 at position i (cheaper than the joint loss with alpha=0,
  which runs 2L tokens).
- :class:`JointObjective` (stages ``joint``, ``sft``): :func:`trimode.loss.joint_loss`
  (the joint AR + block-diffusion loss) with the corruption drawn per sample; ``loss_mask`` (SFT) restricts
  both terms to response tokens. With ``block_sizes`` each step draws its block size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from ..loss import corrupt, joint_loss
from .config import TrainConfig
from .data import generator_for


@dataclass
class Prepared:
    inputs: dict[str, torch.Tensor]
    count: int  # tokens the loss sums over (the normaliser)
    tokens: int  # tokens fed to the model (throughput)
    extra: dict | None = None


@dataclass
class Terms:
    numerator: torch.Tensor  # differentiable sum of the weighted losses
    stats: list[float]  # sums aligned with the objective's stat_names


class Objective(Protocol):
    stat_names: tuple[str, ...]

    def prepare(self, batch: dict[str, torch.Tensor], step: int, first_index: int, purpose: str) -> Prepared: ...

    def terms(self, engine: torch.nn.Module, prepared: Prepared) -> Terms: ...

    def summarize(self, sums: dict[str, float]) -> dict[str, float]: ...


def _mean(num: float, den: float) -> float:
    return num / den if den else float("nan")


class AutoregressiveObjective:
    stat_names = ("ar_sum", "n_ar")

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.device = device

    def prepare(self, batch, step, first_index, purpose) -> Prepared:
        ids = batch["input_ids"]
        keep = torch.ones_like(ids[:, 1:], dtype=torch.bool) if "loss_mask" not in batch \
            else batch["loss_mask"][:, 1:].bool()
        targets = ids[:, 1:].masked_fill(~keep, -100)  # (b, L-1)
        return Prepared({"input_ids": ids.to(self.device), "targets": targets.to(self.device)},
                        count=int(keep.sum()), tokens=ids.numel())

    def terms(self, engine, prepared) -> Terms:
        logits = engine(prepared.inputs["input_ids"]).logits[:, :-1].float()  # (b, L-1, V)
        targets = prepared.inputs["targets"]
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                             reduction="sum")
        return Terms(ce, [ce.item(), float(prepared.count)])

    def summarize(self, sums):
        return {"ar_loss": _mean(sums["ar_sum"], sums["n_ar"])}


class JointObjective:
    # diffusion_loss is logged per *maskable* token: sum over masked i of CE_i / p divided by the
    # tokens that could be masked is the usual NELBO-per-token estimate, on the AR loss's scale.
    # (Per *masked* token the 1/p weights make it swing by orders of magnitude between steps.)
    stat_names = ("ar_sum", "n_ar", "diffusion_sum", "n_masked", "n_maskable")

    def __init__(self, cfg: TrainConfig, model_config, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.mask_id = model_config.mask_token_id
        self.block_size = cfg.block_size or model_config.block_size
        self.alpha = model_config.dlm_loss_weight if cfg.dlm_loss_weight is None else cfg.dlm_loss_weight
        self.ar_weight = model_config.ar_loss_weight if cfg.ar_loss_weight is None else cfg.ar_loss_weight

    def step_block_size(self, step: int, purpose: str) -> int:
        """The block size of this step: one per step (the mask is shared by the batch)."""
        if not self.cfg.block_sizes or purpose != "train":
            return self.block_size
        g = generator_for(self.cfg.seed, "block", step, 0)
        return self.cfg.block_sizes[int(torch.randint(len(self.cfg.block_sizes), (1,), generator=g))]

    def prepare(self, batch, step, first_index, purpose) -> Prepared:
        ids = batch["input_ids"]  # (b, L), on CPU: draws are device-independent
        loss_mask = batch.get("loss_mask")
        rows = []
        for i in range(ids.shape[0]):
            g = generator_for(self.cfg.seed, purpose, step, first_index + i)
            row_mask = None if loss_mask is None else loss_mask[i:i + 1]
            rows.append(corrupt(ids[i:i + 1], self.mask_id, row_mask, self.cfg.mask_eps, g))
        xt, masked, p = (torch.cat(parts) for parts in zip(*rows))  # (b, L), (b, L), (b,)
        n_ar = ids[:, 1:].numel() if loss_mask is None else int(loss_mask[:, 1:].sum())
        inputs = {"input_ids": ids, "xt": xt, "masked": masked, "p": p}
        if loss_mask is not None:
            inputs["loss_mask"] = loss_mask
        maskable = ids.numel() if loss_mask is None else int(loss_mask.sum())
        return Prepared({k: v.to(self.device) for k, v in inputs.items()}, count=int(masked.sum()) + n_ar,
                        tokens=ids.numel(), extra={"block_size": self.step_block_size(step, purpose),
                                                   "maskable": maskable})

    def terms(self, engine, prepared) -> Terms:
        x = prepared.inputs
        out = joint_loss(engine, x["input_ids"], loss_mask=x.get("loss_mask"), block_size=prepared.extra["block_size"],
                         alpha=self.alpha, ar_weight=self.ar_weight, corruption=(x["xt"], x["masked"], x["p"]))
        numerator = self.alpha * out.diffusion_loss + self.ar_weight * out.ar_loss
        return Terms(numerator, [out.ar_loss.item(), float(out.n_ar_tokens), out.diffusion_loss.item(),
                                 float(out.n_masked), float(prepared.extra["maskable"])])

    def summarize(self, sums):
        return {"ar_loss": _mean(sums["ar_sum"], sums["n_ar"]),
                "diffusion_loss": _mean(sums["diffusion_sum"], sums["n_maskable"]),
                "mask_ratio": _mean(sums["n_masked"], sums["n_maskable"])}
