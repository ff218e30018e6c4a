"""Data of stage ``vlm``: generated image tasks (:mod:`trimode.image_tasks`) as fixed-shape samples.

Sample ``i`` of a stream is task ``i`` of ``make_tasks(n, seed)`` (the same ``random.Random(f"{seed}:{i}")``
draw), rendered as a chat turn with the model's chat template: ``<user>`` + the image's placeholder ids
(:func:`trimode.image_processing.build_inputs`) + the question + ``<assistant>``, then the reference
answer and EOS, the training target. A sample is a dict of tensors:

- ``input_ids`` (seq_len,): prompt + answer + EOS, right-padded with the pad id;
- ``prompt_length``, ``length`` (): where the answer starts and where the sequence ends;
- ``pixel_values`` (3, S, S): the processed image at the top left of an ``S = max_image_size`` square
  (zeros elsewhere: the tower reads only ``image_sizes``' part), ``image_sizes`` (2,) its (height, width);
- ``task_index`` (): ``i``, so that anything about the sample can be drawn again;
- with ``grounding``, ``cell_tokens`` (C, K): what each image token shows, as token ids
  (:func:`trimode.training.vlm_grounding.cell_targets`), C = the most image tokens an image can have.

Because a sample is a pure function of its index, :class:`IndexBatcher` needs no stream to replay:
global batch ``k`` holds samples ``k * G .. k * G + G - 1`` (modulo ``n_tasks`` when that is set),
and its state is the number of batches consumed, so a resumed run continues exactly.
"""

from __future__ import annotations

import random
from typing import Iterator

import torch

from ..image_processing import ImageProcessor, build_inputs
from ..image_tasks import KINDS, ImageTask, make_task

# Special tokens added to the text model's tokenizer (ids after its vocabulary, in this order), by the
# config field that names each. No start token: an image opens with its first row of placeholders (Pixtral).
IMAGE_TOKENS = {"image_token_id": "<|img|>", "image_break_token_id": "<|img_break|>",
                "image_end_token_id": "<|img_end|>"}


