"""energydsl.memory: on glibc, freed tensors stay in the process, so a loop of steps stops
page-faulting its intermediates back in (counted by the kernel, not timed)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from energydsl.memory import _glibc

GLIBC = _glibc()

# Six [128, 64, 64] products (2 MiB each, the size of a deep DEM's per-sample Jacobians)
# made and freed per step; the kernel's count of minor page faults over 100 steps.
STEPS = """
import resource, sys, torch
from energydsl.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
a, b = torch.rand(128, 64, 1), torch.rand(128, 1, 64)
def step():
    alive = [a * b for _ in range(6)]
    return sum(t.sum() for t in alive)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, **env: str) -> tuple[bool, int]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update(env)
    out = subprocess.run([sys.executable, "-c", STEPS, mode], capture_output=True, text=True,
                         env=environment, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_kept_memory_stops_the_page_faults() -> None:
    applied, kept = _faults("keep")
    _, default = _faults("default")
    assert applied
    # measured here: about 300,000 faults with glibc's defaults, 2,600 with the thresholds
    assert default > 20 * kept, (default, kept)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_opt_out_and_the_users_own_settings_are_respected() -> None:
    assert _faults("keep", ENERGYDSL_MALLOC="system")[0] is False
    assert _faults("keep", MALLOC_TRIM_THRESHOLD_="1000000")[0] is False
