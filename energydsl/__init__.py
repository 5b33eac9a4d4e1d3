"""energydsl: write an energy model as a spec, get its free energy, score-matching
objective and Gibbs conditionals derived symbolically and emitted as a PyTorch module."""

from __future__ import annotations

import time

__version__ = "0.1.0"
STARTED = time.perf_counter()
"""When the package was first imported: the start of a command, for its start-up time
(training records the seconds to its first step from here)."""


def load(path):  # noqa: ANN001, ANN201 - re-exported from .api, imported lazily
    """Compile the spec at `path` in memory (cached by its hash); return the class."""
    from energydsl.api import load as _load

    return _load(path)
