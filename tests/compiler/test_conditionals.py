"""Conditionals and the autoencoder view of latent models (Swersky et al. 2011), against
brute-force enumeration, quadrature and the seed's closed forms, in float64."""

from __future__ import annotations

import itertools

import pytest
import torch

from support import load_class, randomise

F64 = torch.float64


@pytest.fixture(scope="module")
def classes():
    return {name: load_class(name)[0] for name in ("gbrbm", "gaussian_rbm", "mpot")}


def test_gbrbm_mean_h_is_the_enumerated_posterior_mean(classes):
    model = randomise(classes["gbrbm"](D=4, K=3, dtype=F64), 0.9, 0)
    v = torch.randn(6, 4, dtype=F64)
    W = model.W.detach()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=F64)
    energy = 0.5 * (v**2).sum(1)[:, None] - torch.einsum("ni,ij,cj->nc", v, W, states)
    posterior = torch.softmax(-energy, dim=1)
    torch.testing.assert_close(model.mean_h(v), posterior @ states, rtol=1e-12, atol=1e-12)


def test_gbrbm_sm_terms_are_the_seeds_three_terms(classes):
    """squared error 1/2 |v - v^|^2, variance sum_ij W_ij^2 h^_j (1 - h^_j), curvature -D."""
    model = randomise(classes["gbrbm"](D=6, K=4, dtype=F64), 0.8, 1)
    v = torch.randn(8, 6, dtype=F64)
    W = model.W.detach()
    h = torch.sigmoid(v @ W)
    v_hat = h @ W.T
    terms = model.sm_terms(v)
    torch.testing.assert_close(terms["squared_error"], (0.5 * ((v - v_hat) ** 2).sum(1)).mean())
    torch.testing.assert_close(terms["variance"], ((h * (1 - h)) @ (W**2).T).sum(1).mean())
    torch.testing.assert_close(terms["curvature"], torch.tensor(-6.0, dtype=F64))
    torch.testing.assert_close(model.reconstruct(v), v_hat, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,sizes", [("gbrbm", dict(D=5, K=3)),
                                        ("gaussian_rbm", dict(D=5, K=3)),
                                        ("mpot", dict(D=5, K=3, M=2, gamma=1.4))])
def test_sm_terms_sum_to_sm_loss(classes, name, sizes):
    model = randomise(classes[name](**sizes, dtype=F64), 0.5, 2)
    v = torch.randn(7, 5, dtype=F64)
    terms = model.sm_terms(v)
    assert list(terms) == ["squared_error", "variance", "curvature"]
    torch.testing.assert_close(sum(terms.values()), model.sm_loss(v), rtol=1e-12, atol=1e-12)
    assert terms["variance"] >= 0


