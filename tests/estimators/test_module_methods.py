"""The estimators and normalisers in every generated module, against independent
references in float64: autograd, the seeds' formulas written out directly, brute-force
enumeration and numerical quadrature."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from support import load_class, load_source, randomise, stencil_from_dense

F64 = torch.float64

SMALL = {
    "gbrbm": dict(D=3, K=2),
    "gaussian_rbm": dict(D=3, K=2),
    "mpot": dict(D=3, K=2, M=2),
    "dem": dict(D=3, H=4, K=2),
    "masked_gaussian": dict(height=2, width=2),
}

# Three ways p(v | h) can be Gaussian, for the enumerated normaliser: an isotropic
# precision given by a constant (1 / sigma^2), a number (4), and a full precision that
# depends on the hidden state (I + sum_k hc_k C_k C_k^T).
SCALED_SPIN_RBM = """
model ScaledRBM
dim D = 2
dim K = 3
const sigma = 0.7
visible v : real[D]
hidden h : spin[K]
param W[D, K] ~ normal(0.5)
param b[D] ~ normal(0.5)
param c[K] ~ normal(0.5)
energy E(v, h) = sum(i: (v[i] - b[i])^2) / (2 * sigma^2)
               - sum(i, j: v[i] * W[i, j] * h[j]) / sigma - sum(j: c[j] * h[j])
"""
NARROW_RBM = """
model NarrowRBM
dim D = 2
dim K = 3
visible v : real[D]
hidden h : binary[K]
param W[D, K] ~ normal(0.5)
energy E(v, h) = 2 * sum(i: v[i]^2) - sum(i, j: v[i] * W[i, j] * h[j])
"""
COVARIANCE_RBM = """
model CovarianceRBM
dim D = 2
dim K = 2
dim M = 2
visible v : real[D]
hidden hc : binary[K]
hidden hm : binary[M]
param C[D, K] ~ normal(0.5)
param W[D, M] ~ normal(0.5)
energy E(v, hc, hm) = 1/2 * sum(k: hc[k] * sum(i: C[i, k] * v[i])^2)
                    + 1/2 * sum(i: v[i]^2) - sum(i, j: v[i] * W[i, j] * hm[j])
