"""MCMC on compiled models (energydsl.train.sampling) against independent references.

References: the GBRBM's exact marginal p(v) = sum_h p(h) N(v; W h, I) with p(h) ∝
exp(|W h|^2 / 2) by enumerating h here; a Gaussian's mean and covariance from its precision;
the stationary covariance of unadjusted Langevin on a Gaussian in closed form; MPoT's moments
by 2-D quadrature of exp(-F). Moments are compared within a few standard errors over many
independent chains (float64, fixed seeds).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from energydsl.train.sampling import (
    Sampler,
    Target,
    as_target,
    flip_kernel,
    flip_step,
    gibbs_step,
    hmc_step,
    initial_chains,
    langevin_step,
    mala_step,
    sample,
)

from support import ISING, load_class, load_source, randomise, stencil_from_dense

F64 = torch.float64




@pytest.fixture(scope="module")
def classes() -> dict[str, type]:
    return {name: load_class(name)[0] for name in ("gbrbm", "masked_gaussian", "mpot", "dem")}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_gbrbm(classes, scale: float = 0.8, seed: int = 0, K: int = 3):
    model = classes["gbrbm"](D=2, K=K, dtype=F64)
    with torch.no_grad():
        model.W.copy_(scale * torch.randn(2, K, generator=gen(seed), dtype=F64))
    return model


def gbrbm_mixture(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(p(h) [S], component means W h [S, D]) over all S = 2^K hidden states: integrating v
    out of exp(v^T W h - |v|^2 / 2) leaves p(h) ∝ exp(|W h|^2 / 2)."""
    W = W.detach()
    states = torch.tensor(list(itertools.product((0.0, 1.0), repeat=W.shape[1])), dtype=F64)
    means = states @ W.T
    return torch.softmax(0.5 * torch.square(means).sum(dim=1), dim=0), means


