"""energydsl: write an energy model as a spec, get its free energy, score-matching
objective and Gibbs conditionals derived symbolically and emitted as a PyTorch module."""

from __future__ import annotations

import time

__version__ = "0.1.0"
STARTED = time.perf_counter()
"""When the package was first imported: the start of a command, for its start-up time
(training records the seconds to its first step from here)."""


# The public API (energydsl.api), imported on first use so `import energydsl` stays light.


def compile(spec):  # noqa: A001, ANN001, ANN201
    """The generated class of a spec given as text or as the path of a .edsl file."""
    from energydsl.api import compile as _compile

    return _compile(spec)


def load(path):  # noqa: ANN001, ANN201
    """Compile the spec at `path` in memory (cached by its hash); return the class."""
    from energydsl.api import load as _load

    return _load(path)


def load_run(directory):  # noqa: ANN001, ANN201
    """(the trained model, the run's settings) of a run directory."""
    from energydsl.api import load_run as _load_run

    return _load_run(directory)


def keep_freed_memory():  # noqa: ANN201
    """On glibc, keep freed tensors' memory in the process (20-25% faster training steps;
    energydsl's commands do it): see energydsl.memory. True when applied."""
    from energydsl.memory import keep_freed_memory as _keep

    return _keep()


def train(model, out=None, **settings):  # noqa: ANN001, ANN003, ANN201
    """Train a spec or companion model as `energydsl train` does; returns its History."""
    from energydsl.api import train as _train

    return _train(model, out, **settings)
