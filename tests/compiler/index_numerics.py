"""An independent evaluator of index-form SymPy expressions, for unit tests: sizes are
substituted and SymPy's own `doit` expands every sum into explicit terms, then every
tensor entry is replaced by a number. Slow, but it shares nothing with the compiler's
rewrites, so it can judge them."""

from __future__ import annotations

import itertools

import numpy as np
import sympy as sp

D, K, H = sp.symbols("D K H", integer=True, positive=True)
SIZES = {D: 3, K: 2, H: 2}


def idx(name: str, size: sp.Symbol) -> sp.Idx:
    return sp.Idx(name, size)


def tensors(shapes: dict[str, tuple[sp.Symbol, ...]], seed: int = 0) -> dict:
    """Random values for IndexedBases named in `shapes`, at SIZES."""
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=tuple(SIZES[s] for s in shape)) for name, shape in
            shapes.items()}


def value(expr: sp.Expr, values: dict, free: dict | None = None) -> float:
    """expr at SIZES with the tensors' `values` and free indices set by `free`."""
    plain = sp.sympify(expr).replace(lambda n: isinstance(n, sp.Idx),
                                     lambda n: sp.Symbol(str(n.label), integer=True))
    plain = plain.subs(SIZES)
    for index, at in (free or {}).items():
        plain = plain.subs(sp.Symbol(str(index.label), integer=True), at)
    plain = plain.doit()
    entries = {}
    for node in plain.atoms(sp.Indexed):
        position = tuple(int(i) for i in node.indices)
        entries[node] = values[str(node.base.label)][position]
    return float(plain.xreplace(entries).evalf())


def table(expr: sp.Expr, values: dict, index: sp.Idx) -> list[float]:
    """expr at every value of its free index `index`."""
    size = int((index.upper - index.lower + 1).subs(SIZES))
    return [value(expr, values, {index: k}) for k in range(size)]


def all_points(*indices: sp.Idx):
    ranges = [range(int((i.upper - i.lower + 1).subs(SIZES))) for i in indices]
    return itertools.product(*ranges)
