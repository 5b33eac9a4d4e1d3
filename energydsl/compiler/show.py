"""`energydsl show`: the derived formulas, in spec notation or LaTeX."""

from __future__ import annotations

from energydsl.compiler.emit.module import formulas
from energydsl.compiler.functions import kinked_in
from energydsl.compiler.ir import Derivation
from energydsl.compiler.notation import latex


def render(derivation: Derivation, as_latex: bool = False) -> str:
    title = f"model {derivation.name}"
    if not as_latex:
        return f"{title}\n" + "\n".join(f"  {line}" for line in formulas(derivation).split("\n"))
    return title + "\n" + "\n".join(f"  {name}: {text}" for name, text in _latex_lines(derivation))


def _latex_lines(derivation: Derivation):
    model = derivation.model
    if model.energy is not None:
        yield "energy", f"E = {latex(model.energy)}"
    for name, const in model.symbolic.checked.vector_consts.items():
        symbol = latex(model.symbolic.vector_consts[name])
        space = r" \times ".join(const.shape)
        value = (f"({', '.join(map(repr, const.value))})" if isinstance(const.value, tuple)
                 else rf"{const.value!r} \text{{ in every entry}}")
        yield name, rf"{symbol} \in \mathbb{{R}}^{{{space}}} = {value}"
    for name, definition in model.symbolic.definitions.items():
        indices = ",".join(map(str, definition.indices))
        yield name, f"{name}_{{{indices}}} = {latex(definition.body)}"
    yield "free energy", f"F = {latex(derivation.free_energy)}"
    yield "score", f"\\psi_{{{derivation.index}}} = {latex(derivation.score)}"
    yield "laplacian", f"\\Delta \\log \\tilde p = {latex(derivation.laplacian)}"
    yield "sm objective", f"J = \\mathbb{{E}}\\left[{latex(derivation.sm_objective)}\\right]"
    for condition in model.conditions:
        yield "requires", latex(condition)
    kinked = kinked_in(derivation.free_energy,
                       *[d.body for d in model.symbolic.definitions.values()])
    if kinked:
        yield "note", (rf"\text{{{', '.join(kinked)}: derivatives almost everywhere "
                       r"(at a kink, as autograd's)}")
