"""Training data of each stage, as deterministic re-creatable streams of fixed-shape samples.

- ``ar`` / ``joint``: :func:`pretraining_sequences`: stdlib code files and task texts
  (rendered with the chat template, so the AR model learns both and SFT starts from a
  model that has seen the format), interleaved by *token* share (``task_fraction``),
  packed into ``(seq_len,)`` chunks with EOS between documents. One epoch = one pass over
  the code corpus. ``copy_windows`` appends windows of each training file written twice,
  which only copying can predict (:func:`with_copy_windows`).
- ``sft``: :func:`sft_sequences`: task ``(prompt, response)`` pairs, packed with a loss
  mask on the response tokens only, plus a ``code_replay`` share of code sequences.
- The batcher yields *global* batches (``micro_batch * grad_accum * world_size`` samples);
  each process slices its own rows (:func:`local_rows`), so the sample order is the same
  for any number of processes.
- Every random draw of the objectives uses a generator seeded by :func:`sample_seed`
  from (seed, purpose, step, global sample index): identical for 1 or N processes and
  after a resume, with no RNG state to carry.

Samples are dicts of tensors: ``input_ids`` (L,) and, for SFT, ``loss_mask`` (L,).
"""

from __future__ import annotations

import hashlib
import itertools
from typing import Callable, Iterable, Iterator

import torch

from ..data.corpus import CodeCorpus
from ..data.packing import Batcher, pack_documents, pack_sft_examples
from ..data.tasks import iter_tasks, sft_example
from .config import MAX_COPY_WINDOWS, TrainConfig

# Offsets that keep the task streams of different uses apart (same split, other tasks).
PRETRAIN_TASK_SEED = 1
DRAFTER_TASK_SEED = 2


def sample_seed(seed: int, purpose: str, step: int, index: int) -> int:
    """A 63-bit seed that depends only on its arguments (stable across processes and runs)."""
    digest = hashlib.sha256(f"{seed}:{purpose}:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def generator_for(seed: int, purpose: str, step: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, purpose, step, index))


def families(cfg: TrainConfig) -> list[str] | None:
    return list(cfg.task_families) or None


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_code(tokenizer, text: str) -> list[int]:
    # Corpus text is untrusted: special-token strings in it are plain bytes, not specials.
    return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True)


def code_documents(tokenizer, cfg: TrainConfig, split: str) -> Iterator[list[int]]:
    """The stdlib files of ``split``, tokenized."""
    # max_files trims the training corpus; held-out evaluation reads the whole held-out split
    # (about 2% of the files, streamed lazily) so a small max_files still has held-out code.
    max_files = cfg.max_files if split == "train" else None
    return (encode_code(tokenizer, text) for text in CodeCorpus(split, max_files=max_files).texts())


