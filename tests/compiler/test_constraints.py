"""Constrained parameters: `where positive` (softplus of the raw value, the initialiser
giving the value) against its definition, through the compiler's sign facts and `check`."""

from __future__ import annotations

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module

POT = """model PoT
dim D = 4
dim K = 3
visible v : real[D]
hidden s : positive[K]
param J[K, D] ~ normal(0.3)
param alpha[K] ~ {init} where positive
let y[k] = sum(i: J[k, i] * v[i])
energy E(v, s) = sum(i: v[i]^2) / 2 + sum(k: s[k] * (1 + y[k]^2 / 2) + (1 - alpha[k]) * log(s[k]))
"""


@pytest.mark.parametrize(("init", "low", "high"), [
    ("constant(1.5)", 1.5, 1.5), ("ones", 1.0, 1.0), ("uniform(0.5, 2)", 0.5, 2.0),
    ("constant(40)", 40.0, 40.0)])  # softplus is the identity to rounding there
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_initialiser_gives_the_value(init, low, high, dtype):
    compiled = compile_source(POT.format(init=init), "pot.edsl")
    model = load_module(compiled.source).PoT(dtype=dtype)
    value = model.alpha_value()
    assert value.dtype == dtype and value.shape == (3,)
    assert bool(((value >= low * (1 - 1e-6)) & (value <= high * (1 + 1e-6))).all())
    torch.testing.assert_close(value, torch.nn.functional.softplus(model.alpha))


def test_a_gamma_shape_that_is_a_positive_parameter_compiles_and_checks():
    """alpha[k] > 0, the Gamma integral's condition, holds for every raw value."""
    compiled = compile_source(POT.format(init="constant(1.5)"), "pot.edsl")
    assert "loggamma(alpha[k])" in compiled.source
    report = check_compiled(compiled)
    assert report.ok, report.table()


def test_a_scalar_positive_parameter():
    text = ("model S\ndim D = 3\nvisible v : real[D]\nparam c ~ constant(2) where positive\n"
            "param m[D]\nenergy E(v) = c * sum(i: (v[i] - m[i])^2) / 2 - log(c) * D / 2\n")
    compiled = compile_source(text, "s.edsl")
    model = load_module(compiled.source).S(dtype=torch.float64)
    assert model.c_value().item() == pytest.approx(2.0)
    with torch.no_grad():
        model.c.fill_(-30.0)  # any raw value: still positive
    assert model.c_value().item() > 0
    report = check_compiled(compiled)
    assert report.ok, report.table()


def test_the_pot_spec_is_the_student_t_product_in_closed_form():
    """specs/pot.edsl against F = sum_k alpha_k log(1 + y_k^2 / 2) - log Gamma(alpha_k)
    + v^T v / 2 (the Gamma integral by hand), at random parameters."""
    from support import load_class

    cls, _ = load_class("pot")
    model = cls(D=5, K=3, dtype=torch.float64)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.J.copy_(torch.randn(3, 5, generator=generator, dtype=torch.float64))
        model.alpha.copy_(torch.randn(3, generator=generator, dtype=torch.float64))
    v = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    alpha = torch.nn.functional.softplus(model.alpha)
    y = v @ model.J.T
    expected = ((alpha * torch.log1p(y**2 / 2)).sum(1) - torch.lgamma(alpha).sum()
                + (v**2).sum(1) / 2)
    torch.testing.assert_close(model.free_energy(v), expected.detach())
