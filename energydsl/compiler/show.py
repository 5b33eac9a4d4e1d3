"""`energydsl show`: the derived formulas, in spec notation or LaTeX."""

from __future__ import annotations

from energydsl.compiler.emit.module import formulas, latex_formulas
from energydsl.compiler.ir import Derivation


def render(derivation: Derivation, as_latex: bool = False) -> str:
    title = f"model {derivation.name}"
    lines = formulas(derivation).split("\n") if not as_latex else [
        f"{name}: {text}" for name, text in latex_formulas(derivation)]
    return title + "\n" + "\n".join(f"  {line}" for line in lines)
