"""pytest options shared by the test suite."""

from collections.abc import Iterator

import pytest


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="rewrite generated/ from specs/ instead of comparing")


@pytest.fixture
def update_golden(request) -> bool:
    return request.config.getoption("--update-golden")


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tests use small tensors in loops (MCMC, training): on a shared 2-core machine
    a second intra-op thread only spin-waits and makes them 10-30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
