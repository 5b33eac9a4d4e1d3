"""energydsl: write an energy model as a spec, get its free energy, score-matching
objective and Gibbs conditionals derived symbolically and emitted as a PyTorch module."""

from __future__ import annotations

__version__ = "0.1.0"


def load(path):  # noqa: ANN001, ANN201 - re-exported from .api, imported lazily
    """Compile the spec at `path` in memory (cached by its hash); return the class."""
    from energydsl.api import load as _load

    return _load(path)
