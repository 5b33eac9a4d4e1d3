"""Annealed importance sampling (energydsl.train.ais) against exact log partition functions.

References, all computed here: the GBRBM by enumerating its hidden states (v integrated
analytically: Z = (2 pi)^(D/2) sum_h exp(|W h|^2 / 2)); a Gaussian from the log-determinant
of its precision; MPoT at D=2 by 2-D quadrature of exp(-F); a BB-RBM and an Ising model of
spin data by summing exp(-E) over every joint state. AIS must land within 4 of its own
standard errors, and those must be small.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, StudentT

from energydsl.train.ais import (
    TemperedTarget,
    _base_sample,
    ais,
    base_from_data,
    bernoulli_base,
    gaussian_base,
    log_mean_exp,
    temperatures,
)
from energydsl.train.sampling import as_target, sample

from support import ISING, load_class, load_source, randomise

F64 = torch.float64




@pytest.fixture(scope="module")
def classes() -> dict[str, type]:
    return {name: load_class(name)[0] for name in ("gbrbm", "masked_gaussian", "mpot")}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_gbrbm(classes, scale: float, seed: int = 0):
    model = classes["gbrbm"](D=2, K=3, dtype=F64)
    with torch.no_grad():
        model.W.copy_(scale * torch.randn(2, 3, generator=gen(seed), dtype=F64))
    return model


def gbrbm_log_z(W: torch.Tensor) -> float:
    W = W.detach()
    states = torch.tensor(list(itertools.product((0.0, 1.0), repeat=W.shape[1])), dtype=F64)
    log_weights = 0.5 * torch.square(states @ W.T).sum(dim=1)
    return float(torch.logsumexp(log_weights, dim=0)) + 0.5 * W.shape[0] * math.log(2 * math.pi)


def masked_gaussian(classes, offset: float = 0.0):
    model = classes["masked_gaussian"](height=2, width=2, dtype=F64)
    with torch.no_grad():
        model.Lambda.copy_(torch.randn(9, 4, generator=gen(1), dtype=F64))  # its stencil
        model.mu.copy_(offset + torch.randn(4, generator=gen(2), dtype=F64))
    precision = model.precision().detach()
    return model, 0.5 * 4 * math.log(2 * math.pi) - 0.5 * float(torch.logdet(precision))


def assert_close(result, exact: float, max_stderr: float = 0.05):
    assert 0 < result.stderr < max_stderr, result
    assert abs(result.log_z - exact) < 4 * result.stderr, (result.log_z, exact, result.stderr)


@pytest.mark.parametrize("method", ["mala", "hmc"])
def test_ais_matches_the_enumerated_gbrbm(classes, method):
    model = tiny_gbrbm(classes, 0.8)
    exact = gbrbm_log_z(model.W)
    with torch.no_grad():
        assert float(model.log_partition()) == pytest.approx(exact, abs=1e-10)
    result = ais(model, 500, 200, method=method, generator=gen(3), progress=False)
    assert_close(result, exact, max_stderr=0.03)
    assert 0.3 < result.acceptance < 0.95
    assert result.log_weights.shape == (500,) and result.log_weights.dtype == F64
    assert result.ess > 250


def test_ais_matches_a_gaussian_and_a_data_fitted_base_helps(classes):
    model, exact = masked_gaussian(classes, offset=3.0)
    plain = ais(model, 500, 500, generator=gen(4), progress=False)  # N(0, I), 3 sd away
    assert_close(plain, exact, max_stderr=0.08)
    with torch.no_grad():
        data = model.sample(2000, generator=gen(5))
    fitted = ais(model, 500, 300, base=base_from_data(data), generator=gen(6), progress=False)
    assert_close(fitted, exact)
    assert fitted.stderr < 0.5 * plain.stderr


def test_ais_matches_quadrature_on_mpot(classes):
    model = classes["mpot"](D=2, K=2, M=2, dtype=F64)
    with torch.no_grad():
        model.C.copy_(1.5 * torch.randn(2, 2, generator=gen(0), dtype=F64))
        model.W.copy_(torch.randn(2, 2, generator=gen(1), dtype=F64))
        grid = torch.linspace(-12.0, 12.0, 601, dtype=F64)
        log_f = -model.free_energy(torch.cartesian_prod(grid, grid))
    exact = float(torch.logsumexp(log_f, dim=0)) + 2 * math.log(float(grid[1] - grid[0]))
    result = ais(model, 500, 300, schedule="linear", generator=gen(7), progress=False)
    assert_close(result, exact, max_stderr=0.03)
    # float32 models: computed in float32, weights accumulated in float64
    model32 = classes["mpot"](D=2, K=2, M=2, dtype=torch.float32)
    model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    result32 = ais(model32, 500, 300, generator=gen(8), progress=False)
    assert result32.log_weights.dtype == F64
    assert abs(result32.log_z - exact) < 4 * result32.stderr + 1e-3


def test_ais_with_a_non_gaussian_base_uses_autograd_for_its_score(classes):
    model = tiny_gbrbm(classes, 0.8)
    base = Independent(StudentT(torch.tensor([5.0, 5.0], dtype=F64),
                                torch.zeros(2, dtype=F64), 1.5 * torch.ones(2, dtype=F64)), 1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        result = ais(model, 500, 200, base=base, generator=gen(9), progress=False)
    assert_close(result, gbrbm_log_z(model.W), max_stderr=0.03)


def test_too_few_temperatures_under_estimate_log_z(classes):
    """E[log Z_hat] <= log Z (Jensen): on a GBRBM whose modes lie far from the N(0, I) base,
    3 temperatures miss the heavy modes and every run falls well short, while 1000 do not."""
    model = tiny_gbrbm(classes, 3.0)
    exact = gbrbm_log_z(model.W)
    short = [ais(model, 200, 3, generator=gen(s), progress=False).log_z for s in range(4)]
    assert max(short) < exact and sum(short) / 4 < exact - 0.5, (short, exact)
    long = ais(model, 500, 1000, generator=gen(10), progress=False)
    assert_close(long, exact)


def test_log_mean_exp_is_stable_and_matches_the_delta_method():
    weights = torch.rand(1000, generator=gen(0), dtype=F64) + 0.5
    log_z, stderr, ess = log_mean_exp(1e4 + torch.log(weights))  # exp(1e4) overflows
    assert log_z == pytest.approx(1e4 + math.log(float(weights.mean())), rel=1e-14)
    assert stderr == pytest.approx(float(weights.std() / weights.mean()) / math.sqrt(1000))
    assert ess == pytest.approx(float(weights.sum() ** 2 / (weights**2).sum()))
    assert log_mean_exp(torch.zeros(10, dtype=F64)) == (0.0, 0.0, pytest.approx(10.0))


def test_schedules_and_bases():
    assert torch.allclose(temperatures(5, "linear"), torch.tensor([0, 0.25, 0.5, 0.75, 1.0],
                                                                  dtype=F64))
    betas = temperatures(101)
    gaps = betas.diff()
    assert betas[0] == 0 and betas[-1] == 1 and (gaps > 0).all()
    assert gaps[0] < 0.5 * gaps[50] and gaps[-1] < 0.5 * gaps[50]  # denser at both ends
    with pytest.raises(ValueError, match=">= 2"):
        temperatures(1)
    base = gaussian_base(torch.tensor([1.0, 2.0]), 3.0)
    assert base.event_shape == (2,)
    assert float(base.log_prob(torch.tensor([1.0, 2.0]))) == pytest.approx(
        -math.log(2 * math.pi * 9))


def test_tempered_scores_match_autograd_for_every_kind_of_base(classes):
    """The closed-form base scores (diagonal and full Gaussians) and the autograd fallback
    (a Student t) against autograd of the tempered log density; and the Gaussian bases'
    generator-driven draws have the base's moments."""
    model = tiny_gbrbm(classes, 0.8)
    loc = torch.tensor([0.5, -1.0], dtype=F64)
    scale_tril = torch.tensor([[1.5, 0.0], [0.7, 0.6]], dtype=F64)
    bases = [
        Normal(loc, torch.tensor([2.0, 0.5], dtype=F64)),  # batch shape [D], summed
        gaussian_base(loc, torch.tensor([2.0, 0.5], dtype=F64)),
        MultivariateNormal(loc, scale_tril=scale_tril),
        Independent(StudentT(torch.full((2,), 4.0, dtype=F64), loc, torch.ones(2, dtype=F64)),
                    1),
    ]
    v = torch.randn(50, 2, generator=gen(0), dtype=F64).requires_grad_(True)
    for base in bases:
        target = TemperedTarget(as_target(model), base, beta=0.3)
        (expected,) = torch.autograd.grad(target.log_density(v).sum(), v)
        state = target.evaluate(v.detach())
        assert torch.allclose(state.score, expected, atol=1e-12), type(base).__name__
        assert torch.allclose(state.log_density, target.log_density(v.detach()), atol=1e-12)
    draws = _base_sample(bases[2], 40000, 2, F64, torch.device("cpu"), gen(1))
    cov = scale_tril @ scale_tril.T
    assert (draws.mean(dim=0) - loc).abs().max() < 4 * 1.5 / 200
    assert (torch.cov(draws.T) - cov).abs().max() < 0.05


