"""Deep stacks of lets: the score and Laplacian by forward propagation through the layers
(compiler/chain.py), against autograd on the spec's own reference evaluator (`check`)
and against a deep energy model written out in torch."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module
from energydsl.compiler.sympy_functions import JacobianSquares

from support import SPECS, randomise

F64 = torch.float64

HEAD = """model Deep
dim D = {D}
dim H = {H}
dim K = 5
visible x : real[D]
param V1[H, D] ~ normal(0.3)
param V2[H, H] ~ normal(0.3)
param V3[H, H] ~ normal(0.3)
param W[K, H] ~ normal(0.3)
param a[H] ~ normal(0.3)
param c[K] ~ normal(0.3)
"""

DEEP_SPECS = {
    # explicit pre-activation lets, tanh and softplus layers, biases
    "tanh_softplus": """
let u1[h] = sum(i: V1[h, i] * x[i]) + a[h]
let g1[h] = tanh(u1[h])
let g2[h] = softplus(sum(j: V2[h, j] * g1[j]))
let g3[h] = sigmoid(sum(j: V3[h, j] * g2[j]))
log density p(x) = -sum(i: x[i]^2) / 2 + sum(k: softplus(sum(h: W[k, h] * g3[h]) + c[k]))
""",
    # the first layer inside its function: its affine argument becomes the base
    "inline_first_layer": """
let g1[h] = sigmoid(sum(i: V1[h, i] * x[i]) + a[h])
let g2[h] = sigmoid(sum(j: V2[h, j] * g1[j]))
let g3[h] = tanh(sum(j: V3[h, j] * g2[j]))
log density p(x) = -sum(i: x[i]^2) / 2 + sum(k: softplus(sum(h: W[k, h] * g3[h]) + c[k]))
""",
    # v reaches F around the first layer (a skip connection): propagated in v's space
    "skip_connection": """
param R[K, D] ~ normal(0.3)
let u1[h] = sum(i: V1[h, i] * x[i])
let g2[h] = sigmoid(sum(j: V2[h, j] * sigmoid(u1[j])))
let g3[h] = sigmoid(sum(j: V3[h, j] * g2[j]))
log density p(x) = -sum(i: x[i]^2) / 2
    + sum(k: softplus(sum(h: W[k, h] * g3[h]) + sum(i: R[k, i] * x[i]) * c[k]))
""",
    # a plain chain of layers, one with its weights written transposed (V2[j, h]): one
    # `_jacobian_squares` where the first layer is the base
    "chain_transposed": """
let g1[h] = sigmoid(sum(i: V1[h, i] * x[i]) + a[h])
let g2[h] = tanh(sum(j: V2[j, h] * g1[j]))
let z[k] = sum(h: W[k, h] * g2[h]) + c[k]
log density p(x) = -sum(i: x[i]^2) / 2 + sum(k: softplus(z[k]))
""",
    # the same chain under a top whose second derivative couples the units (not a chain)
    "coupled_top": """
let g1[h] = sigmoid(sum(i: V1[h, i] * x[i]) + a[h])
let g2[h] = tanh(sum(j: V2[h, j] * g1[j]))
let z[k] = sum(h: W[k, h] * g2[h]) + c[k]
log density p(x) = -sum(i: x[i]^2) / 2 - sum(k: z[k])^2 / 2
""",
    # products of two lets, powers, a scalar let and a logsumexp on top
    "products_powers_scalars": """
