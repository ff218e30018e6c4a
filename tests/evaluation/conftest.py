"""Fixtures of the harness tests.

One intra-op thread: the harness times many tiny forwards, and on a shared
2-core machine two spinning OpenMP threads per process slow tiny models by
10x or more when other test processes compete. Restored afterwards.
"""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
