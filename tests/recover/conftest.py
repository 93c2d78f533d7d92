"""Tiny-model recovery tests run single-threaded: intra-op threads do not help 32-wide matmuls, and on a
shared 2-core machine OpenMP spin-waiting made these tests ~7× slower with 2 threads."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread(request):
    if request.node.get_closest_marker("real_model"):
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
