"""Grounding targets of stage ``vlm``: what each image token shows, in the text model's own token embeddings.

Why: trained from the answers alone, a tiny tower starts from random features that carry nothing the text
model can use, so the text model learns the answer template and to ignore the image before the tower has
learnt anything, and then the tower's gradient is too weak to recover (benchmarks/vlm_training_notes.md).
The generated images know where everything is drawn (:class:`trimode.image_tasks.Region`), so each image
token (a ``cell`` x ``cell`` square of pixels: a 2 x 2 group of 14 px patches) gets a target: the sum of the
input embeddings of the tokens the answer uses for what lies under it. The digit "6" under a token: the
embedding of the token "6"; a red circle: " re" + "d" + " c" + "ir" + "cle"; the part of "cake" that the
tokenizer's " ca" covers: " ca"; white paper: " ". Pulling the projector's output towards these vectors
makes the image tokens informative from the first steps, and makes them look to the text model like the
words it has to copy into the answer.

The loss (:func:`grounding_loss`) is the squared distance to the target relative to the targets' mean squared
norm, averaged over image tokens; the targets come from the embedding table detached (the text model's
rate is low, so they move slowly). It is used in training only; the model and the decoders never see it.
"""

from __future__ import annotations

import torch

from ..image_tasks import ImageTask

MAX_TARGET_TOKENS = 12  # tokens summed into one target: a span's token + a colour (<= 4) + a shape (<= 4)
MIN_COVER = 0.2  # a thing labels a cell when it covers this share of the smaller of the two


def _word_ids(tokenizer, word: str) -> list[int]:
    """The ids of ``word`` as it appears inside an answer (after a space), the whitespace-only ones dropped."""
    ids = tokenizer.encode(" " + word, add_special_tokens=False)
    return [i for i in ids if tokenizer.decode([i]).strip()]


def labelled_boxes(task: ImageTask, tokenizer) -> list[tuple[tuple[float, float, float, float], list[int]]]:
    """(box, token ids) for every drawn thing: a written text split left to right into one box per token (each
    as wide as its characters), each with the ids of the region's names added; a shape or bar: its box and
    names."""
    out = []
    for region in task.regions:
        names = [i for name in region.names for i in _word_ids(tokenizer, name)]
        x0, y0, x1, y1 = region.box
        if not region.text:
            out.append(((x0, y0, x1, y1), names))
            continue
        ids = _word_ids(tokenizer, region.text)
        widths = [len(tokenizer.decode([i]).strip()) for i in ids]
        left, total = float(x0), sum(widths)
        for i, width in zip(ids, widths):
            right = left + (x1 - x0) * width / total
            out.append(((left, y0, right, y1), [i] + names))
            left = right
    return out


def cell_targets(task: ImageTask, tokenizer, image_size: tuple[int, int], cell: int,
                 max_tokens: int = MAX_TARGET_TOKENS) -> torch.Tensor:
    """(rows * cols, max_tokens) long: per image token in reading order (the projector's order), the ids whose
    embeddings sum to its target, -1 padded. ``image_size`` (height, width) is the processed image's; the
    task's boxes are scaled to it. A token covered by nothing gets the space token."""
    height, width = image_size
    sy, sx = height / task.image.height, width / task.image.width
    rows, cols = height // cell, width // cell
    space = tokenizer.encode(" ", add_special_tokens=False)
    boxes = [((x0 * sx, y0 * sy, x1 * sx, y1 * sy), ids) for (x0, y0, x1, y1), ids in labelled_boxes(task, tokenizer)]
    out = torch.full((rows * cols, max_tokens), -1, dtype=torch.long)
    for r in range(rows):
        for c in range(cols):
            best, best_cover = space, 0.0
            for (x0, y0, x1, y1), ids in boxes:
                overlap = (max(0.0, min(x1, (c + 1) * cell) - max(x0, c * cell))
                           * max(0.0, min(y1, (r + 1) * cell) - max(y0, r * cell)))
                cover = overlap / max(1e-9, min(cell * cell, (x1 - x0) * (y1 - y0)))
                if cover >= MIN_COVER and cover > best_cover:
                    best, best_cover = ids, cover
            best = best[:max_tokens]
            out[r * cols + c, :len(best)] = torch.tensor(best)
    return out


def grounding_loss(features: list[torch.Tensor], targets: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Summed relative squared distance of each image token's feature to its target.

    features: one (n_i, hidden) tensor per image (:meth:`get_image_features`); targets: (b, max_cells, K) ids
    from :func:`cell_targets`, row i's first n_i cells used; embeddings: (vocab, hidden), the input embedding
    table (detached here). Returns the sum over image tokens (divide by their number for the mean).
    """
    table = embeddings.detach()
    wanted = torch.cat([targets[i, :f.shape[0]] for i, f in enumerate(features)])  # (N, K)
    present = (wanted >= 0).to(table.dtype)
    target = (table[wanted.clamp(min=0)] * present[..., None]).sum(1)  # (N, hidden)
    feature = torch.cat(features).to(table.dtype)
    scale = target.pow(2).sum(-1).mean().clamp(min=1e-12)
    return ((feature - target).pow(2).sum(-1) / scale).sum()


__all__ = ["MAX_TARGET_TOKENS", "labelled_boxes", "cell_targets", "grounding_loss"]