def gbrbm_moments(W: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    p, means = gbrbm_mixture(W)
    mean = p @ means
    second = torch.einsum("s,si,sj->ij", p, means, means)
    return mean, torch.eye(W.shape[0], dtype=F64) + second - torch.outer(mean, mean)


def gbrbm_exact_draws(W: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Exact draws of the mixture, written here (independent of the model's sample())."""
    p, means = gbrbm_mixture(W)
    codes = torch.multinomial(p, n, replacement=True, generator=generator)
    return means[codes] + torch.randn(n, W.shape[0], generator=generator, dtype=F64)


def gaussian_2d(classes):
    """A correlated 2-D Gaussian with mean (1, -0.5): MaskedGaussian on a 1 x 2 grid."""
    model = classes["masked_gaussian"](height=1, width=2, dtype=F64)
    with torch.no_grad():
        model.mu.copy_(torch.tensor([1.0, -0.5], dtype=F64))
        dense = torch.tensor([[0.5, -0.9], [-0.9, 1.0]], dtype=F64)
        model.Lambda.copy_(stencil_from_dense(model, "Lambda", dense))
    precision = model.precision().detach()
    return model, precision, torch.linalg.inv(precision)


def assert_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, z: float = 4.0):
    """Sample mean and covariance within z standard errors (per entry) of the exact ones."""
    n = x.shape[0]
    assert torch.isfinite(x).all()
    mean_se = torch.sqrt(torch.diagonal(cov) / n)
    assert ((x.mean(dim=0) - mean).abs() < z * mean_se).all(), (x.mean(dim=0), mean, mean_se)
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    cov_se = products.std(dim=0) / math.sqrt(n)
    assert ((products.mean(dim=0) - cov).abs() < z * cov_se).all(), (
        products.mean(dim=0), cov, cov_se)


# --- Gibbs --------------------------------------------------------------------------------


def test_gibbs_converges_to_the_exact_gbrbm_marginal_from_far_away(classes):
    model = tiny_gbrbm(classes)
    mean, cov = gbrbm_moments(model.W)
    start = torch.full((4000, 2), 8.0, dtype=F64)
    sampler = Sampler(model)
    assert sampler.method == "gibbs"
    x = sampler(start, steps=40, generator=gen(1))
    assert sampler.acceptance_rate == 1.0
    assert_moments(x, mean, cov)
    # the reference is sharp enough to tell: the model's own N(0, I) it is not
    assert (mean.abs() > 0.1).any() or (cov - torch.eye(2, dtype=F64)).abs().max() > 0.1


def test_gibbs_step_preserves_the_exact_distribution(classes):
    model = tiny_gbrbm(classes, scale=1.2, seed=3)
    mean, cov = gbrbm_moments(model.W)
    x = gbrbm_exact_draws(model.W, 6000, gen(2))
    for _ in range(3):
        x = gibbs_step(model, x, generator=gen(7 + _))
    assert_moments(x, mean, cov)
    # and one step from the wrong distribution is not already right (the test can fail)
    wrong = gibbs_step(model, torch.full((6000, 2), 6.0, dtype=F64), generator=gen(3))
    with pytest.raises(AssertionError):
        assert_moments(wrong, mean, cov)


def test_gibbs_on_mpot_matches_quadrature(classes):
    """MPoT's Gamma units draw from the global RNG (torch's Gamma takes no generator)."""
    model = classes["mpot"](D=2, K=2, M=2, dtype=F64)
    with torch.no_grad():
        model.C.copy_(1.5 * torch.randn(2, 2, generator=gen(0), dtype=F64))
        model.W.copy_(torch.randn(2, 2, generator=gen(1), dtype=F64))
    grid = torch.linspace(-12.0, 12.0, 601, dtype=F64)
    points = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        p = torch.softmax(-model.free_energy(points), dim=0)
    mean = p @ points
    cov = torch.einsum("n,ni,nj->ij", p, points - mean, points - mean)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x = Sampler(model)(torch.zeros(4000, 2, dtype=F64), steps=30, generator=gen(2))
    assert_moments(x, mean, cov)


# --- gradient samplers --------------------------------------------------------------------


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_mala_and_hmc_match_a_gaussian(classes, method):
    model, _, cov = gaussian_2d(classes)
    sampler = Sampler(model, method, step_size=0.05, n_leapfrog=5)
    x = sampler(torch.full((3000, 2), 6.0, dtype=F64), steps=60, generator=gen(4), burn_in=60)
    assert 0.0 < sampler.acceptance_rate < 1.0
    assert abs(sampler.acceptance_rate - sampler.target_acceptance) < 0.1
    assert_moments(x, model.mu.detach(), cov)


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_mala_and_hmc_match_the_gbrbm_marginal(classes, method):
    model = tiny_gbrbm(classes, scale=1.2, seed=3)
    mean, cov = gbrbm_moments(model.W)
    x = sample(model, 3000, steps=150, method=method, generator=gen(5), n_leapfrog=5)
    assert_moments(x, mean, cov)


def test_ula_has_its_closed_form_bias_on_a_gaussian(classes):
    """v' = v + h/2 Λ(mu - v) + sqrt(h) ξ has stationary covariance V diag(1 / (λ (1 - h λ / 4)))
    V^T (Λ = V diag(λ) V^T), which tells the step convention apart (v + h score + sqrt(2h) ξ
    would give 1 / (λ (1 - h λ / 2))); with a small step it is close to the exact one."""
    model, precision, cov = gaussian_2d(classes)
    eigenvalues, vectors = torch.linalg.eigh(precision)
    big = 0.4
    biased = vectors @ torch.diag(1 / (eigenvalues * (1 - big * eigenvalues / 4))) @ vectors.T
    assert (biased - cov).abs().max() > 0.1
    x = torch.full((4000, 2), 3.0, dtype=F64)
    for step in range(60):
        x = langevin_step(model, x, big, generator=gen(100 + step))
    assert_moments(x, model.mu.detach(), biased)
    sampler = Sampler(model, "langevin", step_size=0.02)
    x = sampler(torch.zeros(4000, 2, dtype=F64), steps=600, generator=gen(6))
    assert (torch.cov(x.T) - cov).abs().max() < 0.1 * cov.abs().max()


def test_step_size_adapts_during_burn_in_only(classes):
    model, _, _ = gaussian_2d(classes)
    sampler = Sampler(model, "mala", step_size=20.0)
    x = sampler(torch.zeros(1000, 2, dtype=F64), steps=0, generator=gen(0), burn_in=100)
    adapted = sampler.step_size
    assert adapted < 5.0
    sampler(x, steps=20, generator=gen(1))
    assert sampler.step_size == adapted
    assert abs(sampler.acceptance_rate - 0.574) < 0.1


# --- vectorisation, reproducibility, errors -------------------------------------------------


def test_step_functions_are_per_chain_and_reproducible(classes):
    model = tiny_gbrbm(classes)
    v = torch.randn(500, 2, generator=gen(0), dtype=F64)
    steps = {
        "gibbs": lambda g: gibbs_step(model, v, generator=g),
        "langevin": lambda g: langevin_step(model, v, 0.1, generator=g),
        "mala": lambda g: mala_step(model, v, 1.5, generator=g),
        "hmc": lambda g: hmc_step(model, v, 0.8, 4, generator=g),
    }
    for name, step in steps.items():
        first, second, other = step(gen(11)), step(gen(11)), step(gen(12))
        for a, b in zip(first if isinstance(first, tuple) else (first,),
                        second if isinstance(second, tuple) else (second,), strict=True):
            assert torch.equal(a, b), name
        x = first[0] if isinstance(first, tuple) else first
        y = other[0] if isinstance(other, tuple) else other
        assert x.shape == v.shape and x.dtype == F64 and not torch.equal(x, y), name
    for name in ("mala", "hmc"):
        x, accept = steps[name](gen(5))
        assert accept.dtype == torch.bool and accept.shape == (500,)
        assert 0 < int(accept.sum()) < 500, name
        assert torch.equal(x[~accept], v[~accept]), name
        assert (x[accept] != v[accept]).all(), name


def test_a_generic_target_samples_like_the_model(classes):
    """The samplers need only log_density and score: a Gaussian given as callables."""
    precision = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=F64)
    target = Target(lambda v: -0.5 * ((v @ precision) * v).sum(dim=1), lambda v: -v @ precision)
    sampler = Sampler(target)
    assert sampler.method == "mala"
    x = sampler(torch.zeros(3000, 2, dtype=F64), steps=40, generator=gen(3), burn_in=40)
    assert_moments(x, torch.zeros(2, dtype=F64), torch.linalg.inv(precision))


def test_sample_uses_the_exact_sampler_when_there_is_one(classes):
    model = tiny_gbrbm(classes)
    with torch.no_grad():
        expected = model.sample(100, generator=gen(9))
    assert torch.equal(sample(model, 100, generator=gen(9)), expected)
    large = classes["gbrbm"](D=2, K=30, dtype=F64)  # 2^30 hidden states: no enumeration
    with pytest.warns(RuntimeWarning, match="running MCMC"):
        x = sample(large, 2000, steps=10, generator=gen(1))
    # W ~ 0.01: p(h) is uniform up to O(|W h|^2), so the moments are those of v = W h + ξ
    # with independent fair bits h, up to terms far below the standard errors here
    W = large.W.detach()
    assert_moments(x, 0.5 * W.sum(dim=1), torch.eye(2, dtype=F64) + 0.25 * W @ W.T)


def test_gibbs_needs_hidden_units_and_says_which_methods_are_missing(classes):
    dem = classes["dem"](D=2, H=2, K=2, dtype=F64)
    v = torch.zeros(3, 2, dtype=F64)
    with pytest.raises(TypeError, match=r"DEM has none \(hidden = \{\}\).*mala"):
        gibbs_step(dem, v)
    with pytest.raises(TypeError, match="DEM has none"):
        Sampler(dem, "gibbs")
    assert Sampler(dem).method == "mala"

    class HalfLatent:
        visible = "v"
        hidden = {"h": "binary"}

        def sample_h(self, v, generator=None):
            return v

    with pytest.raises(TypeError, match="has no sample_v"):
        gibbs_step(HalfLatent(), v)
    with pytest.raises(TypeError, match="no free_energy"):
        mala_step(HalfLatent(), v, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="step_size"):
        mala_step(dem, v, -1.0)
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        langevin_step(dem, torch.zeros(2, dtype=F64), 0.1)


# ---------------------------------------------------------------- binary and spin data


@pytest.fixture(scope="module")
def ising() -> type:
    return load_source(ISING, "ising")


def _state_codes(v: torch.Tensor) -> torch.Tensor:
    """Each spin state [N, D] as the integer whose bits are its +1 entries."""
    bits = (v > 0).long()
    return (bits << torch.arange(v.shape[1])).sum(dim=1)


def test_flip_sampler_reaches_the_exact_distribution_of_an_ising_model(ising):
    """An Ising model (spin data, couplings between the entries: no conditionals for
    Gibbs, no score for MALA) sampled by flips alone: 4000 independent chains after 200
    single-entry updates (50 per entry) land on each of the 16 states as often as the
    exact p(v) from enumeration says, within 4 standard errors."""
    model = randomise(ising(D=4, dtype=F64), 0.6, seed=3)
    sampler = Sampler(model)
    assert sampler.method == "flip"
    chains = initial_chains(model, 4000, gen(0))
    assert set(chains.unique().tolist()) == {-1.0, 1.0}
    draws = sampler(chains, 200, gen(1))
    states = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=4)), dtype=F64)
    with torch.no_grad():
        exact = torch.zeros(16, dtype=F64)
        exact[_state_codes(states)] = model.log_prob(states).exp()
    assert exact.sum() == pytest.approx(1.0, abs=1e-12) and exact.max() < 0.6
    frequency = torch.bincount(_state_codes(draws), minlength=16).double() / 4000
    stderr = torch.sqrt(exact * (1 - exact) / 4000)
    assert ((frequency - exact).abs() < 4 * stderr + 1e-3).all(), (frequency, exact)
    assert 0.05 < sampler.acceptance_rate < 0.95  # the rate of flips