let u1[h] = sum(i: V1[h, i] * x[i])
let g1[h] = sigmoid(u1[h]) * tanh(u1[h])
let u2[h] = sum(j: V2[h, j] * g1[j])
let g2[h] = u2[h]^3 / 3 + sigmoid(u2[h]) * u2[h]
let s = sum(h: softplus(g2[h])^2)
let z[k] = sum(h: W[k, h] * g2[h]) + c[k] + log1p(s)
log density p(x) = -sum(i: x[i]^2) / 2 + logsumexp(k: tanh(z[k]))
""",
}


def deep(name: str, D: int = 7, H: int = 4) -> str:
    return HEAD.format(D=D, H=H) + DEEP_SPECS[name]


def assert_checks(compiled, **sizes) -> None:
    report = check_compiled(compiled, sizes)
    assert report.ok, report.table()
    quantities = {row.quantity for row in report.rows}
    assert {"score", "laplacian", "sm_loss"} <= quantities
    assert any(q.startswith("d sm_loss / d ") for q in quantities)


@pytest.mark.parametrize("name", sorted(DEEP_SPECS))
@pytest.mark.parametrize("D,H", [(7, 4), (3, 6)])  # the first layer narrower, then wider
def test_forward_form_matches_autograd(name, D, H):
    compiled = compile_source(deep(name, D, H), f"{name}.edsl")
    assert compiled.derivation.forward
    assert_checks(compiled, D=D, H=H, K=3)


@pytest.mark.parametrize("spec", ["dem3", "dem5"])
@pytest.mark.parametrize("sizes", [dict(D=6, H=4, K=3), dict(D=3, H=5, K=2)])
def test_deep_energy_models_in_specs_match_autograd(spec, sizes):
    compiled = compile_source((SPECS / f"{spec}.edsl").read_text(), f"specs/{spec}.edsl")
    assert compiled.derivation.forward
    assert_checks(compiled, **sizes)


def test_the_one_layer_dem_keeps_its_substituted_form():
    """Two nested functions: substitution plans into the same contractions and reads as
    the seed writes it, so the forward form is not used."""
    compiled = compile_source((SPECS / "dem.edsl").read_text(), "specs/dem.edsl")
    assert not compiled.derivation.forward


def _sums_over_pairs(expr: sp.Basic) -> int:
    """The most indices any sum in expr binds."""
    return max((len(node.limits) for node in sp.preorder_traversal(expr)
                if isinstance(node, sp.Sum)), default=0)


def test_no_definition_nests_sums_over_the_units_of_every_layer():
    """Each layer's Jacobian and Laplacian is one product with its weights and one
    quadratic form: no sum binds more than two indices however deep the model."""
    compiled = compile_source((SPECS / "dem5.edsl").read_text(), "specs/dem5.edsl")
    derivation = compiled.derivation
    bodies = [d.body for d in derivation.definitions.values()]
    assert max(_sums_over_pairs(body) for body in bodies) <= 2
    names = set(derivation.definitions)
    assert {"_weight_g5", "_scale_g5", "_slope_pre_g1"} <= names


@pytest.mark.parametrize(("name", "chained"), [("chain_transposed", True),
                                                ("coupled_top", False),
                                                ("tanh_softplus", False),
                                                ("products_powers_scalars", False)])
def test_a_plain_chain_of_layers_is_one_jacobian_squares(name, chained):
    """The Laplacian of a chain of layers, each reading the one before, is handed to one
    runtime helper (its Jacobians are not definitions); anything else (a top that reads a
    layer through a sum, products of lets) keeps a Jacobian and S definition per let."""
    derivation = compile_source(deep(name), f"{name}.edsl").derivation
    assert derivation.laplacian.has(JacobianSquares) == chained
    assert any(n.startswith("jac_") for n in derivation.definitions) != chained
    if chained:  # V2 written V2[j, h]: J @ V2, not J @ V2^T
        (step,) = [s for s in derivation.laplacian.atoms(JacobianSquares).pop().args[1:]
                   if str(s.args[1].label) == "V2"]
        assert str(step.args[0]) == "matmul_t"


def dem3_log_density(x, V1, V2, V3, W, b, c, sigma=1.0):
    g1 = torch.sigmoid(x @ V1.T)
    g2 = torch.sigmoid(g1 @ V2.T)
    g3 = torch.sigmoid(g2 @ V3.T)
    return (-(x**2).sum(1) / (2 * sigma**2) + x @ b
            + torch.nn.functional.softplus(g3 @ W.T + c).sum(1))


def test_dem3_against_the_network_written_in_torch():
    compiled = compile_source((SPECS / "dem3.edsl").read_text(), "specs/dem3.edsl")
    cls = load_module(compiled.source, "dem3_chain").DEM3
    model = randomise(cls(D=9, H=6, K=4, dtype=F64), 0.8, 3)
    params = [getattr(model, n).detach() for n in ("V1", "V2", "V3", "W", "b", "c")]
    x = torch.randn(5, 9, dtype=F64, requires_grad=True)
    log_p = dem3_log_density(x, *params)
    score = torch.autograd.grad(log_p.sum(), x, create_graph=True)[0]
    laplacian = sum(torch.autograd.grad(score[:, i].sum(), x, retain_graph=True)[0][:, i]
                    for i in range(9))
    y = x.detach()
    torch.testing.assert_close(model.free_energy(y), -log_p.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.score(y), score.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.laplacian(y), laplacian, rtol=1e-10, atol=1e-12)
    expected = (0.5 * (score.detach() ** 2).sum(1) + laplacian).mean()
    torch.testing.assert_close(model.sm_loss(y), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("first_layer", ["full rank", "a dead unit", "all zero",
                                         "wider than the input"])
def test_dem3_parameter_gradients_against_autograd(first_layer):
    """d sm_loss / d parameters against autograd through the torch network's exact SM,
    whichever factor of the first layer's Gram matrix `_row_space` takes: Cholesky, the
    fixed QR basis when a unit's weights are all zero (QR's own backward gives NaN
    there), or the input's own coordinates when H > D."""
    compiled = compile_source((SPECS / "dem3.edsl").read_text(), "specs/dem3.edsl")
    cls = load_module(compiled.source, "dem3_gradients").DEM3
    d, h = (4, 6) if first_layer == "wider than the input" else (9, 6)
    model = randomise(cls(D=d, H=h, K=4, dtype=F64), 0.8, 5)
    if first_layer == "a dead unit":
        with torch.no_grad():
            model.V1[2] = 0.0
    if first_layer == "all zero":  # as `param V1 ~ zeros` starts: QR's backward gave NaN
        with torch.no_grad():
            model.V1.zero_()
    names = ("V1", "V2", "V3", "W", "b", "c")
    params = [getattr(model, n) for n in names]
    x = torch.randn(5, d, dtype=F64, generator=torch.Generator().manual_seed(2))
    xr = x.clone().requires_grad_()
    log_p = dem3_log_density(xr, *params)
    score = torch.autograd.grad(log_p.sum(), xr, create_graph=True)[0]
    laplacian = sum(torch.autograd.grad(score[:, i].sum(), xr, create_graph=True)[0][:, i]
                    for i in range(d))
    expected = torch.autograd.grad((0.5 * (score**2).sum(1) + laplacian).mean(), params)
    got = torch.autograd.grad(model.sm_loss(x), params)
    for name, g, e in zip(names, got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-11, msg=name)
