"""Categorical hidden units (one-hot): the marginal by logsumexp, the softmax posterior,
one-hot draws and the enumerated normaliser, against closed forms and brute force."""

from __future__ import annotations

import math

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module
from energydsl.errors import SpecError

from support import SPECS, load_class


def _mixture(seed: int = 0, D: int = 6, K: int = 4):  # noqa: N803 - the spec's sizes
    cls, _ = load_class("catmix")
    model = cls(D=D, K=K, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.mu.copy_(torch.randn(K, D, generator=generator, dtype=torch.float64))
        model.b.copy_(torch.randn(K, generator=generator, dtype=torch.float64))
    return model, generator


def test_the_mixture_spec_passes_check():
    text = (SPECS / "catmix.edsl").read_text()
    report = check_compiled(compile_source(text, "catmix.edsl"))
    assert report.ok, report.table()


def test_free_energy_posterior_and_normaliser_are_the_mixtures():
    """F = -log sum_k exp(b_k - |v - mu_k|^2 / 2), P(z | v) = softmax, and
    Z = (2 pi)^(D/2) sum_k exp(b_k), each computed here from the definitions."""
    model, generator = _mixture()
    v = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    logits = model.b - ((v[:, None, :] - model.mu) ** 2).sum(-1) / 2
    torch.testing.assert_close(model.free_energy(v), -torch.logsumexp(logits, 1).detach())
    torch.testing.assert_close(model.mean_z(v), torch.softmax(logits, 1).detach())
    log_z = torch.logsumexp(model.b, 0) + 3 * math.log(2 * math.pi)
    torch.testing.assert_close(model.log_partition(), log_z.detach())
    # p(v) integrates to one: log_prob is a normalised Gaussian mixture
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=model.b),
        torch.distributions.Independent(torch.distributions.Normal(
            model.mu, torch.ones_like(model.mu)), 1))
    torch.testing.assert_close(model.log_prob(v), mixture.log_prob(v).detach())


def test_draws_are_one_hot_with_the_posterior_frequencies():
    model, generator = _mixture(seed=1)
    v = torch.randn(1, 6, generator=generator, dtype=torch.float64).repeat(20000, 1)
    draws = model.sample_z(v, generator=generator)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert bool((draws.sum(1) == 1).all())
    probability = model.mean_z(v[:1])[0].detach()
    error = (probability * (1 - probability) / 20000).sqrt()
    assert bool(((draws.mean(0) - probability).abs() <= 5 * error + 1e-12).all())


def test_exact_samples_come_from_the_mixture():
    """sample(n): a component by its weight, then v ~ N(mu_k, I): the sample mean."""
    model, generator = _mixture(seed=2)
    draws = model.sample(40000, generator=generator)
    weights = torch.softmax(model.b, 0).detach()
    expected = weights @ model.mu.detach()
    spread = (model.mu.detach().var(0) + 1).sqrt() / math.sqrt(40000)
    assert bool(((draws.mean(0) - expected).abs() <= 6 * spread + 0.01).all())


@pytest.mark.parametrize("method", ["free_energy", "score", "laplacian", "sm_loss", "mean_z"])
def test_finite_in_float32_at_mnist_size(method):
    cls, _ = load_class("catmix")
    model = cls(dtype=torch.float32)
    v = torch.rand(8, 784, generator=torch.Generator().manual_seed(3)) * 4
    assert bool(torch.isfinite(getattr(model, method)(v)).all())


def test_categorical_with_binary_units_enumerates_both():
    """A categorical and a binary layer together: log Z over K * 2^J states."""
    text = """model Both
dim D = 3
dim K = 3
dim J = 2
visible v : real[D]
hidden z : categorical[K]
hidden h : binary[J]
param mu[K, D] ~ normal(1)
param W[D, J] ~ normal(0.5)
energy E(v, z, h) = sum(i: v[i]^2) / 2 - sum(k, i: z[k] * mu[k, i] * v[i])
                    - sum(i, j: v[i] * W[i, j] * h[j])
"""
    report = check_compiled(compile_source(text, "both.edsl"))
    assert report.ok, report.table()
    assert any(row.quantity == "log_partition (enumerated)" for row in report.rows)


def test_interacting_categories_are_refused():
    text = ("model M\ndim D = 2\ndim K = 3\nvisible v : real[D]\nhidden z : categorical[K]\n"
            "energy E(v, z) = sum(i: v[i]^2) + sum(i, j, k: z[j] * z[k] * v[i])\n")
    with pytest.raises(SpecError, match="interact"):
        compile_source(text, "m.edsl")


def test_module_loads_standalone():
    text = (SPECS / "catmix.edsl").read_text()
    module = load_module(compile_source(text, "catmix.edsl").source)
    assert module.catmix(D=4, K=2).sample_z(torch.randn(3, 4)).shape == (3, 2)
