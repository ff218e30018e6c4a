"""Chat-style instructions built offline, for self-distilling a converted chat model's drafter.

A drafter learns what its base model says; to accelerate chat traffic it must see chat
prompts. No instruction dataset is on every machine, so the instructions are made from
what is:

* **Standard-library instructions**: every public function and class of the stdlib code
  corpus (:class:`~trimode.data.corpus.CodeCorpus`) that has a docstring gives questions
  about it ("Explain what ``textwrap.dedent`` does.", "Write a short example that uses
  ...", "Write a Python function that <first docstring line>"). The split follows the
  corpus's file split, so a held-out file's names never appear in training.
* **General instructions**: templates ("Write a short poem about {x}.", "Give me three tips
  for {x}.", ...) filled from word lists owned here. Each instruction is held out iff a
  hash of its text falls in the held-out share (a pure function of the text, as for tasks).

Only prompts come from here; the responses a drafter learns from are the base model's own
greedy continuations (:mod:`trimode.training.drafter`).
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import random
from typing import Iterator

from .corpus import SPLITS, CodeCorpus

HELDOUT_FRACTION = 0.1
_SPLIT_SALT = "trimode-instructions-v1"

# ---------------------------------------------------------------- general instructions
_TOPICS = ["autumn leaves", "a quiet library", "mountain mornings", "city lights", "an old bicycle",
           "the first snow", "a lighthouse", "coffee", "a long train journey", "a garden in spring",
           "the night sky", "a rainy afternoon", "friendship", "a small village", "the desert",
           "a busy market", "waking up early", "a forest path", "thunderstorms", "an empty beach"]
_ACTIVITIES = ["learning a new language", "running a first marathon", "saving money", "cooking for a family",
               "working from home", "giving a presentation", "sleeping better", "writing clean code",
               "starting a vegetable garden", "travelling on a budget", "reading more books",
               "learning to play the guitar", "keeping a journal", "preparing for a job interview",
               "reducing screen time", "organising a small event"]
_CONCEPTS = ["recursion", "photosynthesis", "inflation", "a linked list", "gravity", "machine learning",
             "the water cycle", "supply and demand", "an API", "encryption", "a binary search", "evolution",
             "compound interest", "a virtual machine", "the immune system", "version control",
             "a database index", "climate", "electric circuits", "a compiler"]
_THINGS = ["the Moon", "honey bees", "the Roman Empire", "volcanoes", "the Python language", "octopuses",
           "the Amazon rainforest", "the printing press", "solar panels", "chess", "the Internet",
           "penguins", "the Great Wall of China", "jazz music", "coral reefs", "bicycles"]
_TEMPLATES = [
    ("Write a short poem about {}.", _TOPICS), ("Write a haiku about {}.", _TOPICS),
    ("Describe {} in three sentences.", _TOPICS), ("Write a two-sentence story about {}.", _TOPICS),
    ("Give me three tips for {}.", _ACTIVITIES), ("What are common mistakes when {}?", _ACTIVITIES),
    ("Make a simple plan for {}.", _ACTIVITIES), ("Why is {} worth the effort?", _ACTIVITIES),
    ("Explain {} in simple terms.", _CONCEPTS), ("Explain {} to a ten-year-old.", _CONCEPTS),
    ("What is {}? Answer in two sentences.", _CONCEPTS), ("Give an everyday example of {}.", _CONCEPTS),
    ("List four facts about {}.", _THINGS), ("Tell me something surprising about {}.", _THINGS),
    ("Summarize the history of {} in a paragraph.", _THINGS), ("Write a short quiz question about {}.", _THINGS),
]

# ---------------------------------------------------------------- standard-library instructions
_API_TEMPLATES = ["Explain what the Python function `{qual}` does.", "Write a short example that uses `{qual}`.",
                  "When would I use `{qual}` in Python?", "What arguments does `{qual}` take?"]
_DOC_TEMPLATES = ["Write a Python function that does the following: {doc}",
                  "Summarize this documentation in one sentence: {doc}"]


def instruction_split(text: str) -> str:
    """"train" or "heldout" for a general instruction: a pure function of its text."""
    h = hashlib.sha256(f"{_SPLIT_SALT}\x00{text}".encode()).digest()
    return "heldout" if int.from_bytes(h[:8], "big") / 2**64 < HELDOUT_FRACTION else "train"


def general_instructions(split: str) -> list[str]:
    """Every template x word instruction of ``split``, in a fixed order."""
    _check_split(split)
    texts = [template.format(word) for template, words in _TEMPLATES for word in words]
    return [t for t in texts if instruction_split(t) == split]


def _module_name(relpath: str) -> str:
    name = relpath[:-3].replace("/", ".")
    return name[: -len(".__init__")] if name.endswith(".__init__") else name


def _first_line(doc: str) -> str:
    line = doc.strip().split("\n\n")[0].replace("\n", " ")
    return " ".join(line.split())


def stdlib_instructions(split: str, max_files: int | None = None) -> Iterator[str]:
    """Instructions about the documented public functions and classes of one corpus split."""
    _check_split(split)
    for relpath, text in CodeCorpus(split, max_files=max_files):
        try:
            tree = ast.parse(text)
        except SyntaxError:  # a stdlib file of another Python version's grammar: skip it
            continue
        module = _module_name(relpath)
        for node in tree.body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            qual = f"{module}.{node.name}"
            yield from (t.format(qual=qual) for t in _API_TEMPLATES)
            first = _first_line(doc)
            if 20 <= len(first) <= 200:
                yield from (t.format(doc=first) for t in _DOC_TEMPLATES)


def sample_instructions(split: str, n: int, seed: int, max_files: int | None = None) -> list[str]:
    """``n`` distinct instructions of ``split``: half general, half about the stdlib (as available),
    shuffled deterministically by ``seed``; fewer than ``n`` only if both pools run out."""
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    rng = random.Random(f"{seed}:instructions:{split}")
    general = general_instructions(split)
    stdlib = list(stdlib_instructions(split, max_files))
    rng.shuffle(general)
    rng.shuffle(stdlib)
    # Alternate the pools so either share is about half while both last.
    merged = [t for pair in itertools.zip_longest(general, stdlib) for t in pair if t is not None]
    return merged[:n]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
