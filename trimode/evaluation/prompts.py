"""Fixed, seeded prompt sets for evaluation and benchmarks.

Two kinds, as users run the model:

- ``tasks``: held-out checkable tasks (:mod:`trimode.data.tasks`), rendered with
  the chat format; every prompt carries its :class:`~trimode.data.tasks.Task`
  so outputs can be scored (exact match).
- ``code``: held-out stdlib files (:class:`~trimode.data.corpus.CodeCorpus`),
  the first ``prompt_tokens`` tokens of each as a completion prompt.

Design choices:

- Determinism: task sets come from ``generate_tasks("heldout", n, seed)``; code
  sets take, from the first ``4 * n`` usable held-out files in the corpus'
  sorted order, a ``random.Random(seed)`` sample (kept in corpus order). Same
  seed, same prompts, on every machine with the same Python stdlib.
- Code is encoded with ``split_special_tokens=True`` (raw text: a literal
  ``<|eos|>`` in a file is bytes, not EOS); task prompts are the chat render and
  keep their special tokens.
- Files shorter than ``prompt_tokens`` tokens are skipped, so every code prompt
  has the same length and timings compare across files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

PROMPT_SETS = ("tasks", "code")


@dataclass
class PromptSet:
    """Prompts as token-id lists, with a label per prompt and, for tasks, the task to score against."""

    name: str
    prompts: list[list[int]]
    labels: list[str]
    tasks: list | None = None  # list[Task] for the task set
    description: str = ""
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.prompts)

    def head(self, n: int) -> "PromptSet":
        """The first ``n`` prompts (sweeps use fewer prompts than the main table)."""
        return PromptSet(self.name, self.prompts[:n], self.labels[:n],
                         None if self.tasks is None else self.tasks[:n], self.description, dict(self.meta))


def task_prompt_set(tokenizer, n: int, seed: int = 0, families: list[str] | None = None) -> PromptSet:
    """``n`` held-out tasks (families round-robin), chat-rendered and encoded."""
    from ..data.tasks import format_prompt, generate_tasks

    if n < 1:
        raise ValueError(f"number of task prompts n={n} must be >= 1")
    tasks = generate_tasks("heldout", n, seed, families=families)
    prompts = [tokenizer.encode(format_prompt(t), add_special_tokens=False) for t in tasks]
    fams = sorted({t.family for t in tasks})
    return PromptSet("tasks", prompts, [t.id for t in tasks], tasks,
                     f"{n} held-out checkable tasks (seed {seed}; families {', '.join(fams)})",
                     {"seed": seed, "families": fams})


def code_prompt_set(tokenizer, n: int, seed: int = 0, prompt_tokens: int = 64) -> PromptSet:
    """``n`` held-out stdlib files, the first ``prompt_tokens`` tokens of each."""
    from ..data.corpus import CodeCorpus

    if n < 1:
        raise ValueError(f"number of code prompts n={n} must be >= 1")
    if prompt_tokens < 1:
        raise ValueError(f"code prompt_tokens={prompt_tokens} must be >= 1")
    pool: list[tuple[str, list[int]]] = []
    for relpath, text in CodeCorpus(split="heldout"):
        # ~8 characters per token is generous for any BPE on code; avoids encoding whole files.
        ids = tokenizer.encode(text[: prompt_tokens * 8], add_special_tokens=False, split_special_tokens=True)
        if len(ids) >= prompt_tokens:
            pool.append((relpath, ids[:prompt_tokens]))
        if len(pool) >= 4 * n:
            break
    if len(pool) < n:
        raise ValueError(f"only {len(pool)} held-out code files have {prompt_tokens} tokens; asked for {n}")
    picked = sorted(random.Random(seed).sample(range(len(pool)), n))
    return PromptSet("code", [pool[i][1] for i in picked], [pool[i][0] for i in picked], None,
                     f"{n} held-out stdlib file prefixes of {prompt_tokens} tokens (seed {seed})",
                     {"seed": seed, "prompt_tokens": prompt_tokens})


def build_prompt_set(name: str, tokenizer, n: int, seed: int = 0, code_prompt_tokens: int = 64,
                     families: list[str] | None = None) -> PromptSet:
    if name == "tasks":
        return task_prompt_set(tokenizer, n, seed, families)
    if name == "code":
        return code_prompt_set(tokenizer, n, seed, code_prompt_tokens)
    raise ValueError(f"prompt set {name!r} is not one of {', '.join(PROMPT_SETS)}")
