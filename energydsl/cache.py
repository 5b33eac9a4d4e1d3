"""Where energydsl keeps what it generates between commands: ENERGYDSL_CACHE_DIR, by
default $XDG_CACHE_HOME/energydsl or ~/.cache/energydsl; empty to keep nothing.

The cache holds code this process executes (generated sources, and the generated modules
that `energydsl.compiled` imports), like Python's own __pycache__: it must be the user's
own directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path | None:
    """Where generated sources are kept between commands (None: not kept)."""
    configured = os.environ.get("ENERGYDSL_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "energydsl"


def modules_dir() -> Path | None:
    """The folder the package `energydsl.compiled` imports generated modules from."""
    folder = cache_dir()
    return None if folder is None else folder / "modules"
