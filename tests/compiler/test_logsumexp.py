"""logsumexp: the reduction, the automatic rewrites of log(sum exp) and log(exp + exp),
and derivatives through it (softmax weights), against autograd in float64, closed forms
and the float32 range at MNIST size."""

from __future__ import annotations

import math

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module

from support import load_class


def _compiled(text: str):
    return compile_source(text, "spec.edsl")


def test_the_gaussian_mixture_is_its_closed_form():
    """specs/gmm.edsl against log sum_k pi_k N(v; mu_k, s_k^2 I) by torch.distributions
    (F drops the D/2 log(2 pi) of every component)."""
    cls, _ = load_class("gmm")
    model = cls(D=6, K=4, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64))
    v = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=model.w),
        torch.distributions.Independent(torch.distributions.Normal(
            model.mu, torch.exp(model.ls)[:, None].expand(4, 6)), 1))
    expected = -mixture.log_prob(v) - 6 / 2 * math.log(2 * math.pi)
    torch.testing.assert_close(model.free_energy(v), expected.detach())


def test_the_gaussian_mixture_passes_check():
    from support import SPECS

    report = check_compiled(compile_source((SPECS / "gmm.edsl").read_text(), "gmm.edsl"))
    assert report.ok, report.table()


@pytest.mark.parametrize("method", ["free_energy", "score", "laplacian", "sm_loss"])
def test_the_mixture_is_finite_in_float32_at_mnist_size(method):
    """Pixels in [0, 1] at distance ~ 8 from every mean: each component's density is
    exp(-350) or less, 0 in float32 (and exp(-2000) at the larger scale, 0 in float64)."""
    cls, _ = load_class("gmm")
    model = cls(dtype=torch.float32)
    generator = torch.Generator().manual_seed(1)
    for scale in (1.0, 3.0):
        v = torch.rand(16, 784, generator=generator) * scale
        out = getattr(model, method)(v)
        assert bool(torch.isfinite(out).all()), (method, scale)
    # and close to float64 (the Laplacian is a variance of distances across components,
    # sum_k w_k |mu_k - v|^2 - |sum_k w_k (mu_k - v)|^2: float32 keeps 3-4 digits of it)
    float64 = cls(dtype=torch.float64)
    float64.load_state_dict({k: t.double() for k, t in model.state_dict().items()})
    torch.testing.assert_close(getattr(model, method)(v).double(),
                               getattr(float64, method)(v.double()), rtol=2e-3, atol=1e-3)


MIXTURE = """model M
dim D = 5
dim K = 3
visible v : real[D]
param pi[K] ~ constant(0.4) where positive
param mu[K, D] ~ normal(1)
param a[D] ~ normal(1)
param b[D] ~ normal(1)
free energy F(v) = {body}
"""

REWRITTEN = [
    # log of a sum of exponentials, written out: the rewrite to logsumexp
    ("-log(sum(k: exp(log(pi[k]) - sum(i: (v[i] - mu[k, i])^2) / 2)))", "torch.logsumexp"),
    # two exponentials: logaddexp
    ("-log(exp(-sum(i: (v[i] - a[i])^2)) + exp(-sum(i: (v[i] - b[i])^2)))", "torch.logaddexp"),
    # three, and a positive number
    ("-log(exp(-sum(i: (v[i] - a[i])^2)) + exp(-sum(i: (v[i] - b[i])^2)) + 2) "
     "+ sum(i: v[i]^2)", "torch.logaddexp"),
    # the reduction over two indices, and one whose body is constant in an index
    ("-logsumexp(k, i: -(v[i] - mu[k, i])^2) + sum(i: v[i]^2)", "torch.logsumexp"),
    ("-logsumexp(k in K: -sum(i: (v[i] - a[i])^2)) + sum(i: v[i]^2)", "math.log(self.K)"),
]


@pytest.mark.parametrize(("body", "code"), REWRITTEN)
def test_logs_of_exponentials_become_stable_and_stay_exact(body, code):
    compiled = _compiled(MIXTURE.format(body=body))
    assert code in compiled.source
    assert "torch.exp(-torch.sum" not in compiled.source
    report = check_compiled(compiled)
    assert report.ok, report.table()
    model = load_module(compiled.source).M(dtype=torch.float32)
    v = torch.full((4, 5), 30.0)  # exp(-30^2 * 5) is 0 in float32
    for method in ("free_energy", "score", "laplacian"):
        assert bool(torch.isfinite(getattr(model, method)(v)).all()), method


def test_logsumexp_of_a_constant_is_its_log_count():
    """logsumexp(k: c) = c + log K, folded when lowering."""
    compiled = _compiled(MIXTURE.format(body="sum(i: v[i]^2) "
                                        "+ logsumexp(k in K: sum(i: v[i]))"))
    model = load_module(compiled.source).M(dtype=torch.float64)
    v = torch.randn(3, 5, dtype=torch.float64)
    expected = (v**2).sum(1) + v.sum(1) + math.log(3)
    torch.testing.assert_close(model.free_energy(v), expected)


def test_the_softmax_weights_are_the_derivative():
    """score of -logsumexp(k: -|v - mu_k|^2 / 2) is sum_k softmax_k (mu_k - v)."""
    compiled = _compiled(MIXTURE.format(
        body="-logsumexp(k: -sum(i: (v[i] - mu[k, i])^2) / 2)"))
    model = load_module(compiled.source).M(dtype=torch.float64)
    v = torch.randn(4, 5, dtype=torch.float64)
    distance = ((v[:, None, :] - model.mu[None]) ** 2).sum(-1)
    weights = torch.softmax(-distance / 2, dim=1)
    expected = torch.einsum("nk,nki->ni", weights, model.mu[None] - v[:, None, :])
    torch.testing.assert_close(model.score(v), expected.detach())


def test_show_prints_logsumexp_in_both_notations():
    from energydsl.compiler.notation import dsl_str, latex

    compiled = _compiled(MIXTURE.format(body="-logsumexp(k: -sum(i: (v[i] - mu[k, i])^2))"))
    free_energy = compiled.derivation.free_energy
    assert dsl_str(free_energy).startswith("-logsumexp(k: ")
    assert r"\log \sum_{k}" in latex(free_energy)


def test_a_mixture_of_experts_compiles_and_checks():
    """Gated experts: F = -logsumexp(k: g[k](v) - E_k(v)), gates linear in v."""
    text = """model MoE
dim D = 4
dim K = 3
visible v : real[D]
param G[K, D] ~ normal(0.3)
param mu[K, D] ~ normal(1)
let gate[k] = sum(i: G[k, i] * v[i]) - logsumexp(j: sum(i: G[j, i] * v[i]))
free energy F(v) = -logsumexp(k: gate[k] - sum(i: (v[i] - mu[k, i])^2) / 2)
                   + sum(i: v[i]^2) / 8
"""
    report = check_compiled(_compiled(text))
    assert report.ok, report.table()