def copy_window(doc: list[int], seq_len: int, seed: int, index: int) -> list[int]:
    """A window of ``doc`` written twice, ``w + w`` with ``len(w) <= seq_len // 4``: the second
    copy is predictable only by copying the first, and most of the time both copies land in
    the same packed sequence."""
    width = min(len(doc), seq_len // 4)
    start = sample_seed(seed, "copy-window-start", 0, index) % (len(doc) - width + 1)
    window = doc[start:start + width]
    return window + window


def with_copy_windows(docs: Iterator[list[int]], cfg: TrainConfig) -> Iterator[list[int]]:
    """``docs``, each followed by ``cfg.copy_windows`` of its :func:`copy_window` on average
    (the integer part always, the fraction as a deterministic draw per document)."""
    whole, frac = int(cfg.copy_windows), cfg.copy_windows % 1
    for i, doc in enumerate(docs):
        yield doc
        if not doc:
            continue
        n = whole + (sample_seed(cfg.seed, "copy-windows", 0, i) < frac * 2**63)
        for k in range(n):
            yield copy_window(doc, cfg.seq_len, cfg.seed, i * MAX_COPY_WINDOWS + k)


def pretraining_documents(tokenizer, cfg: TrainConfig, split: str) -> Iterator[list[int]]:
    """Code files (plus their copy windows on the train split, ``copy_windows``) and
    chat-rendered tasks, interleaved so tasks make ``task_fraction`` of the tokens."""
    code = code_documents(tokenizer, cfg, split)
    if split == "train":  # held-out loss stays comparable across copy_windows settings
        code = with_copy_windows(code, cfg)
    tasks = iter_tasks(split, cfg.seed + PRETRAIN_TASK_SEED, families(cfg))
    frac = cfg.task_fraction
    if frac >= 1.0:  # tasks only: an epoch is n_tasks tasks
        for task in itertools.islice(tasks, cfg.n_tasks):
            prompt, response = sft_example(task, tokenizer)
            yield prompt + response
        return
    n_code = n_task = 0
    for doc in code:
        yield doc
        n_code += len(doc)
        # Top up with tasks until they hold their share of the tokens emitted so far.
        while frac > 0 and n_task < frac * (n_code + n_task):
            prompt, response = sft_example(next(tasks), tokenizer)
            yield prompt + response
            n_task += len(prompt) + len(response)
    if n_code == 0 and frac > 0:  # no code in this split: tasks only, as for task_fraction=1
        for task in itertools.islice(tasks, cfg.n_tasks):
            prompt, response = sft_example(task, tokenizer)
            yield prompt + response


def pretraining_sequences(tokenizer, cfg: TrainConfig, split: str = "train") -> Iterator[dict[str, torch.Tensor]]:
    for chunk in pack_documents(pretraining_documents(tokenizer, cfg, split), cfg.seq_len, tokenizer.eos_token_id):
        yield {"input_ids": chunk}


def sft_sequences(tokenizer, cfg: TrainConfig, split: str = "train",
                  n_tasks: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Packed task examples (loss on responses), with ``code_replay`` of the sequences being
    code (loss on every token) so that SFT does not erase what pretraining learned."""
    tasks = itertools.islice(iter_tasks(split, cfg.seed, families(cfg)), n_tasks or cfg.n_tasks)
    examples = (sft_example(t, tokenizer) for t in tasks)
    code = pack_documents(code_documents(tokenizer, cfg, split), cfg.seq_len, tokenizer.eos_token_id) \
        if cfg.code_replay > 0 else iter(())
    n_task = n_code = 0
    for ids, mask in pack_sft_examples(examples, cfg.seq_len, pad_id(tokenizer), tokenizer.eos_token_id):
        yield {"input_ids": ids, "loss_mask": mask}
        n_task += 1
        # Top up with code until it holds its share of the sequences emitted so far
        # (code_replay < 1 is validated, so this ends; an exhausted corpus ends replay).
        while n_code < cfg.code_replay * (n_task + n_code):
            chunk = next(code, None)
            if chunk is None:
                break
            yield {"input_ids": chunk, "loss_mask": torch.ones_like(chunk)}
            n_code += 1


def global_batch_size(cfg: TrainConfig, world_size: int) -> int:
    return cfg.micro_batch * cfg.grad_accum * world_size


def make_batcher(factory: Callable[[], Iterable], cfg: TrainConfig, world_size: int) -> Batcher:
    """Global batches of the stream; the same on every process (each slices its own rows)."""
    return Batcher(factory, global_batch_size(cfg, world_size), seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer)


def local_rows(batch: dict[str, torch.Tensor], rank: int, world_size: int) -> tuple[dict[str, torch.Tensor], int]:
    """This process's contiguous slice of a global batch, and the global index of its first row."""
    n = next(iter(batch.values())).shape[0]
    per = n // world_size
    lo = rank * per
    return {k: v[lo:lo + per] for k, v in batch.items()}, lo


def micro_batches(batch: dict[str, torch.Tensor], first_index: int,
                  micro: int) -> list[tuple[dict[str, torch.Tensor], int]]:
    """Split a local batch into ``(micro-batch, global index of its first row)`` pieces."""
    n = next(iter(batch.values())).shape[0]
    return [({k: v[i:i + micro] for k, v in batch.items()}, first_index + i) for i in range(0, n, micro)]


def fixed_batches(stream: Iterable[dict[str, torch.Tensor]], n_batches: int, batch_size: int,
                  what: str) -> list[dict[str, torch.Tensor]]:
    """The first ``n_batches`` global batches of ``stream`` (held-out evaluation: no shuffling)."""
    items = list(itertools.islice(stream, n_batches * batch_size))
    if len(items) < batch_size * n_batches:
        raise ValueError(f"the held-out {what} data yields {len(items)} sequences, fewer than eval_batches="
                         f"{n_batches} x global batch {batch_size}; lower eval_batches or seq_len")
    return [{k: torch.stack([it[k] for it in items[i:i + batch_size]]) for k in items[0]}
            for i in range(0, len(items), batch_size)]
