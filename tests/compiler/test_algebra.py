"""The index-form algebra (energydsl.compiler.algebra), rule by rule: each rewrite keeps
the value (checked by SymPy's own expansion of the sums at small sizes) and has the
shape its docstring promises."""

from __future__ import annotations

import pytest
import sympy as sp
from index_numerics import D, H, K, all_points, idx, tensors, value

from energydsl.compiler.algebra import (
    canonicalise,
    diff,
    distribute,
    fold_definitions,
    make_sum,
    substitute_index,
)
from energydsl.compiler.functions import sigmoid
from energydsl.compiler.ir import Definition

i, j, p = idx("i", D), idx("j", D), idx("p", D)
h, k = idx("h", H), idx("k", K)
W, V, a, b, v = (sp.IndexedBase(n, real=True) for n in "WVabv")
VALUES = tensors({"W": (D, K), "V": (H, D), "a": (D,), "b": (D,), "v": (D,)})


def test_a_sum_of_terms_is_a_sum_of_sums():
    body = a[i] + b[i] * v[i]
    result = make_sum(body, [(i, 0, D - 1)])
    assert isinstance(result, sp.Add) and len(result.args) == 2
    assert value(result, VALUES) == pytest.approx(value(sp.Sum(body, (i, 0, D - 1)), VALUES))


def test_a_constant_factor_leaves_the_sum_and_a_constant_sum_is_a_product():
    c = sp.Symbol("c", real=True)
    assert make_sum(c * a[i], [(i, 0, D - 1)]) == c * sp.Sum(a[i], (i, 0, D - 1))
    assert make_sum(c, [(i, 0, D - 1)]) == D * c
    # the missing axis of a two-index sum counts once
    assert make_sum(a[i], [(i, 0, D - 1), (k, 0, K - 1)]) == K * sp.Sum(a[i], (i, 0, D - 1))


def test_a_delta_resolves_its_sum():
    result = make_sum(sp.KroneckerDelta(i, p) * W[i, k] * a[i], [(i, 0, D - 1)])
    assert result == W[p, k] * a[p]


def test_nested_sums_merge_with_bound_indices_renamed_apart():
    merged = make_sum(sp.Sum(a[i] * W[j, k], (i, 0, D - 1)), [(j, 0, D - 1)])
    assert isinstance(merged, sp.Sum) and len(merged.limits) == 2
    # the outer index bound again inside: the inner one is renamed, and the outer sum,
    # now over an index nothing uses, is a factor D
    clash = make_sum(sp.Sum(a[i] * b[i], (i, 0, D - 1)), [(i, 0, D - 1)])
    assert clash.as_coeff_Mul()[0] == 1 and D in clash.free_symbols
    expected = 3 * sum(VALUES["a"] * VALUES["b"])
    assert value(clash, VALUES) == pytest.approx(expected)


def test_substitution_does_not_capture_a_bound_index():
    expr = sp.Sum(W[i, k] * a[j], (i, 0, D - 1))
    result = substitute_index(expr, j, i)  # the free j becomes i; the bound i is renamed
    assert i in result.free_symbols
    expected = sp.Sum(W[j, k] * a[i], (j, 0, D - 1))
    for at_i, at_k in all_points(i, k):
        point = {i: at_i, k: at_k}
        assert value(result, VALUES, point) == pytest.approx(value(expected, VALUES, point))


def test_diff_resolves_deltas_and_follows_lets():
    energy = make_sum(a[i] * v[i] ** 2, [(i, 0, D - 1)])
    assert diff(energy, v, (p,)) == 2 * a[p] * v[p]
    # through a let u[h] = sum(i: V[h, i] v[i]): d sum(h: sigmoid(u[h])) / dv[p]
    u = sp.IndexedBase("u", real=True)
    let = Definition(u, (h,), make_sum(V[h, i] * v[i], [(i, 0, D - 1)]))
    lookup = {u: let}.get
    energy = make_sum(sigmoid(u[h]), [(h, 0, H - 1)])
    derivative = diff(energy, v, (p,), lookup)
    assert u[h] in derivative.atoms(sp.Indexed)  # the let stays named
    written_out = derivative.replace(lambda n: isinstance(n, sp.Indexed) and n.base == u,
                                     lambda n: let.body.subs(h, n.indices[0]))
    x = sp.symbols("x0:3", real=True)
    explicit = sum(1 / (1 + sp.exp(-sum(VALUES["V"][r, c] * x[c] for c in range(3))))
                   for r in range(2))
    for q in range(3):
        at = dict(zip(x, VALUES["v"], strict=True))
        expected = float(sp.diff(explicit, x[q]).subs(at))
        got = value(written_out.subs(p, q), VALUES)
        assert got == pytest.approx(expected, rel=1e-10)


def test_distribute_splits_only_where_a_sum_is():
    g = sp.Symbol("g", real=True)
    total = sp.Sum(a[i], (i, 0, D - 1))
    assert distribute(g * (1 + total)) == g + g * total
    assert distribute(g * (1 - g)) == g * (1 - g)


def test_canonicalise_renames_after_the_spec_and_sorts_symmetric_indices():
    L = sp.IndexedBase("L", real=True)
    x1 = sp.Idx("x1", D)
    expr = sp.Sum(L[x1, p] * a[x1], (x1, 0, D - 1))
    result = canonicalise(expr, {D: ["i", "j"]}, frozenset({L}))
    assert result == sp.Sum(L[i, p] * a[i], (i, 0, D - 1)).xreplace({L[i, p]: L[i, p]})
    assert str(result.limits[0][0]) == "i"


def test_fold_definitions_writes_a_let_back_by_name():
    u, g = sp.IndexedBase("u", real=True), sp.IndexedBase("g", real=True)
    let = Definition(g, (h,), sigmoid(u[h]))
    expr = make_sum(sigmoid(u[h]) * (1 - sigmoid(u[h])), [(h, 0, H - 1)])
    assert fold_definitions(expr, [let]) == make_sum(g[h] * (1 - g[h]), [(h, 0, H - 1)])
