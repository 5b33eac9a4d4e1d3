"""The Python API for notebooks: `energydsl.load("specs/dem.edsl")` -> the model class.

Compiles in memory, cached by the spec text's SHA-256 (recompiling an unchanged spec is
free; editing it recompiles). Spec errors raise SpecError with the positioned message.
"""

from __future__ import annotations

from pathlib import Path

from energydsl.compiler.driver import compile_source
from energydsl.compiler.ir import Compiled
from energydsl.compiler.sources import spec_hash

_CACHE: dict[str, Compiled] = {}


def compile_cached(text: str, path: str = "<spec>") -> Compiled:
    """compile_source, memoised on the spec text."""
    key = spec_hash(text)
    if key not in _CACHE:
        _CACHE[key] = compile_source(text, path)
    return _CACHE[key]


def class_of(compiled: Compiled) -> type:
    from energydsl.compiler.loading import load_module

    module = load_module(compiled.source, compiled.derivation.name.lower())
    return getattr(module, compiled.derivation.name)


def load(path: str | Path) -> type:
    """Compile the spec at `path` in memory and return its generated class."""
    from energydsl.compiler.sources import read_spec

    text = read_spec(path)
    return class_of(compile_cached(text, Path(path).as_posix()))
