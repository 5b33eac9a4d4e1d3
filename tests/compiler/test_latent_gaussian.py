"""Real hidden units coupled to each other (probabilistic PCA, factor analysis, hidden
couplings): integrated jointly with a K x K precision, against the closed-form marginal
N(mu, W W^T + Psi) and the conditional of z given v; refusals where the integral is
not a Gaussian of fixed covariance."""

from __future__ import annotations

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module
from energydsl.errors import SpecError

from support import load_class

F64 = torch.float64


def _randomised(model, seed: int):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=F64) * 0.7)
    return model, generator


def test_ppca_is_the_gaussian_with_covariance_w_wt_plus_noise():
    """log_prob of specs/ppca.edsl against torch's MultivariateNormal(mu, W W^T + s2 I);
    E[z | v] and sample_z against M^-1 W^T (v - mu) / s2 and cov M^-1, M = I + W^T W / s2."""
    cls, _ = load_class("ppca")
    model, generator = _randomised(cls(D=6, K=3, s2=0.3, dtype=F64), 0)
    W, mu = model.W.detach(), model.mu.detach()
    marginal = torch.distributions.MultivariateNormal(mu, W @ W.T + 0.3 * torch.eye(6, dtype=F64))
    v = marginal.sample((5,))
    torch.testing.assert_close(model.log_prob(v), marginal.log_prob(v))
    precision = torch.eye(3, dtype=F64) + W.T @ W / 0.3
    mean = torch.linalg.solve(precision, W.T @ (v - mu).T / 0.3).T
    torch.testing.assert_close(model.mean_z(v), mean)
    draws = model.sample_z(v[:1].repeat(40000, 1), generator=generator)
    covariance = torch.cov(draws.T)
    torch.testing.assert_close(covariance, torch.linalg.inv(precision), atol=0.02, rtol=0.05)


def test_ppca_passes_check():
    from support import SPECS

    report = check_compiled(compile_source((SPECS / "ppca.edsl").read_text(), "ppca.edsl"))
    assert report.ok, report.table()


FACTOR_ANALYSIS = """model FA
dim D = 5
dim K = 2
visible v : real[D]
hidden z : real[K]
param W[D, K] ~ normal(0.5)
param mu[D] ~ zeros
param lpsi[D] ~ zeros
energy E(v, z) = sum(k: z[k]^2) / 2 + sum(i: lpsi[i] / 2
                 + (v[i] - mu[i] - sum(k: W[i, k] * z[k]))^2 * exp(-lpsi[i]) / 2)
"""


def test_factor_analysis_is_the_gaussian_with_diagonal_noise():
    compiled = compile_source(FACTOR_ANALYSIS, "fa.edsl")
    model, _ = _randomised(load_module(compiled.source).FA(dtype=F64), 1)
    W, mu, psi = model.W.detach(), model.mu.detach(), torch.exp(model.lpsi.detach())
    marginal = torch.distributions.MultivariateNormal(mu, W @ W.T + torch.diag(psi))
    v = marginal.sample((4,))
    torch.testing.assert_close(model.log_prob(v), marginal.log_prob(v))
    report = check_compiled(compiled, {"D": 2})
    assert report.ok, report.table()


def test_hidden_hidden_couplings_in_a_gaussian_rbm():
    """E = |v|^2 / 2 - v^T W z + z^T (I + C^T C) z / 2 with binary units beside: the
    coupled real layer is integrated jointly, the binary one unit by unit."""
    text = """model G
dim D = 3
dim K = 2
dim J = 2
visible v : real[D]
hidden z : real[K]
hidden h : binary[J]
param W[D, K] ~ normal(0.5)
param C[K, K] ~ normal(0.5)
param U[D, J] ~ normal(0.5)
energy E(v, z, h) = sum(i: v[i]^2) / 2 - sum(i, k: v[i] * W[i, k] * z[k])
                    + sum(k: z[k]^2) / 2 + sum(m: sum(k: C[m, k] * z[k])^2) / 2
                    - sum(i, j: v[i] * U[i, j] * h[j])
"""
    report = check_compiled(compile_source(text, "g.edsl"), {"K": 2, "J": 1, "D": 2})
    assert report.ok, report.table()


BASE = "model M\ndim D = 3\ndim K = 2\nvisible v : real[D]\nhidden z : real[K]\n" \
       "param W[D, K]\n"


@pytest.mark.parametrize(("energy", "message"), [
    ("sum(i: v[i]^2) + sum(k, l: z[k]^2 * z[l]^2) - sum(i, k: v[i] * W[i, k] * z[k])",
     "not quadratic in 'z'"),
    ("sum(i: v[i]^2) + sum(i, k, l: z[k] * z[l] * v[i]^2)", "depends on 'v'"),
])
def test_what_is_not_a_fixed_gaussian_is_refused(energy, message):
    with pytest.raises(SpecError, match=message):
        compile_source(BASE + f"energy E(v, z) = {energy}\n", "m.edsl")


def test_a_precision_that_is_not_positive_definite_is_a_clear_error():
    """E = |v|^2 / 2 - v^T W z - |z|^2 / 2: the integral over z diverges, which the
    generated code reports when it factorises the precision -I."""
    text = BASE + ("energy E(v, z) = sum(i: v[i]^2) / 2 - sum(i, k: v[i] * W[i, k] * z[k])"
                   " - sum(k, l: z[k] * z[l]) / 2\n")
    model = load_module(compile_source(text, "m.edsl").source).M(dtype=F64)
    with pytest.raises(ValueError, match="not positive definite"):
        model.free_energy(torch.randn(2, 3, dtype=F64))
