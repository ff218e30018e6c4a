"""Fixtures of the tests that time forwards (the harness, ``block_length="auto"``); a directory's
conftest imports them, which makes them autouse there.

One intra-op thread: these tests time many tiny forwards, and on a shared 2-core machine two
spinning OpenMP threads per process slow tiny models by 10x or more when other test processes
compete. Restored afterwards.

A private TRIMODE_CACHE per test: ``block_length="auto"`` persists the forward costs it
measures there, and one test's (or the user's) costs must not decide another's block length.
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
    monkeypatch.setenv("TRIMODE_CACHE", str(tmp_path / "trimode-cache"))
    return tmp_path / "trimode-cache"
