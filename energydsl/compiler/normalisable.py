"""Models that exp(-F) cannot normalise, where the free energy shows it: warnings.

p(v) = exp(-F(v)) / Z exists only if exp(-F) is integrable, which needs F to grow in
every direction of v. The compiler cannot decide that in general, but it sees the three
ways specs most often fail it (each a warning from `compile` and `check`, not an error:
score matching and NCE still run, their results just describe no distribution):

- F is affine in v (sum(i: a[i] * v[i])): exp(-F) grows without bound along -grad F;
- F depends on v only through fewer linear combinations of its entries than v has
  (sum(i: v[i])^4, or softplus(W^T v) with fewer filters than pixels and no other term):
  it is constant along the remaining directions;
- every appearance of v is inside a bounded function (sigmoid, tanh): F is bounded, so
  exp(-F) does not vanish at infinity.

Occurrences of v inside `let`s count where they are used (the lets are inlined).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from energydsl.compiler.functions import BY_CLASS
from energydsl.compiler.ir import Derivation
from energydsl.compiler.lets import inline
from energydsl.compiler.notation import dsl_str
from energydsl.errors import Diagnostic, shorten

BOUNDED = tuple(cls for cls, function in BY_CLASS.items() if function.bounded)


@dataclass
class _Uses:
    """How the free energy uses the visible variable."""

    direct: bool = False  # v[i] other than through a linear combination
    projections: list[sp.Expr] = field(default_factory=list)  # sums affine in v
    bounded: bool = False  # v inside a bounded function


def _degree(expr: sp.Expr, visible: sp.IndexedBase) -> int | None:
    """0 if expr does not involve v, 1 if it is affine in v, None otherwise."""
    if isinstance(expr, sp.Indexed):
        return 1 if expr.base == visible else 0
    if not expr.has(visible):
        return 0
    if isinstance(expr, sp.Add):
        degrees = [_degree(a, visible) for a in expr.args]
        return None if None in degrees else max(degrees)  # type: ignore[type-var]
    if isinstance(expr, sp.Mul):
        degrees = [_degree(a, visible) for a in expr.args]
        if None in degrees or sum(degrees) > 1:  # type: ignore[arg-type]
            return None
        return sum(degrees)  # type: ignore[arg-type]
    if isinstance(expr, sp.Sum):
        return _degree(expr.function, visible)
    if isinstance(expr, sp.Pow) and expr.exp == 1:
        return _degree(expr.base, visible)
    return None


def _walk(expr: sp.Expr, visible: sp.IndexedBase, uses: _Uses) -> None:
    if not expr.has(visible):
        return
    if isinstance(expr, sp.Sum) and _degree(expr, visible) == 1:
        uses.projections.append(expr)
        return
    if isinstance(expr, sp.Indexed):
        uses.direct = True
        return
    if isinstance(expr, BOUNDED):
        uses.bounded = True
        return
    for arg in expr.args:
        _walk(arg, visible, uses)


def _count(projections: list[sp.Expr], visible_size: sp.Expr, defaults: dict
           ) -> int | None:
    """How many linear combinations the projections are at the default sizes (each
    sum's free indices enumerate them); None when one runs over v's own dimension
    (then there may be as many as v has entries)."""
    total = 0
    for projection in dict.fromkeys(projections):
        count = 1
        for index in projection.free_symbols:
            if isinstance(index, sp.Idx):
                size = index.upper - index.lower + 1
                if size == visible_size:
                    return None
                count *= int(size.subs(defaults))
        total += count
    return total


def normalisability_warnings(derivation: Derivation) -> list[Diagnostic]:
    """The warnings of the module docstring, positioned at the energy."""
    symbolic = derivation.model.symbolic
    checked = symbolic.checked
    if checked.visible.domain != "real":  # a sum over finitely many states: always finite
        return []
    visible, name = symbolic.visible, checked.visible.name
    dim = checked.visible.shape[0]
    size = int(symbolic.dims[dim].subs(symbolic.default_sizes))
    free_energy = inline(derivation.free_energy, visible, symbolic.definition_of)
    span = checked.energy.value.span
    advice = f"add a term that grows in every direction, such as sum(i: {name}[i]^2) / 2"
    if _degree(free_energy, visible) == 1:
        return [Diagnostic(f"the model cannot be normalised: F is linear in '{name}', so "
                           f"exp(-F) grows without bound along -grad F; {advice}",
                           span, "warning")]
    uses = _Uses()
    _walk(free_energy, visible, uses)
    if uses.direct:
        return []
    if not uses.projections:
        return [Diagnostic(f"the model cannot be normalised: '{name}' appears only inside "
                           "sigmoid or tanh, so F is bounded and exp(-F) does not vanish "
                           f"at infinity; {advice}", span, "warning")]
    count = _count(uses.projections, symbolic.dims[dim], symbolic.default_sizes)
    if count is None or count >= size:
        return []
    shown = shorten(", ".join(dsl_str(p) for p in dict.fromkeys(uses.projections)), 60)
    return [Diagnostic(f"the model cannot be normalised: F depends on '{name}' only through "
                       f"{count} linear combination{'s' * (count != 1)} of its {size} "
                       f"entries ({shown}), so exp(-F) is constant along the other "
                       f"{size - count} direction{'s' * (size - count != 1)} (at the "
                       f"default sizes); {advice}",
                       span, "warning")]