def test_a_flip_has_the_probability_its_flip_gain_gives(ising):
    """Entry i flips with probability sigmoid(-flip_gain_i), flip_gain being the module's
    own F(v flipped at i) - F(v); the flipped chains differ in exactly that entry."""
    model = randomise(ising(D=4, dtype=F64), 0.6, seed=4)
    v = initial_chains(model, 500, gen(2))
    target = as_target(model)
    state, flipped, probability = flip_kernel(target, target.evaluate(v), gen(3))
    changed = state.v != v
    assert (changed.sum(dim=1) == flipped.long()).all() and 50 < int(flipped.sum()) < 450
    site = changed.long().argmax(dim=1)
    with torch.no_grad():
        gains = model.flip_gain(v)[torch.arange(500), site]
    torch.testing.assert_close(probability[flipped], torch.sigmoid(-gains)[flipped])
    torch.testing.assert_close(state.log_density, -model.free_energy(state.v).detach())
    moved, again = flip_step(model, v, gen(3))  # the public step: the same draws
    assert torch.equal(moved, state.v) and torch.equal(again, flipped)


def test_discrete_data_refuses_the_gradient_samplers_and_real_data_refuses_flips(ising):
    spins = ising(D=4, dtype=F64)
    bbrbm = load_class("bbrbm")[0](D=6, K=3, dtype=F64)
    gbrbm = load_class("gbrbm")[0](D=2, K=2, dtype=F64)
    for method in ("langevin", "mala", "hmc"):
        with pytest.raises(ValueError, match=rf"method '{method}'.*discrete.*use 'flip'$"):
            Sampler(spins, method)
        with pytest.raises(ValueError, match="use 'flip' or 'gibbs'"):
            Sampler(bbrbm, method)
    with pytest.raises(ValueError, match="GBRBM's data is real; use 'mala'"):
        Sampler(gbrbm, "flip")
    with pytest.raises(TypeError, match="hidden = {}.*method='flip'"):
        Sampler(spins, "gibbs")
    assert Sampler(bbrbm).method == "gibbs" and Sampler(bbrbm, "flip").method == "flip"
    with pytest.raises(TypeError, match="no score"):
        as_target(spins).score(torch.ones(2, 4, dtype=F64))
    with pytest.raises(TypeError, match="a score .* or values"):
        Target(lambda v: v.sum(dim=1))


def test_binary_chains_start_and_stay_binary():
    """Without init, MCMC on binary data starts from uniformly random 0/1 entries (not
    N(0, I)), and every sampler keeps them binary."""
    model = randomise(load_class("bbrbm")[0](D=6, K=3, dtype=F64), 0.5, seed=5)
    for method in ("gibbs", "flip"):
        draws = sample(model, 300, steps=20, method=method, generator=gen(6))
        assert draws.shape == (300, 6) and set(draws.unique().tolist()) == {0.0, 1.0}
    exact = sample(model, 300, generator=gen(7))  # by enumeration
    assert set(exact.unique().tolist()) == {0.0, 1.0}
