"""The pipeline, stage by stage: parse -> check -> lower -> marginalise -> derive -> emit.

Each stage is one function of the previous stage's output; the first stage that finds
a mistake raises SpecError and nothing later runs. Nothing here prints or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

from .checker import check
from .conditionals import Conditionals, derive_conditionals
from .derive import Derivation, derive
from .emit import emit
from .lower import lower
from .marginalise import marginalise
from .parser import parse


@dataclass
class Compiled:
    derivation: Derivation
    conditionals: Conditionals
    source: str  # the generated module's text


def analyse(source: str) -> Derivation:
    """Spec text -> derived formulas (everything but code generation)."""
    return derive(marginalise(lower(check(parse(source)))))


def compile_source(source: str, spec_path: str) -> Compiled:
    """Spec text -> generated module text."""
    derivation = analyse(source)
    conditionals = derive_conditionals(derivation)
    return Compiled(derivation, conditionals, emit(derivation, conditionals, spec_path))
