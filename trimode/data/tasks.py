"""Checkable instruction -> answer tasks for SFT and for evaluating decoding modes.

Every task has one exactly-correct answer text, so accuracy of AR, diffusion and
self-speculative decoding can be compared by exact match, and answers are tens
of tokens long so decoding speed differences are measurable.

Families (all generated from seeded pseudo-random data, no external files):

* ``add``       -- multi-digit addition worked column by column with carries,
                   ending in ``answer: N``.
* ``mul``       -- long multiplication: one partial product per non-zero digit
                   of the multiplier, their sum, then ``answer: N``.
* ``sort``      -- sort 10-30 integers or random words, ascending or descending.
* ``transform`` -- reverse a list, uppercase words, add k to each number, or
                   remove duplicates keeping first occurrences.
* ``json``      -- build a JSON object from ``key=value`` pairs (``json.dumps``).
* ``count``     -- count letters of a string, reported alphabetically.
* ``repeat``    -- repeat a list of 10-20 words or numbers exactly (pure copying:
                   it teaches a small model the induction mechanism the other
                   families build on).
* ``enumerate`` -- number the items of a list of 10-16 words or numbers, one per
                   line (``1. first``), from 1 or from a given start.

Design choices:

* Determinism: each family draws from its own ``random.Random(f"{seed}:{family}")``
  (never the global RNG), so a family's tasks do not change when other
  families are added to or removed from the mix. Families are interleaved
  round-robin, giving balanced counts; a family listed k times gets k turns
  per round (a weighted mix, e.g. more of an easy family early in training).
* Splits never overlap: whether a task is train or held-out is a pure function
  of its canonical content, ``sha256(family, prompt)``, independent of the seed.
  Generating split S draws candidates and keeps only those hashing into S
  (rejection sampling). Tasks are deduplicated by id within one generation run.
* Scoring is exact match: `score` returns 1.0 iff the normalised output equals
  ``task.answer`` character for character, else 0.0. Normalisation only cuts
  the output at the first EOS/PAD token string and strips surrounding
  whitespace; the worked steps must therefore be right too, not just the final
  line. This is the strictest and simplest rule, and it is what makes the
  long answers matter for comparing decoding modes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from trimode.tokenization import ASSISTANT_TOKEN, EOS_TOKEN, PAD_TOKEN, SYSTEM_TOKEN, USER_TOKEN

SPLITS = ("train", "heldout")
# Fraction of the task space that is held out. Fixed (not a parameter) so that
# every caller agrees on the split and disjointness cannot be broken by accident.
HELDOUT_FRACTION = 0.1
_SPLIT_SALT = "trimode-tasks-v1"
# Rejection sampling bound per task: with HELDOUT_FRACTION=0.1 about 10 draws are
# needed on average; hitting this means the family's task space is exhausted.
_MAX_DRAWS_PER_TASK = 10_000


@dataclass(frozen=True)
class Task:
    family: str
    prompt: str
    answer: str
    id: str


# ---------------------------------------------------------------- helpers

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random) -> str:
    """A random lowercase string of 3-7 letters (no word list needed).

    A large inventory on purpose: the items of one list then tokenize to mostly distinct
    tokens, and one-token matching is enough to copy them. A small model did not learn to
    copy pronounceable pseudo-words built from 70 syllables, whose tokens repeat within a
    list (see models/trimode-tiny/README.md, "How the recipe was found")."""
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 7)))


def _join(items: Sequence[object]) -> str:
    return ", ".join(str(x) for x in items)


# ---------------------------------------------------------------- families
# Each generator returns (prompt, answer) using only `rng`.


def _gen_add(rng: random.Random) -> tuple[str, str]:
    na = rng.randint(3, 7)
    nb = rng.randint(2, na)
    a = rng.randint(10 ** (na - 1), 10**na - 1)
    b = rng.randint(10 ** (nb - 1), 10**nb - 1)
    da, db = str(a)[::-1], str(b)[::-1]
    lines, carry = [], 0
    for i in range(na):
        x, y = int(da[i]), (int(db[i]) if i < nb else 0)
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s} write {s % 10} carry {s // 10}")
        carry = s // 10
    lines.append(f"answer: {a + b}")
    prompt = f"Add {a} and {b}. Work column by column from the right, writing each digit and carry."
    return prompt, "\n".join(lines)


def _gen_mul(rng: random.Random) -> tuple[str, str]:
    a = rng.randint(1_000, 99_999)
    b = rng.randint(11, 999)
    while sum(d != "0" for d in str(b)) < 2:  # >= 2 partial products, so the sum step exists
        b = rng.randint(11, 999)
    partials = []
    for k, d in enumerate(reversed(str(b))):
        if d != "0":  # zero digits contribute nothing; skipping keeps answers short
            m = int(d) * 10**k
            partials.append((m, a * m))
    lines = [f"{a}*{m}={p}" for m, p in partials]
    if len(partials) > 1:
        lines.append("+".join(str(p) for _, p in partials) + f"={a * b}")
    lines.append(f"answer: {a * b}")
    prompt = f"Multiply {a} by {b}. Write one partial product per digit of {b}, then their sum."
    return prompt, "\n".join(lines)


def _gen_sort(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(10, 30)
    descending = rng.random() < 0.5
    if rng.random() < 0.5:
        items: list = [rng.randint(0, 999) for _ in range(n)]
        what, order = "numbers", "descending" if descending else "ascending"
    else:
        items = [_word(rng) for _ in range(n)]
        what, order = "words", "reverse alphabetical" if descending else "alphabetical"
    prompt = f"Sort these {what} in {order} order: {_join(items)}"
    return prompt, _join(sorted(items, reverse=descending))


def _gen_transform(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(10, 25)
    op = rng.choice(("reverse", "upper", "add", "dedupe"))
    if op == "reverse":
        items = _list_items(rng, n, numbers=0.5)
        return f"Reverse the order of this list: {_join(items)}", _join(items[::-1])
    if op == "upper":
        words = [_word(rng) for _ in range(n)]
        return f"Rewrite each word in uppercase: {_join(words)}", _join(w.upper() for w in words)
    if op == "add":
        k = rng.randint(1, 99)
        nums = [rng.randint(0, 999) for _ in range(n)]
        return f"Add {k} to each number: {_join(nums)}", _join(x + k for x in nums)
    # dedupe: 10-18 distinct numbers plus repeats of them, shuffled, so there
    # are always duplicates and the answer keeps a useful length
    uniques = rng.sample(range(1000), rng.randint(10, 18))
    items = uniques + [rng.choice(uniques) for _ in range(rng.randint(3, len(uniques)))]
    rng.shuffle(items)
    return (
        f"Remove duplicates from this list, keeping the first occurrence of each item: {_join(items)}",
        _join(dict.fromkeys(items)),
    )


def _gen_json(rng: random.Random) -> tuple[str, str]:
    n = rng.randint(4, 8)
    obj: dict[str, object] = {}
    while len(obj) < n:  # distinct keys
        obj.setdefault(_word(rng), rng.randint(0, 9999) if rng.random() < 0.5 else _word(rng))
    pairs = "; ".join(f"{k}={v}" for k, v in obj.items())
    prompt = (
        "Write a JSON object with these fields in this order, numbers as JSON numbers "
        f"and everything else as strings: {pairs}"
    )
    return prompt, json.dumps(obj)


def _gen_count(rng: random.Random) -> tuple[str, str]:
    letters = rng.sample("abcdefghijklmnopqrstuvwxyz", rng.randint(8, 14))
    s = "".join(rng.choice(letters) for _ in range(rng.randint(30, 50)))
    counts = {c: s.count(c) for c in sorted(set(s))}
    prompt = (
        f"Count how many times each letter occurs in {s}. "
        "List the letters alphabetically as letter=count, separated by commas."
    )
    return prompt, ", ".join(f"{c}={k}" for c, k in counts.items())


def _list_items(rng: random.Random, n: int, numbers: float) -> list:
    """``n`` integers 0-999 (with probability ``numbers``) or random words (:func:`_word`)."""
    return [rng.randint(0, 999) for _ in range(n)] if rng.random() < numbers else [_word(rng) for _ in range(n)]


def _gen_repeat(rng: random.Random) -> tuple[str, str]:
    items = _list_items(rng, rng.randint(10, 20), numbers=0.3)
    return f"Repeat this list exactly: {_join(items)}", _join(items)


def _gen_enumerate(rng: random.Random) -> tuple[str, str]:
    # at most 16 items keep prompt + answer within a 256-token training sequence
    items = _list_items(rng, rng.randint(10, 16), numbers=0.3)
    start = 1 if rng.random() < 0.5 else rng.randint(2, 50)
    where = "" if start == 1 else f", starting at {start}"
    prompt = f"Number these items one per line{where}: {_join(items)}"
    return prompt, "\n".join(f"{start + i}. {x}" for i, x in enumerate(items))


FAMILIES: dict[str, Callable[[random.Random], tuple[str, str]]] = {
    "add": _gen_add,
    "mul": _gen_mul,
    "sort": _gen_sort,
    "transform": _gen_transform,
    "json": _gen_json,
    "count": _gen_count,
    "enumerate": _gen_enumerate,
    "repeat": _gen_repeat,
}


# ---------------------------------------------------------------- splits & generation


def _content_hash(family: str, prompt: str) -> bytes:
    return hashlib.sha256(f"{_SPLIT_SALT}\x00{family}\x00{prompt}".encode()).digest()


def task_split(family: str, prompt: str) -> str:
    """"train" or "heldout": a pure function of the task's content."""
    u = int.from_bytes(_content_hash(family, prompt)[:8], "big") / 2**64
    return "heldout" if u < HELDOUT_FRACTION else "train"


