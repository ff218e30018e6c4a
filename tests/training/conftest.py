"""Shared fixtures of the training tests: one small tokenizer and one AR checkpoint per session."""

import pytest
from training_helpers import debug_config

from trimode.training import preset_config, train
from trimode.training.stages import train_default_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory):
    """The tokenizer the ar stage trains from scratch under the debug preset (vocab 512, 20 files)."""
    path = tmp_path_factory.mktemp("tokenizer")
    train_default_tokenizer(preset_config("debug", "ar")).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def ar_dir(tmp_path_factory, tokenizer_dir):
    """A debug AR checkpoint (12 steps): the --init of the joint / sft / drafter tests."""
    path = tmp_path_factory.mktemp("ar")
    train(debug_config("ar", steps=12, eval_batches=0, checkpoint_interval=0), out=path, tokenizer=tokenizer_dir)
    return path
