"""Shared data for the companion-library tests: the 8x8 digits embedded in scikit-learn."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from sklearn.datasets import load_digits
from torch import Tensor

# A small subset keeps the whole folder fast on 2 cores.
SUBSET = 96


@pytest.fixture(scope="session")
def digits_all() -> Tensor:
    """All 1797 digits as float64 [N, 64] in [0, 1] (pixel values k/16)."""
    return torch.tensor(load_digits().data / 16.0, dtype=torch.float64)


@pytest.fixture(scope="session")
def digits(digits_all: Tensor) -> Tensor:
    """A float32 subset [SUBSET, 64] in [0, 1]."""
    return digits_all[:SUBSET].float()


@pytest.fixture(autouse=True)
def _isolated_torch_state() -> Iterator[None]:
    """Pin the torch state these tests assume, and restore it afterwards.

    - float32 default dtype: another module of the suite may change the process-wide
      default at import time, and the models are meant to be built in float32 here;
    - one intra-op thread: the tensors are tiny, and on a shared 2-core machine a second
      thread only adds oversubscription (spin-waiting) and makes timings erratic.
    """
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