def _check_args(split: str, families: Sequence[str] | None) -> list[str]:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    fams = list(FAMILIES) if families is None else list(families)
    if not fams:
        raise ValueError("families must be None (all) or a non-empty list")
    for f in fams:
        if f not in FAMILIES:
            raise ValueError(f"unknown task family {f!r}; allowed: {', '.join(FAMILIES)}")
    return fams


def iter_tasks(split: str, seed: int, families: Sequence[str] | None = None) -> Iterator[Task]:
    """Endless deterministic stream of unique tasks from `split`, families round-robin."""
    fams = _check_args(split, families)
    rngs = {f: random.Random(f"{seed}:{f}") for f in fams}
    seen: set[str] = set()
    for fam in itertools.cycle(fams):
        for _ in range(_MAX_DRAWS_PER_TASK):
            prompt, answer = FAMILIES[fam](rngs[fam])
            digest = _content_hash(fam, prompt)
            tid = f"{fam}-{digest[:6].hex()}"
            if task_split(fam, prompt) == split and tid not in seen:
                seen.add(tid)
                yield Task(family=fam, prompt=prompt, answer=answer, id=tid)
                break
        else:
            raise RuntimeError(f"could not draw a new unique {split} task for family {fam!r}; task space exhausted")


def generate_tasks(split: str, n: int, seed: int, families: Sequence[str] | None = None) -> list[Task]:
    """First `n` tasks of `iter_tasks(split, seed, families)`."""
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    _check_args(split, families)  # validate eagerly even when n == 0
    return list(itertools.islice(iter_tasks(split, seed, families), n))


