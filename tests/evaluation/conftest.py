"""Fixtures of the harness tests.

One intra-op thread: the harness times many tiny forwards, and on a shared
2-core machine two spinning OpenMP threads per process slow tiny models by
10x or more when other test processes compete. Restored afterwards.

A private TRIMODE_CACHE per test: ``block_length="auto"`` persists the
forward costs it measures there.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def private_cache(monkeypatch, tmp_path):
    """A fresh trimode cache per test: the persisted forward costs of one test (or of the user's own
    runs) must not decide another's block length."""
    monkeypatch.setenv("TRIMODE_CACHE", str(tmp_path / "trimode-cache"))
    return tmp_path / "trimode-cache"
