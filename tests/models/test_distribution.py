"""Models with an exact log-likelihood as torch.distributions.Distribution: shapes of
log_prob and sample, normalisation by enumeration, and refusal of bounds."""

from __future__ import annotations

import itertools

import pytest
import torch

import energydsl
from energydsl.models import NADE, VAE, RealNVP
from energydsl.models.distribution import as_distribution


def test_an_autoregressive_model_is_a_normalised_distribution():
    torch.manual_seed(0)
    model = NADE(dim=6, hidden=5).double()
    dist = as_distribution(model)
    assert dist.event_shape == (6,) and dist.batch_shape == ()
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    grid = every.reshape(8, 8, 6)  # any leading batch shape
    log_p = dist.log_prob(grid)
    assert log_p.shape == (8, 8)
    torch.testing.assert_close(log_p.reshape(-1), model.log_prob(every))
    assert abs(float(torch.logsumexp(log_p.detach().reshape(-1), 0))) < 1e-10
    draws = dist.sample((3, 2))
    assert draws.shape == (3, 2, 6) and set(draws.unique().tolist()) <= {0.0, 1.0}
    assert dist.support.check(draws).all()


def test_a_conditional_model_is_a_normalised_distribution_for_each_context():
    """p(x | c) for two contexts: each sums to one over all 2^6 vectors, they differ, the
    draws follow the context given, and a conditional model without one is refused."""
    torch.manual_seed(0)
    model = NADE(dim=6, hidden=5, context_dim=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    every = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    tables = []
    for c in (torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])):
        dist = as_distribution(model, context=c.double())
        log_p = dist.log_prob(every.reshape(4, 16, 6)).reshape(-1).detach()
        assert abs(float(torch.logsumexp(log_p, 0))) < 1e-10
        torch.testing.assert_close(log_p, model.log_prob(every, context=c.double()))
        assert dist.sample((5,)).shape == (5, 6)
        tables.append(log_p)
    assert (tables[0] - tables[1]).abs().max() > 0.1
    with pytest.raises(ValueError, match="conditional"):
        as_distribution(model)


def test_a_generated_gaussian_model_is_a_distribution():
    cls = energydsl.compile("ppca")
    model = cls(D=3, K=1, dtype=torch.float64)
    assert model.event_shape == (3,)  # the companion models' protocol
    dist = as_distribution(model)
    assert dist.event_shape == (3,)
    x = torch.randn(4, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(dist.log_prob(x), model.log_prob(x.reshape(20, 3)).reshape(4, 5))
    assert dist.sample((7,)).shape == (7, 3)


def test_a_flow_without_dequantisation_is_exact_and_a_bound_is_refused():
    flow = RealNVP(dim=4, n_couplings=2, hidden=(8,), mask="alternating", dequantization="none")
    assert as_distribution(flow).sample((2,)).shape == (2, 4)
    with pytest.raises(ValueError, match="no exact log_prob"):
        as_distribution(VAE(dim=4, hidden=3, z_dim=2))


def test_a_flow_is_a_transform_of_its_base_distribution():
    """TransformedDistribution(base, [flow.inv]) has the flow's own density, and the
    transform inverts itself."""
    from torch.distributions import Independent, Normal, TransformedDistribution

    from energydsl.models.distribution import as_transform

    torch.manual_seed(1)
    flow = RealNVP(dim=4, n_couplings=3, hidden=(8,), mask="alternating",
                   dequantization="none").double()
    transform = as_transform(flow)
    base = Independent(Normal(torch.zeros(4, dtype=torch.float64),
                              torch.ones(4, dtype=torch.float64)), 1)
    model = TransformedDistribution(base, [transform.inv])
    x = torch.randn(6, 4, dtype=torch.float64)
    passes = []
    forward = flow.forward_transform
    flow.forward_transform = lambda *a, **k: passes.append(1) or forward(*a, **k)
    log_p = model.log_prob(x)
    assert len(passes) == 1  # the log-det of the pass that mapped x is reused
    del flow.forward_transform
    torch.testing.assert_close(log_p, flow.log_density(x), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(transform.inv(transform(x)), x, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="not a flow"):
        as_transform(NADE(dim=4))


def test_a_flow_draws_differentiably():
    """rsample gives the same draws as sample for the same noise, with gradients reaching
    the parameters (a reverse-KL objective can train on them)."""
    torch.manual_seed(2)
    flow = RealNVP(dim=4, n_couplings=2, hidden=(8,), mask="alternating",
                   dequantization="none")
    dist = as_distribution(flow)
    assert dist.has_rsample and not as_distribution(NADE(dim=4)).has_rsample
    draws = dist.rsample((5,), generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(draws.detach(),
                               dist.sample((5,), generator=torch.Generator().manual_seed(7)))
    draws.square().sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.parameters())
    with pytest.raises(NotImplementedError):
        as_distribution(NADE(dim=4)).rsample((2,))
