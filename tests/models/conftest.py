"""Shared data for the companion-library tests: the 8x8 digits embedded in scikit-learn."""

from __future__ import annotations

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

