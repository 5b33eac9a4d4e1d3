"""The planner's rewrites (energydsl.compiler.plan.rewrites), one by one: each plans the
identity in its docstring, and the planned program computes what the expression says
(checked against numpy written out by hand)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import sympy as sp
import torch

from energydsl.compiler.driver import analyse
from energydsl.compiler.plan import rewrites
from energydsl.compiler.plan.planner import Planner
from energydsl.compiler.plan.program import Operand

N = 5


def planner_for(text: str) -> tuple[Planner, dict]:
    derivation = analyse(text)
    symbolic = derivation.model.symbolic
    names = {str(b.label) if isinstance(b, sp.IndexedBase) else str(b): b
             for b in [symbolic.visible, *symbolic.params.values()]}
    names.update({name: symbol for name, symbol in symbolic.dims.items()})
    return Planner(derivation), names


def run(planner: Planner, operand: Operand, values: dict, x: np.ndarray) -> np.ndarray:
    """Execute the steps the operand needs with the given parameter values and data."""
    checked = planner.symbolic.checked
    module = SimpleNamespace(**{k: torch.tensor(v) for k, v in values.items()},
                             **{d: checked.dims[d].default for d in checked.dims})
    data = torch.tensor(x)
    scope = {"torch": torch, "math": math, "self": module, "_like": data,
             "_batch": len(x), checked.visible.name: data}
    for step in planner.program.needed([operand.code]):
        exec(f"{step.name} = {step.code}", scope)  # noqa: S102 - the planner's own code
    return eval(operand.code, scope).numpy()  # noqa: S307


RBM = """model R
dim D = 6
dim K = 4
dim H = 3
visible v : real[D]
param W[D, K]
param V[H, D]
param c[H]
free energy F(v) = sum(i: v[i]^2) / 2
"""
RNG = np.random.default_rng(0)
VALUES = {"W": RNG.normal(size=(6, 4)), "V": RNG.normal(size=(3, 6)), "c": RNG.normal(size=3)}
X = RNG.normal(size=(N, 6))


def test_a_sum_over_an_axis_no_factor_carries_counts_its_size():
    """sum_j f = D f: the sm objective of F = sum(v)^4 (score constant in j)."""
    derivation = analyse("model P\ndim D = 3\nvisible v : real[D]\n"
                         "free energy F(v) = sum(i: v[i])^4\n")
    planner = Planner(derivation)
    total = X[:, :3].sum(axis=1)
    value = run(planner, planner.define("sm_objective"), {}, X[:, :3])
    assert value == pytest.approx(0.5 * 3 * 16 * total**6 - 12 * 3 * total**2)
    j = sp.Idx("j", sp.Symbol("D", integer=True, positive=True))
    assert rewrites.size_of_missing_axes([j], set(), set()) == j.upper + 1


def test_an_index_one_factor_carries_is_summed_inside_it():
    """sum_{i,k} v_i W_ik = sum_i v_i (sum_k W_ik): the row sums once, not per sample."""
    planner, s = planner_for(RBM)
    i, k = sp.Idx("i", s["D"]), sp.Idx("k", s["K"])
    factors = rewrites.nest_private_indices(planner, [s["v"][i], s["W"][i, k]], ())
    assert factors[0] == s["v"][i] and isinstance(factors[1], sp.Sum)
    assert factors[1].limits[0][0] == k
    value = run(planner, planner.operand(sp.Sum(s["v"][i] * s["W"][i, k], (i, 0, s["D"] - 1),
                                                (k, 0, s["K"] - 1))), VALUES, X)
    assert value == pytest.approx(X @ VALUES["W"].sum(axis=1))


def test_factors_over_the_same_axes_are_one_elementwise_step():
    planner, s = planner_for(RBM)
    h, i = sp.Idx("h", s["H"]), sp.Idx("i", s["D"])
    from energydsl.compiler.functions import sigmoid

    g = sigmoid(s["c"][h])
    grouped = rewrites.group_elementwise(planner, [g, 1 - g, s["V"][h, i]])
    assert len(grouped) == 2 and sp.Mul(g, 1 - g) in grouped


def test_a_squared_sum_becomes_a_gram_matrix_where_cheaper():
    """sum_i (sum_h c_h V_hi)^2 = c^T (V V^T) c: with H < D the Gram form is cheaper."""
    planner, s = planner_for(RBM.replace("dim H = 3", "dim H = 2").replace("dim D = 6",
                                                                          "dim D = 64"))
    h, i = sp.Idx("h", s["H"]), sp.Idx("i", s["D"])
    inner = sp.Sum(s["c"][h] * s["V"][h, i] * s["v"][i], (h, 0, s["H"] - 1))
    expr = sp.Sum(inner**2, (i, 0, s["D"] - 1))
    scalars, factors, summed = rewrites.merge_nested_sums(planner, expr)
    assert len(factors) > 1 and len(summed) == 3  # merged: i, h and a renamed copy of h
    values = {"V": RNG.normal(size=(2, 64)), "c": RNG.normal(size=2)}
    x = RNG.normal(size=(N, 64))
    value = run(planner, planner.operand(expr), values, x)
    expected = (((values["c"][:, None] * values["V"])[None] * x[:, None]).sum(1) ** 2).sum(1)
    assert value == pytest.approx(expected)


GBRBM = """model G
dim D = 64
dim K = 8
visible v : real[D]
hidden h : binary[K]
param W[D, K]
energy E(v, h) = sum(i: v[i]^2) / 2 - sum(i, k: v[i] * W[i, k] * h[k])
"""


def test_the_sm_objective_never_forms_the_score_and_reuses_the_preactivation():
    """|W s - v|^2 = s^T (W^T W) s - 2 a.s + |v|^2 with a = v W planned once."""
    planner, _ = planner_for(GBRBM)
    operand = planner.define("sm_objective")
    needed = planner.program.needed([operand.code])
    assert "score" not in {step.name for step in needed}
    assert sum("v @ self.W" in step.code for step in needed) == 1
    values = {"W": RNG.normal(size=(64, 8)) * 0.3}
    x = RNG.normal(size=(N, 64))
    a = x @ values["W"]
    s_ = 1 / (1 + np.exp(-a))
    score = s_ @ values["W"].T - x
    laplacian = ((values["W"] ** 2)[None] * (s_ * (1 - s_))[:, None]).sum((1, 2)) - 64
    expected = 0.5 * (score**2).sum(1) + laplacian
    assert run(planner, operand, values, x) == pytest.approx(expected)


def test_a_product_already_computed_is_reused_not_recomputed():
    planner, s = planner_for(RBM)
    i, k = sp.Idx("i", s["D"]), sp.Idx("k", s["K"])
    first = planner.operand(sp.Sum(s["v"][i] * s["W"][i, k], (i, 0, s["D"] - 1)))
    steps = len(planner.program.steps)
    second = planner.operand(sp.Sum(s["W"][i, k] * s["v"][i], (i, 0, s["D"] - 1)))
    assert second.code == first.code and len(planner.program.steps) == steps


def test_a_column_sum_of_squares_is_the_diagonal_of_a_gram_matrix_formed_anyway():
    """sum(i: W[i, j]^2) next to W^T W in the same method (the GB-RBM's sm_loss) is
    torch.diagonal(W^T W): no D x K square of W, and the same loss."""
    from energydsl.compiler.driver import compile_source
    from energydsl.compiler.loading import load_module

    from support import SPECS

    compiled = compile_source((SPECS / "gbrbm.edsl").read_text(), "gbrbm.edsl")
    body = compiled.source.split("def sm_loss(")[1].split("def ")[0]
    assert "torch.diagonal(" in body and "torch.square(self.W)" not in body
    model = load_module(compiled.source).GBRBM(D=7, K=3, dtype=torch.float64)
    with torch.no_grad():
        model.W.normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    v = torch.randn(4, 7, dtype=torch.float64)
    W = model.W.detach()
    g = torch.sigmoid(v @ W)
    score = -v + g @ W.T
    laplacian = -7 + (g * (1 - g) @ (W**2).sum(0))
    expected = (0.5 * score.square().sum(1) + laplacian).mean()
    torch.testing.assert_close(model.sm_loss(v), expected)