def add_image_tokens(tokenizer) -> dict[str, int]:
    """Add the image special tokens to ``tokenizer`` (in place, idempotent); returns their ids by config field."""
    from tokenizers import AddedToken

    missing = [t for t in IMAGE_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
    return {field: tokenizer.convert_tokens_to_ids(token) for field, token in IMAGE_TOKENS.items()}


def task_at(index: int, seed: int, kinds=None) -> ImageTask:
    """Task ``index`` of ``make_tasks(n, seed, kinds)`` for any ``n > index``, without drawing the others."""
    kinds = tuple(kinds or KINDS)
    return make_task(kinds[index % len(kinds)], random.Random(f"{seed}:{index}"))


def task_messages(task: ImageTask) -> list[dict]:
    """The user turn of ``task``: its image, then its question (what :func:`build_inputs` takes)."""
    return [{"role": "user", "content": [{"type": "image", "image": task.image},
                                         {"type": "text", "text": task.question}]}]


class ImageTaskSamples:
    """Sample ``i`` of the image tasks of one seed (see the module docstring), built on demand."""

    def __init__(self, tokenizer, model_config, seed: int, seq_len: int, kinds=None, n_tasks: int = 0,
                 grounding: bool = False):
        self.tokenizer = tokenizer
        self.config = model_config
        self.processor = ImageProcessor(model_config)
        self.seed = seed
        self.seq_len = seq_len
        self.kinds = tuple(kinds or KINDS)
        self.n_tasks = n_tasks
        self.side = int(model_config.max_image_size)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.grounding = grounding
        self.cell = model_config.vision_config.patch_size * model_config.spatial_merge_size

    def task(self, index: int) -> ImageTask:
        return task_at(index % self.n_tasks if self.n_tasks else index, self.seed, self.kinds)

    def prompt(self, task: ImageTask) -> dict:
        """``build_inputs`` of the task's user turn: prompt ids (ending with the assistant tag) and image inputs."""
        return build_inputs(self.tokenizer, task_messages(task), self.config, self.processor)

    def answer_ids(self, task: ImageTask) -> list[int]:
        return self.tokenizer.encode(task.answer, add_special_tokens=False) + [self.tokenizer.eos_token_id]

    def __call__(self, index: int, pixels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Sample ``index``; ``pixels``: a zero (3, S, S) tensor to draw its image into (else a new one)."""
        task = self.task(index)
        inputs = self.prompt(task)
        prompt, answer = inputs["input_ids"], self.answer_ids(task)
        if len(prompt) + len(answer) > self.seq_len:
            raise ValueError(f"image task {index} ({task.kind}) takes {len(prompt)} prompt + {len(answer)} answer "
                             f"tokens, more than seq_len={self.seq_len}: raise seq_len")
        ids = torch.full((self.seq_len,), self.pad, dtype=torch.long)
        ids[:len(prompt) + len(answer)] = torch.tensor(prompt + answer)
        sample = {"input_ids": ids, "prompt_length": torch.tensor(len(prompt)),
                  "length": torch.tensor(len(prompt) + len(answer)),
                  **self.padded_image(inputs["pixel_values"][0], inputs["image_sizes"][0], pixels),
                  "task_index": torch.tensor(index)}
        if self.grounding:
            sample["cell_tokens"] = self.cell_tokens(task, inputs["image_sizes"][0])
        return sample

    def cell_tokens(self, task: ImageTask, size: torch.Tensor) -> torch.Tensor:
        """(C, K) ids of what each image token of ``task`` shows, -1 past its last image token."""
        from .vlm_grounding import MAX_TARGET_TOKENS, cell_targets

        targets = cell_targets(task, self.tokenizer, tuple(int(v) for v in size), self.cell)
        out = torch.full(((self.side // self.cell) ** 2, MAX_TARGET_TOKENS), -1, dtype=torch.long)
        out[:targets.shape[0]] = targets
        return out

    def padded_image(self, pixels: torch.Tensor, size: torch.Tensor,
                     square: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The image at the top left of a zero ``max_image_size`` square (``square``, else a new one), so that
        every sample stacks."""
        square = torch.zeros(3, self.side, self.side) if square is None else square
        h, w = (int(v) for v in size)
        square[:, :h, :w] = pixels[:, :h, :w]
        return {"pixel_values": square, "image_sizes": size.long()}

    def batch(self, indices) -> dict[str, torch.Tensor]:
        indices = [int(i) for i in indices]
        # One allocation for the batch's pixels (a fresh tensor per image, then a stack, cost more than the
        # processing itself: each large allocation is new pages to fault in).
        pixels = torch.zeros(len(indices), 3, self.side, self.side)
        samples = [self(i, pixels[r]) for r, i in enumerate(indices)]
        out = {k: torch.stack([s[k] for s in samples]) for k in samples[0] if k != "pixel_values"}
        return {**out, "pixel_values": pixels}


class IndexBatcher:
    """Global batches of samples by index (``sample(i)`` for the next ``batch_size`` indices); resumable.

    The trainer's batcher protocol: iterate for batches, ``state_dict`` / ``load_state_dict`` for the
    position (the number of batches already yielded).
    """

    def __init__(self, samples: ImageTaskSamples, batch_size: int):
        self.samples = samples
        self.batch_size = batch_size
        self.batches_consumed = 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            first = self.batches_consumed * self.batch_size
            self.batches_consumed += 1  # counted when yielded: a checkpoint after the step resumes with the next
            yield self.samples.batch(range(first, first + self.batch_size))

    def state_dict(self) -> dict[str, int]:
        return {"batches_consumed": self.batches_consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batches_consumed = int(state["batches_consumed"])


def eval_batches(samples: ImageTaskSamples, n_batches: int, batch_size: int) -> list[dict[str, torch.Tensor]]:
    """The first ``n_batches`` global batches of a held-out stream (fixed: evaluations compare)."""
    return [samples.batch(range(k * batch_size, (k + 1) * batch_size)) for k in range(n_batches)]


__all__ = ["IMAGE_TOKENS", "add_image_tokens", "task_at", "task_messages", "ImageTaskSamples", "IndexBatcher",
           "eval_batches"]
