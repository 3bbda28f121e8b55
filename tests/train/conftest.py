"""Training tests run torch on one thread: on a shared 2-core machine two intra-op threads made a
32x64 matmul ~100x slower (3.9 ms against 0.04 ms, measured with 5 other jobs running)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
