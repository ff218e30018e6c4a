"""The joint AR + block-diffusion loss of a vision-language model, with the image in the clean prefix only.

:func:`trimode.loss.joint_loss` runs ``concat(xt, x0)`` over whole sequences, its blocks counted from
position 0: a block may hold prompt tokens, and with an image in the prompt, image placeholders. Here
the image must stay in the clean causal prefix, never inside a diffusion block (issue 18), and the
blocks should sit where the decoders put them: the first block starts at the first answer token,
right after the prefilled prompt. So the noisy stream holds the *answer window* only:

    x0      = prompt (image placeholders included) + answer + EOS        positions 0 .. L-1
    xt      = the answer window, blocks of B from the answer start,      positions P .. P+W-1
              each token masked with probability p (drawn per sample)
    input   = concat(xt, x0); the image features enter x0's placeholders only
    attention:
      xt query k -> xt key k'   same block (k // B == k' // B): bidirectional inside the block
      xt query k -> x0 key j    j < P + (k // B) * B: the clean prompt and the earlier answer blocks
      x0 query i -> x0 key j    j <= i (causal: the AR stream)
      x0 query   -> xt key      never

The last block of an answer is filled up with EOS (at inference the block that ends an answer holds
masks after its EOS; predicting EOS there lets it finish), positions past it carry nothing. Loss terms
are those of :func:`trimode.loss.joint_loss`: diffusion CE at masked window positions weighted 1/p,
AR CE of the answer tokens (EOS included) from the clean stream, ``alpha * diffusion + ar_weight * AR``
summed (the trainer divides by the global count, ``n_masked + n_ar``). The noisy stream is shorter
than the whole sequence, so a step costs ``L + W`` tokens instead of ``2L``.

With ``vlm.grounding_weight`` > 0 a third term pulls each image token's projected feature towards the
embeddings of the words for what it shows (:mod:`.vlm_grounding`), weighted so that it adds
``grounding_weight`` x its mean per image token to the per-token loss.

The Pixtral tower runs once per image: transformers' ``PixtralVisionModel`` packs a batch of images
into one sequence with a dense block-diagonal mask, whose cost grows with the square of the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..loss import corrupt
from .config import TrainConfig
from .data import generator_for
from .objectives import JointObjective, Prepared, Terms
from .vlm_grounding import grounding_loss

IMAGE_KEYS = ("pixel_values", "image_sizes")


def image_embeddings(model, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                     image_sizes: torch.Tensor, return_features: bool = False):
    """Token embeddings (b, L, hidden) with row r's image features at its ``image_token_id`` placeholders
    (and, with ``return_features``, the list of each row's (n_r, hidden) features too).

    One image per row; ``pixel_values`` (b, 3, S, S) hold each at the top left, ``image_sizes`` (b, 2)
    its (height, width).
    """
    embeds = model.encoder.embed_tokens(input_ids)
    per_row = []
    for r in range(input_ids.shape[0]):
        h, w = (int(v) for v in image_sizes[r])
        per_row += model.get_image_features(pixel_values[r:r + 1, :, :h, :w], image_sizes[r:r + 1])
    features = torch.cat(per_row).to(embeds.dtype)
    mask = input_ids == model.config.image_token_id
    if int(mask.sum()) != features.shape[0]:
        raise ValueError(f"{int(mask.sum())} image placeholders in the batch for {features.shape[0]} image features")
    embeds = embeds.masked_scatter(mask[..., None].expand_as(embeds), features)
    return (embeds, per_row) if return_features else embeds


def answer_window_mask(prompt_length: torch.Tensor, L: int, W: int, block: int) -> torch.Tensor:
    """The (b, 1, W + L, W + L) bool attention mask of ``concat(xt window, x0)`` (see the module docstring)."""
    b = prompt_length.shape[0]
    k = torch.arange(W)
    j = torch.arange(L)
    xt_xt = (k[:, None] // block) == (k[None, :] // block)  # (W, W)
    xt_x0 = j[None, None, :] < (prompt_length[:, None, None] + (k // block * block)[None, :, None])  # (b, W, L)
    x0_x0 = j[None, :] <= j[:, None]  # (L, L)
    top = torch.cat([xt_xt.expand(b, W, W), xt_x0], 2)
    bottom = torch.cat([torch.zeros(b, L, W, dtype=torch.bool), x0_x0.expand(b, L, L)], 2)
    return torch.cat([top, bottom], 1)[:, None]


class VLMJointObjective(JointObjective):
    """Stage ``vlm``: the answer-window joint loss above, with the random draws of :class:`JointObjective`
    (per-sample corruption from (seed, purpose, step, global index), one block size per step), plus the
    grounding term when ``cfg.vlm.grounding_weight`` > 0."""

    stat_names = JointObjective.stat_names + ("grounding_sum", "n_cells")

    def __init__(self, cfg: TrainConfig, model, device: torch.device):
        super().__init__(cfg, model.config, device)
        self.grounding_weight = cfg.vlm.grounding_weight
        self.model = model  # the module whose tower and embeddings build the inputs
        self.eos = model.config.eos_token_ids[0]
        self.pad = model.config.pad_token_id if model.config.pad_token_id is not None else self.eos

    def window(self, ids: torch.Tensor, P: torch.Tensor, T: torch.Tensor, block: int):
        """Targets (b, S) and maskable (b, S) of the answer windows, S = the full sequence length: the answer,
        EOS up to the end of its last block, pad (not maskable) after. Drawn at full width, so a row's mask
        does not depend on the other rows of its micro-batch."""
        b, S = ids.shape
        k = torch.arange(S)[None]
        A = (T - P)[:, None]  # answer tokens, EOS included
        filled = -(-A // block) * block  # up to the end of the last block
        src = (P[:, None] + k).clamp(max=S - 1)
        targets = torch.where(k < A, ids.gather(1, src), torch.where(k < filled, self.eos, self.pad))
        return targets, k < filled

    def prepare(self, batch, step, first_index, purpose) -> Prepared:
        ids, P, T = batch["input_ids"], batch["prompt_length"], batch["length"]
        block = self.step_block_size(step, purpose)
        targets, maskable = self.window(ids, P, T, block)
        rows = [corrupt(targets[i:i + 1], self.mask_id, maskable[i:i + 1], self.cfg.mask_eps,
                        generator_for(self.cfg.seed, purpose, step, first_index + i)) for i in range(ids.shape[0])]
        xt, masked, p = (torch.cat(parts) for parts in zip(*rows))
        L = int(T.max())
        W = int(maskable.sum(1).max())
        A_max = int((T - P).max())
        # Logits only where a loss is: the window, and the clean positions that predict answer tokens.
        ar_pos = (W + P[:, None] - 1 + torch.arange(A_max)[None]).clamp(max=W + L - 1)
        keep = torch.cat([torch.arange(W)[None].expand(ids.shape[0], W), ar_pos], 1)
        ar_targets = ids.gather(1, (P[:, None] + torch.arange(A_max)[None]).clamp(max=ids.shape[1] - 1))
        ar_targets = ar_targets.masked_fill(torch.arange(A_max)[None] >= (T - P)[:, None], -100)
        positions = torch.cat([P[:, None] + torch.arange(W)[None], torch.arange(L)[None].expand(ids.shape[0], L)], 1)
        inputs = {"x0": ids[:, :L], "xt": xt[:, :W], "targets": targets[:, :W], "masked": masked[:, :W], "p": p,
                  "positions": positions, "mask": answer_window_mask(P, L, W, block), "keep": keep,
                  "ar_targets": ar_targets, **{k: batch[k] for k in IMAGE_KEYS}}
        if self.grounding_weight > 0:
            inputs["cell_tokens"] = batch["cell_tokens"]
        n_ar = int((T - P).sum())
        return Prepared({k: v.to(self.device) for k, v in inputs.items()}, count=int(masked.sum()) + n_ar,
                        tokens=int(T.sum()), extra={"block_size": block, "maskable": int(maskable.sum())})

    def terms(self, engine, prepared) -> Terms:
        x = prepared.inputs
        W = x["xt"].shape[1]
        clean, features = image_embeddings(self.model, x["x0"], x["pixel_values"], x["image_sizes"],
                                           return_features=True)
        embeds = torch.cat([self.model.encoder.embed_tokens(x["xt"]), clean], 1)
        logits = engine(torch.cat([x["xt"], x["x0"]], 1), position_ids=x["positions"], attention_mask=x["mask"],
                        inputs_embeds=embeds, logits_to_keep=x["keep"]).logits.float()
        masked, p = x["masked"], x["p"]
        diff_ce = F.cross_entropy(logits[:, :W][masked], x["targets"][masked], reduction="none")
        diffusion = (diff_ce / p[:, None].expand_as(masked)[masked]).sum()
        ar_logits = logits[:, W:]
        ar = F.cross_entropy(ar_logits.reshape(-1, ar_logits.shape[-1]), x["ar_targets"].reshape(-1),
                             ignore_index=-100, reduction="sum")
        n_masked, n_ar = int(masked.sum()), int((x["ar_targets"] != -100).sum())
        numerator = self.alpha * diffusion + self.ar_weight * ar
        grounding, n_cells = torch.zeros(()), sum(f.shape[0] for f in features)
        if self.grounding_weight > 0:
            grounding = grounding_loss(features, x["cell_tokens"], self.model.encoder.embed_tokens.weight)
            # the trainer divides by the token count: scaled so that it adds weight x the mean per image token
            numerator = numerator + self.grounding_weight * grounding * (prepared.count / max(1, n_cells))
        return Terms(numerator, [ar.item(), float(n_ar), diffusion.item(), float(n_masked),
                                 float(prepared.extra["maskable"]), grounding.item(), float(n_cells)])

    def summarize(self, sums):
        out = super().summarize(sums)
        if self.grounding_weight > 0:
            out["grounding_loss"] = sums["grounding_sum"] / max(1.0, sums["n_cells"])
        return out


__all__ = ["VLMJointObjective", "answer_window_mask", "image_embeddings"]