def test_ais_rejects_bad_arguments(classes):
    model = tiny_gbrbm(classes, 0.8)
    with pytest.raises(ValueError, match="increase from 0 to 1"):
        ais(model, 10, schedule=torch.tensor([0.0, 0.7, 0.5, 1.0]), progress=False)
    with pytest.raises(ValueError, match="n_chains"):
        ais(model, 1, 10, progress=False)
    with pytest.raises(ValueError, match="method"):
        ais(model, 10, 10, method="gibbs", progress=False)  # type: ignore[arg-type]


# ---------------------------------------------------------------- binary and spin data


def joint_log_z(model, visible: int, hidden: int, low: float = 0.0) -> float:
    """log of the sum of exp(-E(v, h)) over every binary v (entries low or 1) and h: the
    joint energy, never the free energy or the module's own enumeration."""
    values = (low, 1.0)
    states = torch.tensor(list(itertools.product(values, repeat=visible + hidden)), dtype=F64)
    v, h = states[:, :visible], states[:, visible:]
    with torch.no_grad():
        energy = model.energy(v, h) if hidden else model.free_energy(v)
    return float(torch.logsumexp(-energy, dim=0))


def test_ais_by_flips_matches_the_enumerated_bbrbm():
    """A BB-RBM (D=8, K=6) whose hidden units are marginalised: AIS from a uniform
    product of Bernoullis, moving by single-entry flips (one sweep's worth, 8, per
    temperature), lands within 4 standard errors of log Z summed over its 2^14 joint
    states; a base fitted to samples of the model shortens the path."""
    model = randomise(load_class("bbrbm")[0](D=8, K=6, dtype=F64), 1.0, seed=0)
    exact = joint_log_z(model, 8, 6)
    with torch.no_grad():
        assert float(model.log_partition()) == pytest.approx(exact, abs=1e-10)
    result = ais(model, 500, 200, steps_per_temperature=8, generator=gen(1), progress=False)
    assert_close(result, exact, max_stderr=0.03)
    assert 0.2 < result.acceptance < 0.8 and math.isnan(result.step_size)
    data = sample(model, 2000, generator=gen(2))
    fitted = ais(model, 500, 200, steps_per_temperature=8, base=base_from_data(
        data, values=(0, 1)), generator=gen(3), progress=False)
    assert_close(fitted, exact, max_stderr=0.02)
    assert fitted.stderr < result.stderr


