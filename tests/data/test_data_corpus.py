import hashlib

import pytest

from trimode.data.corpus import DEFAULT_EXCLUDE_DIRS, CodeCorpus, list_stdlib_files


def test_list_files_sorted_deterministic_and_filtered():
    files = list_stdlib_files()
    assert files == list_stdlib_files()
    assert files == sorted(files) and len(files) > 100
    for f in files:
        assert f.endswith(".py") and not f.startswith("/")
        assert not set(f.split("/")[:-1]) & DEFAULT_EXCLUDE_DIRS
    assert list_stdlib_files(max_files=7) == files[:7]


def test_split_disjoint_and_covers_deduplicated_set():
    kw = dict(heldout_fraction=0.3, max_files=80)
    train = list(CodeCorpus("train", **kw))
    heldout = list(CodeCorpus("heldout", **kw))
    assert train == list(CodeCorpus("train", **kw))  # deterministic
    assert train and heldout
    train_paths, held_paths = {p for p, _ in train}, {p for p, _ in heldout}
    assert not train_paths & held_paths
    # independent recomputation of the deduplicated, valid file set
    corpus = CodeCorpus("train", **kw)
    expected, seen = [], set()
    for rel in list_stdlib_files(max_files=80):
        data = (corpus.root / rel).read_bytes()
        h = hashlib.sha256(data).digest()
        if h in seen or len(data) > corpus.max_bytes:
            continue
        seen.add(h)
        try:
            if data.decode("utf-8").strip():
                expected.append(rel)
        except UnicodeDecodeError:
            pass
    assert sorted(train_paths | held_paths) == expected
    texts = [t for _, t in train + heldout]
    assert len(set(texts)) == len(texts)  # no duplicate contents across both splits


def test_filters_on_synthetic_tree(tmp_path):
    files = {
        "a.py": b"x = 1\n",
        "b.py": b"x = 1\n",  # exact duplicate of a.py -> dropped
        "pkg/c.py": b"def c():\n    return 2\n",
        "pkg/empty.py": b"  \n",  # whitespace only -> dropped
        "latin1.py": "s = 'caf\xe9'\n".encode("latin-1"),  # not UTF-8 -> dropped
        "big.py": b"#" * 2000,  # over max_bytes -> dropped
        "test/t.py": b"t = 1\n",
        "site-packages/lib.py": b"l = 1\n",
        "pkg/tests/tt.py": b"tt = 1\n",
        "notes.txt": b"not python",
        "_sysconfigdata__linux.py": b"build = {}\n",
    }
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert list_stdlib_files(tmp_path) == ["a.py", "b.py", "big.py", "latin1.py", "pkg/c.py", "pkg/empty.py"]
    got = list(CodeCorpus("train", heldout_fraction=0.0, max_bytes=1000, root=tmp_path))
    assert got == [("a.py", "x = 1\n"), ("pkg/c.py", "def c():\n    return 2\n")]
    assert list(CodeCorpus("heldout", heldout_fraction=0.0, root=tmp_path)) == []
    assert [p for p, _ in CodeCorpus("heldout", heldout_fraction=1.0, max_bytes=1000, root=tmp_path)] == ["a.py", "pkg/c.py"]


def test_duplicate_never_leaks_across_splits(tmp_path):
    # Many identical files: whichever split the first one lands in, the copies
    # must not appear in the other split.
    for i in range(40):
        (tmp_path / f"m{i:02d}.py").write_text("same = True\n")
    both = list(CodeCorpus("train", 0.5, root=tmp_path)) + list(CodeCorpus("heldout", 0.5, root=tmp_path))
    assert both == [("m00.py", "same = True\n")]


def test_streams_lazily():
    it = iter(CodeCorpus("train", max_files=50))
    rel, text = next(it)
    assert isinstance(rel, str) and isinstance(text, str) and text


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        CodeCorpus("valid")
    with pytest.raises(ValueError, match="heldout_fraction=1.5"):
        CodeCorpus("train", heldout_fraction=1.5)
    with pytest.raises(ValueError, match="max_files=-1"):
        list_stdlib_files(max_files=-1)
