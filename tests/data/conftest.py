"""Shared fixtures for the data-pipeline tests. Everything is offline."""

import os

# Must be set before transformers / huggingface_hub are imported anywhere.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest

from trimode.data.corpus import CodeCorpus
from trimode.tokenization import train_tokenizer


@pytest.fixture(scope="session")
def small_tokenizer():
    """A 512-token BPE trained on 30 stdlib files: enough to test behaviour, fast."""
    texts = CodeCorpus("train", heldout_fraction=0.0, max_files=30).texts()
    return train_tokenizer(texts, vocab_size=512)
