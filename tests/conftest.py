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


@pytest.fixture(autouse=True, scope="session")
def _generated_source_cache(tmp_path_factory) -> Iterator[None]:
    """The generated-source cache of energydsl.api in a directory of this test session
    (inherited by the commands the tests run), not the user's ~/.cache."""
    import os

    previous = os.environ.get("ENERGYDSL_CACHE_DIR")
    os.environ["ENERGYDSL_CACHE_DIR"] = str(tmp_path_factory.mktemp("energydsl-cache"))
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("ENERGYDSL_CACHE_DIR", None)
        else:
            os.environ["ENERGYDSL_CACHE_DIR"] = previous
