"""Streaming packing of token streams into fixed-length training sequences,
plus a deterministic, resumable batcher.

Design choices:

* `pack_documents` (pre-training): documents are concatenated, each followed by
  EOS, and cut into non-overlapping ``(seq_len,)`` chunks; documents may span
  chunk boundaries. Chunks do not overlap because the model shifts labels
  internally. Empty documents are skipped (they would only add stray EOS
  tokens) and the incomplete tail is dropped so every chunk is full. Memory is
  bounded by one chunk plus one document.
* `pack_sft_examples` (instruction tuning): ``prompt + response + EOS`` examples
  are packed greedily in arrival order; an example is never split across
  sequences. When the next example does not fit, the current sequence is
  padded and emitted. Examples longer than ``seq_len`` are *skipped*, not
  truncated: a truncated answer without its EOS would teach the model to stop
  mid-answer (or never stop). ``loss_mask`` marks *target* tokens: 1 on
  response tokens and their EOS, 0 on prompt tokens and padding. Examples in a
  sequence can attend to each other; no segment ids are produced.
* `Batcher`: shuffles with a bounded buffer seeded by ``(seed, epoch)`` and
  drops each epoch's incomplete last batch (fixed shapes). Its state is
  ``(epoch, batch_in_epoch)``; resuming re-creates the epoch's sequence
  iterator via the factory and skips the already-consumed batches of that
  epoch (without collating them). This is exact as long as the factory is
  deterministic, and costs re-reading/tokenising only the current epoch prefix.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch


def _check_seq_len(seq_len: int) -> None:
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len={seq_len!r} must be an int >= 2")


def pack_documents(token_iter: Iterable[Sequence[int]], seq_len: int, eos_id: int) -> Iterator[torch.LongTensor]:
    """Concatenate ``doc + [eos_id]`` for each non-empty document and yield full
    ``(seq_len,)`` chunks; the final incomplete chunk is dropped."""
    _check_seq_len(seq_len)
    buf: list[int] = []
    for doc in token_iter:
        if len(doc) == 0:
            continue
        buf.extend(doc)
        buf.append(eos_id)
        start = 0  # slice by offset so a long document costs O(len), not O(len^2)
        while len(buf) - start >= seq_len:
            yield torch.tensor(buf[start : start + seq_len], dtype=torch.long)
            start += seq_len
        buf = buf[start:]


def pack_sft_examples(
    examples: Iterable[tuple[Sequence[int], Sequence[int]]],
    seq_len: int,
    pad_id: int,
    eos_id: int,
    stats: dict[str, int] | None = None,
) -> Iterator[tuple[torch.LongTensor, torch.LongTensor]]:
    """Pack ``(prompt_ids, response_ids)`` pairs into ``(input_ids, loss_mask)``
    pairs of shape ``(seq_len,)``; EOS is appended to each response.

    If `stats` is given it is updated with counts under "examples", "skipped"
    (longer than seq_len) and "sequences".
    """
    _check_seq_len(seq_len)
    if stats is not None:
        for k in ("examples", "skipped", "sequences"):
            stats.setdefault(k, 0)
    ids: list[int] = []
    mask: list[int] = []

    def flush() -> tuple[torch.LongTensor, torch.LongTensor]:
        pad = seq_len - len(ids)
        out = (
            torch.tensor(ids + [pad_id] * pad, dtype=torch.long),
            torch.tensor(mask + [0] * pad, dtype=torch.long),
        )
        ids.clear()
        mask.clear()
        if stats is not None:
            stats["sequences"] += 1
        return out

    for prompt, response in examples:
        n = len(prompt) + len(response) + 1
        if n > seq_len:
            if stats is not None:
                stats["skipped"] += 1
            continue
        if len(ids) + n > seq_len:
            yield flush()
        ids.extend(prompt)
        ids.extend(response)
        ids.append(eos_id)
        mask.extend([0] * len(prompt) + [1] * (len(response) + 1))
        if stats is not None:
            stats["examples"] += 1
    if ids:
        yield flush()


def _collate(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, (tuple, list)):
        return tuple(_collate([it[i] for it in items]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _collate([it[k] for it in items]) for k in first}
    raise TypeError(f"cannot batch items of type {type(first).__name__}; expected Tensor, tuple/list or dict of Tensors")


class Batcher:
    """Deterministic, resumable batches over a re-creatable sequence stream.

    `sequence_iter_factory()` must return a fresh iterable that yields the same
    items (tensors, tuples or dicts of tensors) every time it is called.
    Iterating yields stacked batches; the state counts a batch as consumed as
    soon as it is yielded, so a checkpoint taken after the optimiser step on a
    batch resumes with the next one. `epochs=None` repeats forever.
    """

    def __init__(
        self,
        sequence_iter_factory: Callable[[], Iterable[Any]],
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 256,
        epochs: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer={shuffle_buffer} must be >= 0 (0 or 1 disables shuffling)")
        if epochs is not None and epochs < 1:
            raise ValueError(f"epochs={epochs} must be None (repeat forever) or >= 1")
        self.factory = sequence_iter_factory
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.epochs = epochs
        self.epoch = 0
        self.batch_in_epoch = 0
        self.batches_consumed = 0

    def _shuffled(self, epoch: int) -> Iterator[Any]:
        items = iter(self.factory())
        if self.shuffle_buffer <= 1:
            yield from items
            return
        rng = random.Random(f"{self.seed}:{epoch}")  # per-epoch order, independent of resume point
        buf: list[Any] = []
        for item in items:
            if len(buf) < self.shuffle_buffer:
                buf.append(item)
                continue
            j = rng.randrange(len(buf))
            yield buf[j]
            buf[j] = item
        rng.shuffle(buf)
        yield from buf

    def _raw_batches(self, epoch: int) -> Iterator[list[Any]]:
        batch: list[Any] = []
        for item in self._shuffled(epoch):
            batch.append(item)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        # incomplete last batch dropped: keeps tensor shapes fixed

    def __iter__(self) -> Iterator[Any]:
        while self.epochs is None or self.epoch < self.epochs:
            skip = self.batch_in_epoch
            n_batches = 0
            for i, raw in enumerate(self._raw_batches(self.epoch)):
                n_batches = i + 1
                if i < skip:
                    continue
                self.batch_in_epoch = i + 1
                self.batches_consumed += 1
                yield _collate(raw)
            if n_batches < skip:
                raise RuntimeError(
                    f"resumed at batch {skip} of epoch {self.epoch} but the data only has {n_batches} "
                    "batches; the sequence stream changed since the checkpoint"
                )
            if n_batches == 0:
                raise ValueError(f"sequence stream yielded fewer than batch_size={self.batch_size} items")
            self.epoch += 1
            self.batch_in_epoch = 0

    def state_dict(self) -> dict[str, int]:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "batches_consumed": self.batches_consumed,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "shuffle_buffer": self.shuffle_buffer,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        # A different seed/batch size/buffer would silently yield other batches.
        for key in ("seed", "batch_size", "shuffle_buffer"):
            if state[key] != getattr(self, key):
                raise ValueError(f"cannot resume: checkpoint has {key}={state[key]}, this Batcher has {getattr(self, key)}")
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.batches_consumed = int(state["batches_consumed"])