def test_ais_by_flips_matches_an_ising_model_of_spin_data():
    model = randomise(load_source(ISING, "ising")(D=6, dtype=F64), 0.5, seed=1)
    exact = joint_log_z(model, 6, 0, low=-1.0)
    result = ais(model, 500, 200, steps_per_temperature=6, generator=gen(4), progress=False)
    assert_close(result, exact, max_stderr=0.03)
    draws = _base_sample(bernoulli_base(0.25, 6, dtype=F64), 4000, 6, F64,
                         torch.device("cpu"), gen(5))
    assert set(draws.unique().tolist()) == {0.0, 1.0}
    assert abs(float(draws.mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / 24000)


def test_ais_on_discrete_data_refuses_gradient_moves_and_a_gaussian_base():
    model = load_class("bbrbm")[0](D=4, K=2, dtype=F64)
    with pytest.raises(ValueError, match="'flip' .binary or spin data., got 'mala'"):
        ais(model, 10, 10, method="mala", progress=False)
    with pytest.raises(ValueError, match="product-of-Bernoullis base"):
        ais(model, 10, 10, base=gaussian_base(0.0, 1.0, 4, dtype=F64), progress=False)
    with pytest.raises(ValueError, match="got 'flip'"):
        ais(tiny_gbrbm({"gbrbm": load_class("gbrbm")[0]}, 0.8), 10, 10, method="flip",
            progress=False)
