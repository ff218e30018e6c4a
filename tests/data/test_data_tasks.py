import json
import re

import pytest

from trimode.data.tasks import FAMILIES, HELDOUT_FRACTION, generate_tasks, iter_tasks, score, task_split

FAMS = sorted(FAMILIES)
FAMS_ORDER = list(FAMILIES)  # round-robin generation order


def _change_one_char(s: str) -> str:
    # change the last digit if any (most likely to look plausible), else the last letter
    for i in reversed(range(len(s))):
        if s[i].isdigit():
            return s[:i] + str((int(s[i]) + 1) % 10) + s[i + 1 :]
    for i in reversed(range(len(s))):
        if s[i].isalpha():
            return s[:i] + ("a" if s[i].lower() != "a" else "b") + s[i + 1 :]
    raise AssertionError(s)


def _swap_items(s: str) -> str:
    sep = "\n" if "\n" in s else ", "
    items = s.split(sep)
    for i in range(len(items) - 1):
        if items[i] != items[i + 1]:
            items[i], items[i + 1] = items[i + 1], items[i]
            return sep.join(items)
    raise AssertionError(s)


@pytest.mark.parametrize("family", FAMS)
def test_scoring_exact(family):
    for task in generate_tasks("train", 20, seed=3, families=[family]):
        a = task.answer
        for ok in (a, a + "\n", f"{a}<|eos|>", f"  {a} <|eos|><|pad|><|pad|>", f"{a}<|eos|>junk after eos"):
            assert score(task, ok) == 1.0, ok
        bad = [
            _change_one_char(a), a[:-1], a[: len(a) // 2], a + " 1", a + ",", a + "\nanswer: 0",
            "", "<|eos|>" + a,
        ]
        if family != "json":  # json answers are a single item
            bad.append(_swap_items(a))
        for wrong in bad:
            assert wrong != a
            assert score(task, wrong) == 0.0, wrong


def _ints(s):
    return [int(x) for x in re.findall(r"\d+", s)]


def test_answers_are_correct():
    """Check every family against an independent reading of the prompt."""
    for t in generate_tasks("heldout", 300, seed=5):
        if t.family == "add":
            a, b = _ints(t.prompt)
            assert t.answer.endswith(f"\nanswer: {a + b}")
        elif t.family == "mul":
            a, b = _ints(t.prompt)[:2]
            lines = t.answer.split("\n")
            assert lines[-1] == f"answer: {a * b}"
            assert lines[-2].endswith(f"={a * b}") and sum(_ints(lines[-2])[:-1]) == a * b
        elif t.family == "sort":
            items = t.prompt.split(": ", 1)[1].split(", ")
            key = int if "numbers" in t.prompt else str
            desc = "descending" in t.prompt or "reverse" in t.prompt
            assert t.answer.split(", ") == [str(x) for x in sorted(map(key, items), reverse=desc)]
        elif t.family == "transform":
            items = t.prompt.split(": ", 1)[1].split(", ")
            if t.prompt.startswith("Reverse"):
                assert t.answer.split(", ") == items[::-1]
            elif t.prompt.startswith("Rewrite"):
                assert t.answer == ", ".join(items).upper()
            elif t.prompt.startswith("Add"):
                k = _ints(t.prompt)[0]
                assert _ints(t.answer) == [int(x) + k for x in items]
            else:
                assert t.answer.split(", ") == list(dict.fromkeys(items))
                assert len(set(items)) < len(items)
        elif t.family == "json":
            pairs = [p.split("=") for p in t.prompt.split(": ", 1)[1].split("; ")]
            assert json.loads(t.answer) == {k: int(v) if v.isdigit() else v for k, v in pairs}
        elif t.family == "count":
            word = t.prompt.split("occurs in ")[1].split(".")[0]
            assert t.answer == ", ".join(f"{c}={word.count(c)}" for c in sorted(set(word)))
        elif t.family == "repeat":
            assert t.answer == t.prompt.split(": ", 1)[1] and 10 <= len(t.answer.split(", ")) <= 20
        elif t.family == "enumerate":
            items = t.prompt.split(": ", 1)[1].split(", ")
            start = _ints(t.prompt.split(":")[0])[0] if "starting at" in t.prompt else 1
            assert t.answer.split("\n") == [f"{start + i}. {x}" for i, x in enumerate(items)]
            assert 10 <= len(items) <= 20
        else:
            raise AssertionError(t.family)


def test_splits_disjoint_and_consistent():
    train = generate_tasks("train", 2000, seed=0)
    held = generate_tasks("heldout", 2000, seed=1)
    assert not {(t.family, t.prompt) for t in train} & {(t.family, t.prompt) for t in held}
    assert all(task_split(t.family, t.prompt) == "train" for t in train)
    assert all(task_split(t.family, t.prompt) == "heldout" for t in held)
    for tasks in (train, held):
        assert len({t.id for t in tasks}) == len(tasks) == len({(t.family, t.prompt) for t in tasks})
    # same seed for both splits is also fine: disjointness does not depend on seeds
    held0 = generate_tasks("heldout", 500, seed=0)
    assert not {t.prompt for t in train} & {t.prompt for t in held0}
    assert 0 < HELDOUT_FRACTION < 0.5


def test_deterministic_and_balanced():
    n = 10 * len(FAMS_ORDER)
    a = generate_tasks("train", n, seed=7)
    assert a == generate_tasks("train", n, seed=7)
    assert a != generate_tasks("train", n, seed=8)
    assert [t.family for t in a] == FAMS_ORDER * 10
    # a family's tasks do not depend on which other families are mixed in
    only_add = generate_tasks("train", 10, seed=7, families=["add"])
    assert only_add == [t for t in a if t.family == "add"]
    # a family listed twice gets two turns per round (a weighted mix)
    weighted = generate_tasks("train", 12, seed=7, families=["add", "json", "json"])
    assert [t.family for t in weighted] == ["add", "json", "json"] * 4
    assert [t for t in weighted if t.family == "add"] == only_add[:4]
    it = iter_tasks("train", seed=7)
    assert [next(it) for _ in range(n)] == a



def test_answer_lengths(small_tokenizer):
    for t in generate_tasks("train", 300, seed=11):
        n_tok = len(small_tokenizer.encode(t.answer))
        assert 30 <= len(t.answer) <= 800, (t.family, t.answer)
        assert 20 <= n_tok <= 500, (t.family, n_tok)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown split 'test'"):
        generate_tasks("test", 1, seed=0)
    with pytest.raises(ValueError, match="unknown task family 'poetry'"):
        generate_tasks("train", 1, seed=0, families=["add", "poetry"])
    with pytest.raises(ValueError, match="n=-1"):
        generate_tasks("train", -1, seed=0)
    with pytest.raises(ValueError, match="non-empty"):
        generate_tasks("train", 1, seed=0, families=[])