def test_mpot_conditional_means_by_quadrature(classes):
    gamma = 1.3
    model = randomise(classes["mpot"](D=4, K=2, M=3, gamma=gamma, dtype=F64), 0.8, 3)
    v = torch.randn(5, 4, dtype=F64)
    C, W = model.C.detach(), model.W.detach()
    # hc_k | v has density h^(gamma - 1) exp(-h (1 + phi_k^2 / 2)): integrate in s = log h
    s = torch.linspace(-60, 6, 4000, dtype=F64)
    h = s.exp()
    rate = 1 + 0.5 * (v @ C) ** 2  # [N, K]
    log_weight = gamma * s - rate[..., None] * h  # includes the Jacobian h
    weight = torch.softmax(log_weight, dim=-1)
    torch.testing.assert_close(model.mean_hc(v), (weight * h).sum(-1), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(model.mean_hc(v), gamma / rate, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.mean_hm(v), torch.sigmoid(v @ W), rtol=1e-12, atol=1e-12)


def test_mpot_visible_conditional_is_the_gaussian_of_the_energy(classes):
    model = randomise(classes["mpot"](D=4, K=3, M=2, dtype=F64), 0.8, 4)
    C, W = model.C.detach(), model.W.detach()
    hc = torch.rand(6, 3, dtype=F64) * 2
    hm = torch.bernoulli(torch.full((6, 2), 0.5, dtype=F64))
    precision = torch.eye(4, dtype=F64) + torch.einsum("ik,nk,jk->nij", C, hc, C)
    mean = torch.linalg.solve(precision, (hm @ W.T)[..., None])[..., 0]
    torch.testing.assert_close(model.mean_v(hc, hm), mean, rtol=1e-12, atol=1e-12)
    one = torch.tensor([[0.5, 1.0, 2.0]], dtype=F64), torch.tensor([[1.0, 0.0]], dtype=F64)
    draws = model.sample_v(one[0].repeat(100_000, 1), one[1].repeat(100_000, 1),
                           generator=torch.Generator().manual_seed(0))
    covariance = torch.linalg.inv(
        torch.eye(4, dtype=F64) + torch.einsum("ik,k,jk->ij", C, one[0][0], C))
    torch.testing.assert_close(torch.cov(draws.T), covariance, atol=0.02, rtol=0.02)
    torch.testing.assert_close(draws.mean(0), model.mean_v(*one)[0], atol=0.02, rtol=0)


def test_gibbs_samplers_have_the_right_moments(classes):
    model = randomise(classes["gbrbm"](D=3, K=2, dtype=F64), 0.9, 5)
    v = torch.randn(1, 3, dtype=F64).repeat(200_000, 1)
    generator = torch.Generator().manual_seed(1)
    h = model.sample_h(v, generator=generator)
    assert set(h.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(h.mean(0), model.mean_h(v[:1])[0], atol=0.005, rtol=0)
    x = model.sample_v(h, generator=generator)
    torch.testing.assert_close(torch.cov((x - model.mean_v(h)).T), torch.eye(3, dtype=F64),
                               atol=0.01, rtol=0)
    gaussian = randomise(classes["gaussian_rbm"](D=3, K=2, dtype=F64), 0.5, 6)
    hg = gaussian.sample_h(v, generator=generator)
    torch.testing.assert_close(hg.mean(0), (v[0] @ gaussian.W.detach()), atol=0.01, rtol=0)
    torch.testing.assert_close(hg.var(0), torch.ones(2, dtype=F64), atol=0.01, rtol=0)


def test_gamma_sampler_moments_and_generator_refusal(classes):
    model = randomise(classes["mpot"](D=3, K=2, M=1, gamma=2.5, dtype=F64), 0.7, 7)
    v = torch.randn(1, 3, dtype=F64).repeat(200_000, 1)
    torch.manual_seed(0)
    h = model.sample_hc(v)
    rate = 1 + 0.5 * (v[0] @ model.C.detach()) ** 2
    torch.testing.assert_close(h.mean(0), 2.5 / rate, rtol=0.01, atol=0)
    torch.testing.assert_close(h.var(0), 2.5 / rate**2, rtol=0.03, atol=0)
    with pytest.raises(ValueError, match="global generator"):
        model.sample_hc(v[:2], generator=torch.Generator())


def test_conditional_inputs_are_validated(classes):
    model = classes["mpot"](D=4, K=3, M=2)
    with pytest.raises(ValueError, match=r"expected hm of shape \[5, 2\], got \[4, 2\]"):
        model.mean_v(torch.rand(5, 3), torch.rand(4, 2))


def test_a_per_entry_precision_draws_entry_by_entry():
    """E = sum(i: (v[i] - b[i])^2 / (2 s[i]^2)) - ...: p(v | h) has precision 1 / s[i]^2 on
    the diagonal, so mean_v divides, sample_v scales the noise and the enumerated log Z sums
    log precisions; no D x D Cholesky anywhere (against the closed forms)."""

    from energydsl.compiler.driver import compile_source
    from energydsl.compiler.loading import load_module

    text = """model S
dim D = 4
dim K = 2
const s[D] = [0.5, 1.0, 2.0, 1.5]
visible v : real[D]
hidden h : binary[K]
param W[D, K] ~ normal(0.5)
param b[D] ~ normal(0.5)
energy E(v, h) = sum(i: (v[i] - b[i])^2 / (2 * s[i]^2)) - sum(i, k: v[i] / s[i] * W[i, k] * h[k])
"""
    compiled = compile_source(text, "s.edsl")
    assert "_cholesky" not in compiled.source
    model = load_module(compiled.source).S(dtype=torch.float64)
    s, W, b = model.s, model.W.detach(), model.b.detach()
    h = torch.tensor([[0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    torch.testing.assert_close(model.mean_v(h), b + s * (h @ W.T))
    draws = model.sample_v(h[:1].repeat(20000, 1), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.std(0), s, rtol=0.03, atol=0.0)
    states = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    mean = b + s * (states @ W.T)  # each state's Gaussian integral over v, by hand
    log_weights = (-model.energy(mean, states) + 2 * torch.log(torch.tensor(2 * torch.pi))
                   + torch.log(s).sum())
    torch.testing.assert_close(model.log_partition(), torch.logsumexp(log_weights, 0))
