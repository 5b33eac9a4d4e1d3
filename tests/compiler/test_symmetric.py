"""Sums over a pair of indices of a symmetric summand, over each pair once
(plan/symmetric.py): the product's code against einsum on symmetric operands, the outer
squares it recognises, specs taking each path (an outer square, one times a shared or
a per-row matrix, a formed operand) checked against autograd at odd and even sizes, and
torch.func through the DEM's."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.emit.module import runtime_source
from energydsl.compiler.loading import load_module
from energydsl.compiler.plan.program import BATCH, Operand
from energydsl.compiler.plan.symmetric import (
    gathered_rows,
    outer_square,
    pair_sides,
    pairs_product_code,
)

from support import SPECS, randomise

SIZES = {"n": 5, "a": 4, "k": 3, "j": 2, "b": 4}
INDICES = {c: BATCH if c == "n" else sp.Symbol(c) for c in SIZES}


def _shape_code(index: sp.Basic) -> str:
    return str(SIZES["n" if index == BATCH else str(index)])


@pytest.fixture(scope="module")
def layout() -> tuple[torch.Tensor, torch.Tensor]:
    scope: dict = {"torch": torch}
    exec(runtime_source("_circulant_layout"), scope)  # noqa: S102
    return scope["_circulant_layout"](SIZES["a"], torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize(("equation", "reorder"), [
    ("kab,nab->kn", False), ("nab,kab->nk", False), ("nba,kab->nk", False),
    ("kab,nab->kn", True), ("kjab,nab->kjn", False), ("nab,kjba->nkj", False)])
def test_symmetric_pairs_sum_over_each_pair_once(layout, equation, reorder):
    """sum(a, b: X Y) with X and Y symmetric in (a, b) as one product over the layout's
    entries, weighted: against einsum on symmetric operands."""
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    generator = torch.Generator().manual_seed(1)
    tensors = []
    for t in terms:
        raw = torch.randn([SIZES[c] for c in t], generator=generator, dtype=torch.float64)
        tensors.append(raw + raw.transpose(-1, -2))  # symmetric in its last two axes
    operands = [Operand(f"x{k}", tuple(INDICES[c] for c in t)) for k, t in enumerate(terms)]
    sides = pair_sides(operands, inputs, out, "ab", reorder)
    assert sides is not None
    if reorder:  # the batched operand first: [N, entries] x [entries, K]
        assert BATCH in sides[0][0].indices

    def rows(operand: Operand, free: str, weighted: bool) -> str:
        count = "-1" if "n" in free else " * ".join(str(SIZES[c]) for c in free)
        code = gathered_rows(operand.code, count, str(SIZES["a"]), "layout")
        return f"{code} * layout[1]" if weighted else code

    code, letters = pairs_product_code(sides, rows, INDICES, _shape_code)
    assert "index_select" in code and "layout[1]" in code
    scope = {"torch": torch, "layout": layout, **{f"x{k}": t for k, t in enumerate(tensors)}}
    value = eval(code, scope)  # noqa: S307
    torch.testing.assert_close(value, torch.einsum(f"{inputs}->{letters}", *tensors))
    if not reorder:
        assert letters == out


def test_pair_sides_need_the_pair_last_in_both_and_an_axis_of_their_own():
    operands = [Operand("x0", (INDICES["a"], INDICES["k"], INDICES["b"])),
                Operand("x1", (BATCH, INDICES["a"], INDICES["b"]))]
    assert pair_sides(operands, "akb,nab", "kn", "ab", False) is None
    operands = [Operand("x0", (INDICES["a"], INDICES["b"])),
                Operand("x1", (BATCH, INDICES["a"], INDICES["b"]))]
    assert pair_sides(operands, "ab,nab", "n", "ab", False) is None


a, b = sp.Idx("a", (0, 3)), sp.Idx("b", (0, 3))
v, u, M = sp.IndexedBase("v"), sp.IndexedBase("u"), sp.IndexedBase("M")


@pytest.mark.parametrize(("formula", "expected"), [
    (v[a] * v[b], (v[a], None)),
    ((1 - v[a]) * v[a] * (1 - v[b]) * v[b], ((1 - v[a]) * v[a], None)),
    (v[a] ** 2 * v[b] ** 2 * (M[a, b] + M[b, a]), (v[a] ** 2, M[a, b] + M[b, a])),
    (v[a] * u[b], None),                      # two different vectors
    (M[a, b] + M[b, a], None),                # no vector
    (2 * v[a] * v[b], None),                  # a factor reading neither index
    (sp.exp(v[a] * v[b]), None),
])
def test_outer_squares_recognised(formula, expected):
    assert outer_square(formula, a, b) == expected


HEAD = """model {name}
dim D = 4
dim H = 16
dim K = 3
visible x : real[D]
param V[H, D] ~ normal(0.3)
param A[K, H] ~ normal(0.3)
{params}
let t[h] = tanh(sum(i: V[h, i] * x[i]))
{lets}
log density p(x) = -sum(i: x[i]^2) / 2 + sum(k: sigmoid(sum(h1, h2: {summand})))
"""
PATHS = {  # name: (extra parameters, lets, summand, code the pair step must show)
    "shared_matrix": ("param M[H, H] ~ normal(0.3)", "",
                      "A[k, h1] * A[k, h2] * (M[h1, h2] + M[h2, h1]) * t[h1] * t[h2]",
                      ".reshape(-1).index_select(0,"),
    "per_row_matrix": ("param B[K, H, H] ~ normal(0.3)", "",
                       "A[k, h1] * A[k, h2] * (B[k, h1, h2] + B[k, h2, h1]) * t[h1] * t[h2]",
                       "_circulant_pairs(self.A)\n            * _t"),
    "formed": ("", "", "A[k, h1] * A[k, h2] * exp(t[h1] * t[h2])",
               ".reshape(-1, self.H * self.H).index_select(1,"),
    # symmetric through the lets' bodies only; the score's step for dq/dx has the sum
    # (M + M^T) as its smallest factor group, which once printed without parentheses
    "through_lets": ("param M[H, H] ~ normal(0.3)",
                     "let P[k, h1, h2] = A[k, h1] * A[k, h2]\n"
                     "let q[h1, h2] = t[h1] * t[h2] * (M[h1, h2] + M[h2, h1])",
                     "P[k, h1, h2] * q[h1, h2]",
                     "q.reshape(-1, self.H * self.H).index_select(1,"),
    "declared_symmetric": ("param L[H, H] ~ normal(0.3) where symmetric",
                           "let P[k, h1, h2] = A[k, h1] * A[k, h2]\n"
                           "let q[h1, h2] = t[h1] * t[h2] * L[h1, h2]",
                           "P[k, h1, h2] * q[h1, h2]",
                           "q.reshape(-1, self.H * self.H).index_select(1,"),
}


@pytest.mark.parametrize("name", sorted(PATHS))
@pytest.mark.parametrize("H", [9, 8])
def test_specs_taking_each_path_match_autograd(name, H):
    params, lets, summand, shows = PATHS[name]
    compiled = compile_source(HEAD.format(name=name.title().replace("_", ""), params=params,
                                          lets=lets, summand=summand), f"{name}.edsl")
    assert "_circulant_layout(self.H" in compiled.source and shows in compiled.source
    report = check_compiled(compiled, {"D": 4, "H": H, "K": 3})
    assert report.ok, report.table()
    assert {"score", "laplacian", "sm_loss"} <= {row.quantity for row in report.rows}



class _SmLoss(torch.nn.Module):
    """A model's sm_loss as a module's forward, for torch.func.functional_call."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.sm_loss(x)


def test_torch_func_takes_per_sample_gradients_of_the_dem():
    """The DEM's sm_loss reads `_circulant_pairs`, an autograd.Function: torch.func's grad
    and vmap go through it (per-sample gradients, as a DP-SGD user takes them)."""
    source = (SPECS / "dem.edsl").read_text()
    model = load_module(compile_source(source, "specs/dem.edsl").source, "dem_func").DEM(
        D=6, H=9, K=3, dtype=torch.float64)
    randomise(model, 0.3, seed=1)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    names = ["V", "W", "b", "c"]
    loss = _SmLoss(model)

    def one(params: dict, row: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, params, (row[None],), strict=False)

    params = {f"model.{name}": getattr(model, name).detach() for name in names}
    per_sample = torch.func.vmap(torch.func.grad(one), in_dims=(None, 0))(params, x)
    for k in range(len(x)):
        expected = torch.autograd.grad(model.sm_loss(x[k:k + 1]),
                                       [getattr(model, name) for name in names])
        for name, value in zip(names, expected, strict=True):
            torch.testing.assert_close(per_sample[f"model.{name}"][k], value)
