"""Fixtures shared by the unit tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def torch_one_thread():
    """Run a test with one torch intra-op thread, then restore the previous setting.

    Tiny networks gain nothing from intra-op threads, and on a busy machine the threads'
    spin-waiting makes them many times slower.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
