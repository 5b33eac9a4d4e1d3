"""The pipeline, stage by stage: parse -> check -> lower -> marginalise -> derive -> emit.

Each stage is one function of the previous stage's output; the first stage that finds
a mistake raises SpecError and nothing later runs. Nothing here prints or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import syntax as ast
from .checker import check
from .conditionals import Conditionals, derive_conditionals
from .derive import Derivation, derive
from .emit import emit
from .errors import SpecError, error
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
    energies = [d for d in spec.declarations if isinstance(d, ast.EnergyDecl)]
    span = energies[0].value.span if energies else spec.model.span
    return error("this model is too complex for the compiler (Python's recursion limit was "
                 "reached while deriving it); simplify the energy or name parts of it with "
                 "'let'", span)


def _analyse(spec: ast.Spec) -> Derivation:
    try:
        return derive(marginalise(lower(check(spec))))
    except RecursionError:
        raise _too_complex(spec) from None


def analyse(source: str) -> Derivation:
    """Spec text -> derived formulas (everything but code generation)."""
    return _analyse(parse(source))


def compile_source(source: str, spec_path: str) -> Compiled:
    """Spec text -> generated module text."""
    spec = parse(source)
    derivation = _analyse(spec)
    try:
        conditionals = derive_conditionals(derivation)
        text = emit(derivation, conditionals, spec_path)
    except RecursionError:
        raise _too_complex(spec) from None
    return Compiled(derivation, conditionals, text)