# ---------------------------------------------------------------- prompting & scoring


def task_messages(task: Task, with_answer: bool = False, system: str | None = None) -> list[dict[str, str]]:
    """Chat messages for the tokenizer's chat template (answer included for SFT)."""
    msgs = [] if system is None else [{"role": "system", "content": system}]
    msgs.append({"role": "user", "content": task.prompt})
    if with_answer:
        msgs.append({"role": "assistant", "content": task.answer})
    return msgs


def format_prompt(task: Task, system: str | None = None) -> str:
    """The generation prompt exactly as the chat template renders it with
    ``add_generation_prompt=True`` (duplicated here so no tokenizer is needed)."""
    return format_user_turn(task.prompt, system)


def format_user_turn(text: str, system: str | None = None) -> str:
    """A user turn ready for the assistant's answer, in trimode's chat format."""
    head = "" if system is None else f"{SYSTEM_TOKEN}{system}"
    return f"{head}{USER_TOKEN}{text}{ASSISTANT_TOKEN}"


def sft_example(task: Task, tokenizer, system: str | None = None) -> tuple[list[int], list[int]]:
    """(prompt_ids, response_ids) for `pack_sft_examples`; EOS is added by the packer.

    The prompt ends with the ``<|assistant|>`` special token, so encoding the two
    parts separately gives the same ids as encoding the rendered chat.
    """
    prompt_ids = tokenizer.encode(format_prompt(task, system), add_special_tokens=False)
    response_ids = tokenizer.encode(task.answer, add_special_tokens=False, split_special_tokens=True)
    return prompt_ids, response_ids


def normalize_output(text: str) -> str:
    """Cut at the first EOS/PAD token string, then strip surrounding whitespace."""
    for stop in (EOS_TOKEN, PAD_TOKEN):
        text = text.split(stop, 1)[0]
    return text.strip()


def score(task: Task, output_text: str) -> float:
    """1.0 iff the normalised output equals the expected answer exactly, else 0.0."""
    return 1.0 if normalize_output(output_text) == task.answer else 0.0
