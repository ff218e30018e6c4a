"""Code corpus built from the running interpreter's standard-library sources.

Used to train the tokenizer and pre-train the shipped default model without
any network access: the stdlib is always present, is real, varied Python, and
its license (PSF) permits this use.

Design choices:

* Files: every ``*.py`` under ``sysconfig.get_paths()["stdlib"]`` (or a
  custom `root`), in sorted POSIX relative-path order so iteration order is
  identical across runs and platforms.
* Excluded directories (any path component, see `DEFAULT_EXCLUDE_DIRS`):
  ``site-packages`` (third-party, varies by machine), ``__pycache__``, and the
  test suites ``test``/``tests``/``idle_test``. The test suites are excluded
  because they are huge (the CPython ``test`` package alone is larger than the
  rest of the stdlib), highly repetitive, and include deliberately malformed
  files (bad encodings, syntax errors, Python 2 fixtures in
  ``lib2to3/tests/data``). ``_sysconfigdata_*.py`` is excluded too: it is
  generated build configuration, not code, and differs per machine.
* Files that are not valid UTF-8, empty/whitespace-only, or larger than
  `max_bytes` (default 256 KiB; drops e.g. the generated ``pydoc_data/topics.py``)
  are skipped.
* Exact duplicates (same SHA-256 of the bytes) are removed; the first file in
  sorted order wins. Deduplication runs over the whole file list *before* the
  split, so duplicate content can never appear in both train and held-out.
* Train/held-out split is by file: a file is held out iff
  ``sha256(f"{seed}:{relpath}")`` maps into ``[0, heldout_fraction)``. This
  depends only on the path and seed, so adding or removing other files never
  moves a file between splits.
* Streaming: `CodeCorpus` reads one file at a time; only the set of content
  hashes seen so far (32 bytes per file) is kept in memory.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from pathlib import Path
from typing import Iterator

DEFAULT_EXCLUDE_DIRS: frozenset[str] = frozenset(
    {"site-packages", "__pycache__", "test", "tests", "idle_test"}
)
DEFAULT_MAX_BYTES = 256 * 1024
SPLITS = ("train", "heldout")


def stdlib_root() -> Path:
    """Directory holding the running interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def list_stdlib_files(
    root: str | Path | None = None,
    exclude_dirs: frozenset[str] | set[str] = DEFAULT_EXCLUDE_DIRS,
    max_files: int | None = None,
) -> list[str]:
    """Sorted POSIX relative paths of candidate ``*.py`` files under `root`.

    This only filters by path; content checks (UTF-8, size, duplicates) happen
    when the corpus is iterated. `max_files` keeps the first N sorted paths.
    """
    if max_files is not None and max_files < 0:
        raise ValueError(f"max_files={max_files} must be None or >= 0")
    base = Path(root) if root is not None else stdlib_root()
    if not base.is_dir():
        raise ValueError(f"corpus root {str(base)!r} is not a directory")
    paths = []
    # os.walk with in-place pruning: never descends into site-packages or the
    # (large) test suites, which rglob-then-filter would walk in full.
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if d not in exclude_dirs]
        rel_dir = Path(dirpath).relative_to(base)
        for name in filenames:
            if name.endswith(".py") and not name.startswith("_sysconfigdata_"):
                paths.append((rel_dir / name).as_posix())
    paths.sort()
    return paths if max_files is None else paths[:max_files]


def is_heldout(relpath: str, heldout_fraction: float, seed: int = 0) -> bool:
    """Deterministic per-file split decision (stable across runs and machines)."""
    digest = hashlib.sha256(f"{seed}:{relpath}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < heldout_fraction


class CodeCorpus:
    """Iterable of ``(relpath, text)`` for one split of the stdlib code corpus.

    Each iteration re-reads files lazily from disk, one at a time, and yields
    the same sequence every time.
    """

    def __init__(
        self,
        split: str = "train",
        heldout_fraction: float = 0.02,
        max_files: int | None = None,
        seed: int = 0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        root: str | Path | None = None,
        exclude_dirs: frozenset[str] | set[str] = DEFAULT_EXCLUDE_DIRS,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
        if not 0.0 <= heldout_fraction <= 1.0:
            raise ValueError(f"heldout_fraction={heldout_fraction} must be in [0, 1]")
        if max_bytes < 1:
            raise ValueError(f"max_bytes={max_bytes} must be >= 1")
        self.split = split
        self.heldout_fraction = heldout_fraction
        self.seed = seed
        self.max_bytes = max_bytes
        self.root = Path(root) if root is not None else stdlib_root()
        # Path listing is cheap (names only) and fixes the order up front.
        self.relpaths = list_stdlib_files(self.root, exclude_dirs, max_files)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        want_heldout = self.split == "heldout"
        seen: set[bytes] = set()
        for rel in self.relpaths:
            path = self.root / rel
            try:
                if path.stat().st_size > self.max_bytes:
                    continue
                data = path.read_bytes()
            except OSError:  # file vanished or unreadable: skip, don't abort training
                continue
            # Hash *every* file (both splits) so dedup is global, not per split.
            digest = hashlib.sha256(data).digest()
            if digest in seen:
                continue
            seen.add(digest)
            if is_heldout(rel, self.heldout_fraction, self.seed) != want_heldout:
                continue
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue
            if not text.strip():
                continue
            yield rel, text

    def texts(self) -> Iterator[str]:
        """Just the file contents, e.g. for `train_tokenizer`."""
        return (text for _, text in self)
