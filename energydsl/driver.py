"""The pipeline, stage by stage: parse -> check -> lower -> marginalise -> derive -> emit.

Each stage is one function of the previous stage's output; the first stage that finds
a mistake raises SpecError and nothing later runs. Nothing here prints or writes files.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from . import syntax as ast
from .checker import check
from .conditionals import Conditionals, derive_conditionals
from .derive import Derivation, derive
from .emit import emit
from .errors import DEFAULT_TIME_LIMIT, SpecError, error
from .lower import lower
from .marginalise import marginalise
from .parser import parse


@dataclass
class Compiled:
    derivation: Derivation
    conditionals: Conditionals
    source: str  # the generated module's text


def _too_complex(spec: ast.Spec) -> SpecError:
    """The parser and checker bound nesting so that this should not happen; if SymPy or
    the planner still recurse too deep, the user learns which model and what to do,
    rather than seeing a traceback."""
    return error("this model is too complex for the compiler (Python's recursion limit was "
                 "reached while deriving it); simplify the energy or name parts of it with "
                 "'let'", _energy_span(spec))


class _OutOfTime(Exception):
    pass


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise _OutOfTime in this thread after `seconds` (a SIGALRM timer: SymPy and the
    planner are pure Python, so the signal lands between bytecodes). Only where Python
    allows it (the main thread, a platform with setitimer) and no timer is already
    running (a caller's own, e.g. pytest-timeout's): elsewhere there is no limit."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not usable:
        yield
        return

    def expire(signum, frame) -> None:
        raise _OutOfTime

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _too_slow(spec: ast.Spec, seconds: float) -> SpecError:
    return error(f"compiling this model took longer than {seconds:g} s, the time limit: its "
                 "derivatives grow too large (deeply nested products or functions); simplify "
                 "the energy, or allow more time with --time-limit", _energy_span(spec))


def _energy_span(spec: ast.Spec):
    energies = [d for d in spec.declarations if isinstance(d, ast.EnergyDecl)]
    return energies[0].value.span if energies else spec.model.span


def _bounded(spec: ast.Spec, time_limit: float | None, work):
    """work() within the compiler's bounds: a recursion too deep or a compile past
    `time_limit` seconds ends in a positioned error at the energy, not a traceback."""
    try:
        with _time_limit(time_limit):
            return work()
    except RecursionError:
        raise _too_complex(spec) from None
    except _OutOfTime:
        raise _too_slow(spec, time_limit) from None


def _analyse(spec: ast.Spec) -> Derivation:
    return derive(marginalise(lower(check(spec))))


def analyse(source: str, time_limit: float | None = DEFAULT_TIME_LIMIT) -> Derivation:
    """Spec text -> derived formulas (everything but code generation)."""
    spec = parse(source)
    return _bounded(spec, time_limit, lambda: _analyse(spec))


def compile_source(source: str, spec_path: str,
                   time_limit: float | None = DEFAULT_TIME_LIMIT) -> Compiled:
    """Spec text -> generated module text, within `time_limit` seconds (None: no limit)."""
    spec = parse(source)

    def work() -> Compiled:
        derivation = _analyse(spec)
        conditionals = derive_conditionals(derivation)
        return Compiled(derivation, conditionals, emit(derivation, conditionals, spec_path))

    return _bounded(spec, time_limit, work)
