"""Chat-style instructions built offline (drafter self-distillation prompts for chat models)."""

import pytest

from trimode.data.corpus import CodeCorpus
from trimode.data.instructions import general_instructions, instruction_split, sample_instructions, stdlib_instructions


def test_general_instructions_split_by_content():
    train, held = general_instructions("train"), general_instructions("heldout")
    assert train and held and not set(train) & set(held)
    assert all(instruction_split(t) == "train" for t in train)
    assert 0.03 < len(held) / (len(train) + len(held)) < 0.2  # about the held-out share
    assert general_instructions("train") == train  # fixed order


def test_stdlib_instructions_follow_the_corpus_split():
    held_modules = {rel[:-3].replace("/", ".").removesuffix(".__init__")
                    for rel, _ in CodeCorpus("heldout", max_files=300)}
    train = list(stdlib_instructions("train", max_files=300))
    assert train and any("`" in t for t in train) and any(t.startswith("Write a Python function") for t in train)
    named = {t.split("`")[1].rsplit(".", 1)[0] for t in train if "`" in t}
    assert not named & held_modules  # a held-out file's names never reach training prompts


def test_sample_is_deterministic_mixed_and_bounded():
    a = sample_instructions("train", 200, seed=0, max_files=200)
    assert a == sample_instructions("train", 200, seed=0, max_files=200)
    assert a != sample_instructions("train", 200, seed=1, max_files=200)
    assert len(a) == len(set(a)) == 200
    general = set(general_instructions("train"))
    assert 60 < sum(t in general for t in a) < 140  # about half of each pool
    with pytest.raises(ValueError, match="unknown split 'test'"):
        sample_instructions("test", 1, seed=0)
