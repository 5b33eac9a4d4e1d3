"""The pipeline, stage by stage: parse -> check -> lower -> marginalise -> derive ->
(normalisability warnings, conditionals) -> plan -> emit.

Each stage is one function of the previous stage's output; the first stage that finds
a mistake raises SpecError and nothing later runs. Nothing here prints or writes files.
The whole pipeline, parsing included, runs within the compiler's bounds: a spec longer
than MAX_SPEC_CHARS is refused before parsing, and a recursion too deep or a compile past
the time limit ends in a positioned error naming the stage that ran out.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from energydsl.compiler import syntax as ast
from energydsl.compiler.conditionals import derive_conditionals
from energydsl.compiler.derive import derive
from energydsl.compiler.emit.module import emit
from energydsl.compiler.ir import CheckedModel, Compiled, Derivation
from energydsl.compiler.lower import lower
from energydsl.compiler.marginalise import marginalise
from energydsl.compiler.normalisable import normalisability_warnings
from energydsl.compiler.parse import parse
from energydsl.compiler.plan.methods import plan_methods
from energydsl.compiler.resolve import check
from energydsl.errors import DEFAULT_TIME_LIMIT, MAX_SPEC_CHARS, Span, SpecError, error

T = TypeVar("T")




class _OutOfTime(Exception):
    pass


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise _OutOfTime in this thread after `seconds` (a SIGALRM timer: Lark, SymPy and
    the planner are pure Python, so the signal lands between bytecodes). Only where
    Python allows it (the main thread, a platform with setitimer) and no timer is already
    running (a caller's own, e.g. pytest-timeout's): elsewhere there is no limit."""
    usable = (seconds is not None and seconds > 0 and hasattr(signal, "setitimer")
              and threading.current_thread() is threading.main_thread()
              and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))
    if not usable:
        yield
        return

    def expire(signum, frame) -> None:
        raise _OutOfTime

    assert seconds is not None
    previous = signal.signal(signal.SIGALRM, expire)
    # then again every 50 ms: an exception raised inside a finaliser (__del__, a weakref
    # callback) is swallowed by Python, so one signal may not be enough
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.05)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Pipeline:
    """Runs the stages in order, remembering which one is running, so that running out
    of time or recursion depth is reported for that stage at a useful place."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stage = "parsing"
        self.spec: ast.Spec | None = None

    def run(self, stage: str, work: Callable[..., T], *args) -> T:
        self.stage = stage
        return work(*args)

    def span(self) -> Span:
        """The energy's expression once parsed (where derivatives grow), else the start."""
        if self.spec is None:
            return Span(1, 1)
        energies = [d for d in self.spec.declarations if isinstance(d, ast.EnergyDecl)]
        return energies[0].value.span if energies else self.spec.model.span

    def too_complex(self) -> SpecError:
        return error(f"this model is too complex for the compiler (Python's recursion limit "
                     f"was reached while {self.stage} it); simplify the energy or name parts "
                     "of it with 'let'", self.span())

    def too_slow(self, seconds: float) -> SpecError:
        if self.stage in ("parsing", "checking", "lowering"):
            why = (f"the spec is too large ({len(self.source):,} characters, "
                   f"{self.source.count(chr(10)) + 1:,} lines); split it or shorten it")
        else:
            why = ("its derivatives grow too large (deeply nested products or functions); "
                   "simplify the energy")
        return error(f"{self.stage} this spec took longer than {seconds:g} s, the time "
                     f"limit: {why}, or allow more time with --time-limit", self.span())


def _check_size(source: str) -> None:
    """Refuse a spec past MAX_SPEC_CHARS before parsing, pointing at where it crosses."""
    if len(source) <= MAX_SPEC_CHARS:
        return
    head = source[:MAX_SPEC_CHARS]
    line = head.count("\n") + 1
    column = MAX_SPEC_CHARS - (head.rfind("\n") + 1) + 1
    raise error(f"this spec is {len(source):,} characters long, more than the limit of "
                f"{MAX_SPEC_CHARS:,} (1 MiB); the limit is crossed here", Span(line, column))


def _bounded(source: str, time_limit: float | None,
             stages: Callable[[_Pipeline], T]) -> T:
    """stages(pipeline) within the compiler's bounds (size, recursion, time)."""
    _check_size(source)
    pipeline = _Pipeline(source)
    try:
        with _time_limit(time_limit):
            return stages(pipeline)
    except RecursionError:
        raise pipeline.too_complex() from None
    except _OutOfTime:
        raise pipeline.too_slow(time_limit or 0) from None


def _derivation(pipeline: _Pipeline) -> Derivation:
    pipeline.spec = spec = pipeline.run("parsing", parse, pipeline.source)
    checked = pipeline.run("checking", check, spec)
    symbolic = pipeline.run("lowering", lower, checked)
    model = pipeline.run("marginalising", marginalise, symbolic)
    return pipeline.run("deriving", derive, model)


def check_source(source: str, time_limit: float | None = DEFAULT_TIME_LIMIT) -> CheckedModel:
    """Spec text -> the checked declarations (parsing and checking only: no SymPy work),
    for what needs the spec's names and sizes but not its derivation."""

    def stages(pipeline: _Pipeline) -> CheckedModel:
        pipeline.spec = spec = pipeline.run("parsing", parse, pipeline.source)
        return pipeline.run("checking", check, spec)

    return _bounded(source, time_limit, stages)


def analyse(source: str, time_limit: float | None = DEFAULT_TIME_LIMIT) -> Derivation:
    """Spec text -> derived formulas (everything but code generation)."""
    return _bounded(source, time_limit, _derivation)


def compile_source(source: str, spec_path: str,
                   time_limit: float | None = DEFAULT_TIME_LIMIT) -> Compiled:
    """Spec text -> generated module text, within `time_limit` seconds (None: no limit)."""

    def stages(pipeline: _Pipeline) -> Compiled:
        derivation = _derivation(pipeline)
        warnings = pipeline.run("analysing", normalisability_warnings, derivation)
        conditionals = pipeline.run("deriving", derive_conditionals, derivation)
        planned = pipeline.run("planning", plan_methods, derivation, conditionals)
        source = pipeline.run("generating code for", emit, derivation, conditionals, planned,
                              spec_path)
        return Compiled(derivation, conditionals, source, warnings)

    return _bounded(source, time_limit, stages)
