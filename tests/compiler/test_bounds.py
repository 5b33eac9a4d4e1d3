"""Bounds and sign facts (energydsl.compiler.bounds): what they prove, checked against
values, and what they must not claim."""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.bounds import always_true, bounds, sign_assumptions
from energydsl.compiler.functions import sigmoid, softplus

X = sp.Symbol("x", real=True)
I = sp.Idx("i", sp.Symbol("D", integer=True, positive=True))
A = sp.IndexedBase("a", real=True)


def test_bounds_see_what_assumptions_cannot():
    assert always_true(sp.tanh(X) < 1) and always_true(sigmoid(X) > 0)
    assert always_true(sp.tanh(X) ** 2 < 1) and always_true(softplus(X) > 0)
    assert not always_true(X < 1) and not always_true(sp.tanh(X) < sp.Rational(1, 2))
    (low, low_attained), (high, _) = bounds(2 * sp.tanh(X) + 1)
    assert (low, high, low_attained) == (-1, 3, False)


def test_sums_keep_the_sign_of_their_terms():
    assert sign_assumptions(sp.Sum(sp.exp(A[I]), (I, 0, I.upper))) == {"positive": True}
    assert sign_assumptions(sp.Sum(A[I] ** 2, (I, 0, I.upper))) == {"nonnegative": True}
    assert sign_assumptions(-sp.Sum(sigmoid(A[I]), (I, 0, I.upper))) == {"negative": True}
    assert sign_assumptions(sp.Sum(A[I], (I, 0, I.upper))) == {"real": True}


def test_sign_facts_of_what_lets_are_made_of():
    assert sign_assumptions(sp.exp(X) + 1) == {"positive": True}
    assert sign_assumptions(softplus(X) + sp.tanh(X) ** 2) == {"positive": True}
    assert sign_assumptions(sp.tanh(X) + 1) == {"positive": True}  # > 0, never attained
    assert sign_assumptions(X**2) == {"nonnegative": True}
    assert sign_assumptions(X + 1) == {"real": True}
    assert sign_assumptions(sp.tanh(X) - 1) == {"negative": True}