"""


@pytest.fixture(scope="module")
def models():
    """Each seed model at a small size in float64 with parameters where the
    nonlinearities matter (the Gaussian ones small enough to be normalisable)."""
    built = {}
    for name, sizes in SMALL.items():
        cls, _ = load_class(name)
        scale = 0.3 if name == "gaussian_rbm" else 0.8
        built[name] = randomise(cls(**sizes, dtype=F64), scale, seed=len(built))
    return built


def _autograd_score(model, x):
    x = x.detach().requires_grad_(True)
    return -torch.autograd.grad(model.free_energy(x).sum(), x, create_graph=True)[0]


@pytest.mark.parametrize("name", list(SMALL))
def test_dsm_loss_is_vincents_formula_by_autograd(models, name):
    """1/2 |score(x~) - (x - x~) / s^2|^2 with the same noise, and the same gradients."""
    model = models[name]
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(6, model.visible_size, generator=generator, dtype=F64)
    noise = torch.randn(x.shape, generator=generator, dtype=F64)
    s = 0.3
    perturbed = x + s * noise
    expected = 0.5 * (_autograd_score(model, perturbed) - (x - perturbed) / s**2
                      ).square().sum(dim=1).mean()
    loss = model.dsm_loss(x, s, noise=noise)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    expected_grads = torch.autograd.grad(expected, params, allow_unused=True)
    for grad, want in zip(grads, expected_grads, strict=True):
        if want is None:
            assert grad is None or grad.abs().max() == 0
        else:
            torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)
    # a generator makes the draw reproducible
    a = model.dsm_loss(x, s, generator=torch.Generator().manual_seed(5))
    b = model.dsm_loss(x, s, generator=torch.Generator().manual_seed(5))
    assert a.item() == b.item()


@pytest.mark.parametrize("name", ["gbrbm", "mpot", "dem"])
@pytest.mark.parametrize("distribution", ["gaussian", "rademacher"])
def test_ssm_loss_is_unbiased_for_the_exact_sm_loss(models, name, distribution):
    """E_u[u^T H u + 1/2 (u^T s)^2] = tr H + 1/2 |s|^2 when E[u u^T] = I: the mean over
    many projections agrees with the derived sm_loss within 4 standard errors."""
    model = models[name]
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, model.visible_size, generator=generator, dtype=F64)
    estimates = torch.stack([
        model.ssm_loss(x, n_projections=20, generator=generator,
                       distribution=distribution).detach()
        for _ in range(150)])
    exact = model.sm_loss(x).detach()
    stderr = estimates.std() / math.sqrt(len(estimates))
    assert abs(estimates.mean() - exact) < 4 * stderr + 1e-12
    assert stderr < 0.2 * (1 + exact.abs())  # the test has power


def test_ssm_loss_with_given_projections_is_the_hessian_quadratic_form(models):
    model = models["dem"]
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=generator, dtype=F64)
    u = torch.randn(2, 4, 3, generator=generator, dtype=F64)
    hessians = torch.stack([torch.autograd.functional.hessian(
        lambda y: -model.free_energy(y[None])[0], row) for row in x])
    score = _autograd_score(model, x).detach()
    expected = (torch.einsum("pni,nij,pnj->pn", u, hessians, u)
                + 0.5 * torch.einsum("pni,ni->pn", u, score).square()).mean()
    torch.testing.assert_close(model.ssm_loss(x, projections=u), expected, rtol=1e-12,
                               atol=1e-12)


# ---------------------------------------------------------------- NCE


def _seed_nce(x, y, precision, noise_precision, nu):
    """Seed 000, equation (2), for zero-mean Gaussians, in log space:
    1/N sum log(nu w(x) + 1) + nu/M sum log(1/(nu w(y)) + 1),
    w(x) = sqrt(|Lambda_n| / |Lambda|) exp(-1/2 x^T (Lambda_n - Lambda) x)."""
    _, logdet_noise = torch.linalg.slogdet(noise_precision)
    _, logdet = torch.linalg.slogdet(precision)
    difference = noise_precision - precision

    def log_w(points):
        return 0.5 * (logdet_noise - logdet) - 0.5 * torch.einsum(
            "ni,ij,nj->n", points, difference, points)

    zero = torch.zeros((), dtype=x.dtype)
    return (torch.logaddexp(zero, math.log(nu) + log_w(x)).mean()
            + nu * torch.logaddexp(zero, -math.log(nu) - log_w(y)).mean())


@pytest.mark.parametrize("nu", [1.0, 10.0])
def test_nce_loss_is_the_seed_000_formula(models, nu):
    model = models["masked_gaussian"]
    with torch.no_grad():
        model.mu.zero_()  # the seed's model is zero-mean
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(8, 4, generator=generator, dtype=F64)
    a = torch.randn(4, 4, generator=generator, dtype=F64)
    noise_precision = a @ a.T + 0.5 * torch.eye(4, dtype=F64)
    noise = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=F64),
                                                   precision_matrix=noise_precision)
    y = noise.sample((int(nu * 8),))
    loss = model.nce_loss(x, noise, nu, noise_samples=y)
    expected = _seed_nce(x, y, model.precision(), noise_precision, nu)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, model.Lambda)
    (want,) = torch.autograd.grad(expected, model.Lambda)
    torch.testing.assert_close(grad, want, rtol=1e-10, atol=1e-12)


def test_nce_loss_stays_finite_where_the_seeds_ratio_overflows(models):
    """float32, a sharp model and far points: w = p_n / p_model overflows (the seed's
    infinite gradients), the log-space loss and its gradients do not."""
    cls, _ = load_class("masked_gaussian")
    model = cls(height=2, width=2, dtype=torch.float32)
    with torch.no_grad():
        model.Lambda.copy_(stencil_from_dense(model, "Lambda", 60.0 * torch.eye(4)))
    x = torch.full((4, 4), 30.0)
    noise = torch.distributions.MultivariateNormal(torch.zeros(4), torch.eye(4))
    y = noise.sample((4,)) * 40
    naive_w = torch.exp(noise.log_prob(x) - model.log_prob(x))
    assert not torch.isfinite(naive_w).all()  # the seed's formula would overflow here
    loss = model.nce_loss(x, noise, 1.0, noise_samples=y)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_nce_loss_refuses_a_noise_with_per_coordinate_log_prob(models):
    """Normal(0, 1) without Independent gives log p per coordinate, [N, D]: summed over the
    wrong axis by broadcasting it would be a silently wrong loss."""
    model = models["dem"]
    x = torch.randn(5, 3, dtype=F64)
    noise = torch.distributions.Normal(torch.zeros(3, dtype=F64), 1.0)
    with pytest.raises(ValueError, match=r"shape \[N\], got \[5, 3\].*Independent"):
        model.nce_loss(x, noise)
    model.nce_loss(x, torch.distributions.Independent(noise, 1))  # the fix works


def test_unnormalised_models_learn_log_z_and_normalised_ones_use_log_partition(models):
    assert isinstance(models["gbrbm"].log_z, torch.nn.Parameter)
    assert not hasattr(models["masked_gaussian"], "log_z")
    model = models["dem"]
    x = torch.randn(5, 3, dtype=F64)
    noise = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=F64),
                                                   torch.eye(3, dtype=F64))
    y = noise.sample((5,))
    loss = model.nce_loss(x, noise, 1.0, noise_samples=y)
    (grad,) = torch.autograd.grad(loss, model.log_z)
    # d loss / d log_z = mean sigmoid(-G(x)) - mean sigmoid(G(y)), by the chain rule
    def logit(p):
        return -model.free_energy(p) - model.log_z - noise.log_prob(p)
    expected = torch.sigmoid(-logit(x)).mean() - torch.sigmoid(logit(y)).mean()
    torch.testing.assert_close(grad, expected.detach(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gbrbm", "dem", "masked_gaussian"])
def test_cnce_loss_is_ceylan_and_gutmanns_objective(models, name):
    """2/(kN) sum log(1 + exp(-G)), G = log p~(x) - log p~(y), written with the
    unnormalised densities exp(-F) directly."""
    model = models[name]
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(5, model.visible_size, generator=generator, dtype=F64)
    noise = torch.randn(3, *x.shape, generator=generator, dtype=F64)
    y = x[None] + 0.4 * noise
    log_ratio = (-model.free_energy(x))[None] - torch.stack([-model.free_energy(row)
                                                             for row in y])
    expected = 2 / (3 * 5) * torch.log1p(torch.exp(-log_ratio)).sum()
    torch.testing.assert_close(model.cnce_loss(x, 0.4, noise=noise), expected,
                               rtol=1e-12, atol=1e-12)


def test_objectives_reject_bad_arguments(models):
    model = models["gbrbm"]
    x = torch.randn(4, 3, dtype=F64)
    with pytest.raises(ValueError, match="dsm_loss: noise_std must be a positive finite number"):
        model.dsm_loss(x, 0.0)
    with pytest.raises(ValueError, match=r"expected noise of shape \[4, 3\]"):
        model.dsm_loss(x, 0.1, noise=torch.zeros(4, 2, dtype=F64))
    with pytest.raises(ValueError, match="projections of shape"):
        model.ssm_loss(x, projections=torch.zeros(4, 3, dtype=F64))
    with pytest.raises(ValueError, match="distribution must be"):
        model.ssm_loss(x, distribution="uniform")
    with pytest.raises(ValueError, match="nce_loss: nu must be a positive finite number"):
        model.nce_loss(x, torch.distributions.Normal(0.0, 1.0), nu=0.0)
    with pytest.raises(ValueError, match="cnce_loss: k must be a positive integer"):
        model.cnce_loss(x, 0.1, k=0)


# ---------------------------------------------------------------- normalisers


def _quadrature_log_z(model, half_width=14.0, nodes=1401):
    """log of the integral of exp(-F) over a 2-D grid (trapezoid-free Riemann sum: the
    integrand vanishes at the edges)."""
    grid = torch.linspace(-half_width, half_width, nodes, dtype=F64)
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([a.flatten(), b.flatten()], dim=1)
    with torch.no_grad():
        log_integrand = -model.free_energy(points)
    return (torch.logsumexp(log_integrand, 0) + 2 * math.log(grid[1] - grid[0])).item()


@pytest.mark.parametrize("source", [SCALED_SPIN_RBM, NARROW_RBM, COVARIANCE_RBM],
                         ids=["isotropic-constant", "isotropic-number", "full-precision"])
def test_enumerated_log_partition_matches_quadrature(source):
    cls = load_source(source, name=source.split()[1].lower())
    model = randomise(cls(dtype=F64), 0.8, seed=6)
    assert math.isclose(model.log_partition().item(), _quadrature_log_z(model),
                        rel_tol=0, abs_tol=1e-9)
    v = torch.randn(5, 2, dtype=F64)
    torch.testing.assert_close(model.log_prob(v),
                               -model.free_energy(v) - _quadrature_log_z(model),
                               rtol=0, atol=1e-9)


def test_gbrbm_log_partition_is_the_brute_force_sum_of_gaussian_integrals():
    """Z = sum_h int exp(-1/2 |v|^2 + v^T W h) dv = (2 pi)^{D/2} sum_h exp(1/2 |W h|^2)."""
    cls, _ = load_class("gbrbm")
    model = randomise(cls(D=5, K=6, dtype=F64), 0.7, seed=7)
    W = model.W.detach()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=F64)
    expected = (0.5 * 5 * math.log(2 * math.pi)
                + torch.logsumexp(0.5 * (states @ W.T).square().sum(dim=1), 0))
    torch.testing.assert_close(model.log_partition(chunk=7), expected, rtol=1e-13,
                               atol=1e-12)


def test_gbrbm_exact_samples_have_the_mixtures_moments():
    """p(v) = sum_h p(h) N(W h, I): mean W E[h], covariance I + W cov(h) W^T."""
    cls, _ = load_class("gbrbm")
    model = randomise(cls(D=2, K=3, dtype=F64), 0.9, seed=8)
    W = model.W.detach()
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=F64)
    p = torch.softmax(0.5 * (states @ W.T).square().sum(dim=1), 0)
    mean_h = p @ states
    cov_h = (states - mean_h).T @ ((states - mean_h) * p[:, None])
    n = 40000
    samples = model.sample(n, generator=torch.Generator().manual_seed(9)).detach()
    mean, cov = W @ mean_h, torch.eye(2, dtype=F64) + W @ cov_h @ W.T
    stderr = (cov.diagonal() / n).sqrt()
    assert ((samples.mean(0) - mean).abs() < 4 * stderr).all()
    torch.testing.assert_close(torch.cov(samples.T), cov, rtol=0, atol=0.05)


def test_enumeration_refuses_too_many_hidden_units_and_points_to_ais():
    cls, _ = load_class("gbrbm")
    model = cls(D=3, K=21, dtype=F64)
    with pytest.raises(ValueError, match=r"2\^21 = 2097152 hidden states.*ais"):
        model.log_partition()
    with pytest.raises(ValueError, match="max_states=16"):
        cls(D=3, K=5, dtype=F64).sample(3, max_states=16)


def test_joint_energy_integrates_to_the_free_energy():
    """sum_h exp(-E(v, h)) = exp(-F(v)) for the GBRBM, by enumeration."""
    cls, _ = load_class("gbrbm")
    model = randomise(cls(D=3, K=3, dtype=F64), 0.8, seed=10)
    v = torch.randn(4, 3, dtype=F64)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=F64)
    energies = torch.stack([model.energy(v, state.expand(4, 3)) for state in states], 1)
    torch.testing.assert_close(-torch.logsumexp(-energies, 1), model.free_energy(v),
                               rtol=1e-13, atol=1e-13)
