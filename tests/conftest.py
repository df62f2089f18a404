"""Shared test setup."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared machine OpenMP's
    # spin-waiting makes 2 threads up to 100x slower than 1. Restored at the end.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
