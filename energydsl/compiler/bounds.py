"""Bounds of expressions over all real values of their symbols, and the sign facts they
give: enough to prove convergence conditions such as tanh(x) < 1 or exp(a) > 0, which
SymPy's assumptions alone cannot, and to carry a let's sign to the symbol standing for it.
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.functions import BY_CLASS

# Increasing functions (the table's facts): their value at a number, their limits.
_INCREASING = {cls: f.increasing for cls, f in BY_CLASS.items() if f.increasing is not None}


Bound = tuple[sp.Expr, bool]  # a bound's value and whether it is attained


def bounds(expr: sp.Expr) -> tuple[Bound, Bound]:
    """Lower and upper bounds of `expr` over all real values of its symbols, each as
    (value, attained): enough to see that a convergence condition such as tanh(x) < 1
    always holds, which SymPy's assumptions cannot."""
    if expr.is_number and expr.is_extended_real:
        return (expr, True), (expr, True)
    if isinstance(expr, sp.Add):
        parts = [bounds(a) for a in expr.args]
        low, high = ((sp.Add(*[p[k][0] for p in parts]), all(p[k][1] for p in parts))
                     for k in (0, 1))
        return low, high
    if isinstance(expr, sp.Mul) and expr.args[0].is_number:
        coefficient, rest = expr.as_coeff_Mul()
        (low, low_in), (high, high_in) = bounds(rest)
        if coefficient.is_positive:
            return (coefficient * low, low_in), (coefficient * high, high_in)
        if coefficient.is_negative:
            return (coefficient * high, high_in), (coefficient * low, low_in)
    if isinstance(expr, sp.Pow) and expr.exp.is_Integer and expr.exp > 0:
        return _power_bounds(bounds(expr.base), int(expr.exp))
    if isinstance(expr, sp.Sum) and all(_nonempty(limit) for limit in expr.limits):
        low, high = bounds(expr.function)
        return _sum_bound(low, 1), _sum_bound(high, -1)
    if type(expr) in _INCREASING:
        f, at_minus, at_plus = _INCREASING[type(expr)]
        (low, low_in), (high, high_in) = bounds(expr.args[0])
        return ((at_minus, False) if low == -sp.oo else (f(low), low_in),
                (at_plus, False) if high == sp.oo else (f(high), high_in))
    if expr.is_positive:
        return (0, False), (sp.oo, False)
    if expr.is_nonnegative:
        return (0, True), (sp.oo, False)
    if expr.is_negative:
        return (-sp.oo, False), (0, False)
    if expr.is_nonpositive:
        return (-sp.oo, False), (0, True)
    return (-sp.oo, False), (sp.oo, False)


def _sum_bound(bound: Bound, sign: int) -> Bound:
    """A bound of a sum from its terms' (sign 1: the lower, -1: the upper): the sum keeps
    the terms' sign, strictly where they are strictly signed; nothing more is known."""
    value, attained = bound
    if _true(sign * value > 0) or (_true(sp.Eq(value, 0)) and not attained):
        return sp.S.Zero, False
    if _true(sp.Eq(value, 0)):
        return sp.S.Zero, True
    return -sign * sp.oo, False


def _nonempty(limit: tuple) -> bool:
    """A sum's range holds at least one index (dimensions are positive)."""
    _, first, last = limit
    return _true(sp.sympify(last - first) >= 0)


def _true(relation) -> bool:
    """Whether SymPy decides `relation` is true (False where it cannot decide)."""
    return sp.sympify(relation) == sp.true


def _power_bounds(base: tuple[Bound, Bound], n: int) -> tuple[Bound, Bound]:
    """Bounds of x^n from those of x: increasing where n is odd or x >= 0; otherwise |x|^n,
    least at 0 when x can change sign (tanh(x)^2 lies in [0, 1))."""
    (low, low_in), (high, high_in) = base
    if n % 2 or _true(low >= 0):
        return (low**n, low_in), (high**n, high_in)
    if _true(high <= 0):
        return (high**n, high_in), (low**n, low_in)
    if _true(-low < high):
        return (sp.S.Zero, True), (high**n, high_in)
    if _true(-low > high):
        return (sp.S.Zero, True), (low**n, low_in)
    return (sp.S.Zero, True), (high**n, high_in or low_in)


def always_true(condition: sp.Basic) -> bool:
    """Whether a convergence condition holds for every real value of its symbols."""
    if condition is sp.true:  # SymPy settled it already (sigmoid(x) > 0)
        return True
    if isinstance(condition, sp.And):
        return all(always_true(c) for c in condition.args)
    if not isinstance(condition, sp.core.relational.Relational) or condition.rel_op == "==":
        return False
    (low, low_in), (high, high_in) = bounds(condition.lhs - condition.rhs)
    if condition.rel_op == "<":
        return _true(high < 0) or (_true(sp.Eq(high, 0)) and not high_in)
    if condition.rel_op == "<=":
        return _true(high <= 0)
    if condition.rel_op == ">":
        return _true(low > 0) or (_true(sp.Eq(low, 0)) and not low_in)
    return condition.rel_op == ">=" and _true(low >= 0)


def sign_assumptions(expr: sp.Expr) -> dict[str, bool]:
    """The SymPy assumptions a symbol standing for `expr` may carry: real, and positive
    or nonnegative (or negative, nonpositive) where the bounds show it."""
    (low, low_in), (high, high_in) = bounds(expr)
    if _true(low > 0) or (_true(sp.Eq(low, 0)) and not low_in):
        return {"positive": True}
    if _true(low >= 0):
        return {"nonnegative": True}
    if _true(high < 0) or (_true(sp.Eq(high, 0)) and not high_in):
        return {"negative": True}
    if _true(high <= 0):
        return {"nonpositive": True}
    return {"real": True}
