"""VAE: closed-form KL vs Monte Carlo, ELBO and the importance-weighted bound against the
exact log-likelihood of a 1-latent VAE computed by quadrature over z."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from energydsl.models import VAE, BetaVAE, ConvVAE, gaussian_kl

from models_helpers import perturb

Z_GRID = torch.linspace(-12, 12, 12001, dtype=torch.float64)
DZ = 24 / 12000
GH_NODES, GH_WEIGHTS = np.polynomial.hermite_e.hermegauss(80)  # E over N(0, 1)


def tiny_vae(conv: bool = False) -> VAE:
    torch.manual_seed(0)
    model = ConvVAE(side=4, channels=4, z_dim=1) if conv else VAE(dim=6, hidden=16, z_dim=1)
    return perturb(model, 0.5, 0).double()


def quadrature(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """Exact log p(x) (grid over z) and exact ELBO (Gauss-Hermite under q), independently
    of the model's closed-form KL: log p(z) and log q(z|x) come from scipy."""
    with torch.no_grad():
        z = Z_GRID[:, None, None].expand(-1, x.shape[0], 1)
        log_prior = torch.tensor(stats.norm.logpdf(Z_GRID.numpy()))
        log_px = torch.logsumexp(model.log_likelihood(x, z) + log_prior[:, None], 0)
        log_px = log_px + math.log(DZ)
        q = model.encode(x)
        mu, sd = q.loc[:, 0].numpy(), q.scale[:, 0].numpy()
        zq = mu[None, :] + sd[None, :] * GH_NODES[:, None]  # [nodes, N]
        integrand = (
            model.log_likelihood(x, torch.tensor(zq)[..., None]).numpy()
            + stats.norm.logpdf(zq)
            - stats.norm.logpdf(zq, mu, sd)
        )
        elbo = GH_WEIGHTS @ integrand / math.sqrt(2 * math.pi)
    return log_px, torch.tensor(elbo)


def test_closed_form_kl_matches_monte_carlo_and_torch() -> None:
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(5, 3, generator=g, dtype=torch.float64)
    std = torch.exp(0.5 * torch.randn(5, 3, generator=g, dtype=torch.float64))
    closed = gaussian_kl(mu, std)
    ref = kl_divergence(Normal(mu, std), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(closed, ref, rtol=1e-12, atol=1e-12)
    # Monte Carlo with the model's own reparameterised sampler, densities from scipy.
    n = 200_000
    z = VAE.reparameterize(mu, std, n=n, generator=g).numpy()  # [n, 5, 3]
    log_ratio = (
        stats.norm.logpdf(z, mu.numpy(), std.numpy()) - stats.norm.logpdf(z)
    ).sum(-1)  # [n, 5]
    mc, se = log_ratio.mean(0), log_ratio.std(0) / math.sqrt(n)
    assert np.all(np.abs(mc - closed.numpy()) < 4 * se), (mc, closed, se)


def test_reparameterisation_is_pathwise() -> None:
    """z = mu + std * eps: dz/dmu = 1 and dz/dstd = eps, with the same eps as the generator."""
    mu = torch.tensor([0.3, -1.0], dtype=torch.float64, requires_grad=True)
    std = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    z = VAE.reparameterize(mu, std, generator=torch.Generator().manual_seed(7))
    z.sum().backward()
    eps = torch.randn(2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    torch.testing.assert_close(mu.grad, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(std.grad, eps)


def test_bernoulli_vae_marginal_is_normalised() -> None:
    """sum_x p(x) = 1 over all 2^6 binary x, with p(x) = int p(x|z) p(z) dz by quadrature."""
    model = tiny_vae()
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    log_px, _ = quadrature(model, x)
    assert abs(float(torch.logsumexp(log_px, 0))) < 1e-8


@pytest.mark.parametrize("conv", [False, True])
def test_elbo_and_iw_bound_against_exact_likelihood(conv: bool) -> None:
    model = tiny_vae(conv)
    d = model.dim
    x = torch.tensor(list(itertools.product([0.0, 1.0], repeat=d))[:: (2**d) // 8])
    x = x.double()
    log_px, elbo_exact = quadrature(model, x)
    assert torch.all(elbo_exact < log_px)
    # The convolutional decoder is slower: fewer Monte Carlo samples, k up to 100.
    budget, ks = (10_000, (1, 10, 100)) if conv else (100_000, (1, 10, 100, 1000))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # elbo(): one sample + closed-form KL; its mean is the exact ELBO.
        reps = budget // 5
        el = model.elbo(x.repeat(reps, 1), g).reshape(reps, -1)
        assert torch.all((el.mean(0) - elbo_exact).abs() < 4 * el.std(0) / math.sqrt(reps))

        means, ses = {}, {}
        for k in ks:
            r = budget // k
            lw = model.log_weights(x, k * r, g).reshape(r, k, -1)
            iw = torch.logsumexp(lw, 1) - math.log(k)  # [r, N] independent IW_k estimates
            means[k], ses[k] = iw.mean(0), iw.std(0) / math.sqrt(r)
            # Jensen with the same samples: log-mean-exp >= mean of the log-weights.
            assert torch.all(iw >= lw.mean(1) - 1e-12)
            # A lower bound on log p(x) in expectation.
            assert torch.all(means[k] <= log_px + 4 * ses[k] + 1e-9)
    # IW_1 has the ELBO as expectation.
    assert torch.all((means[1] - elbo_exact).abs() < 4 * ses[1])
    # E[IW_k] grows with k: summed over the examples, never down by more than the noise,
    # and clearly up from k = 1 to 10 (later steps shrink once IW_k is near log p(x)) ...
    totals = {k: float(means[k].sum()) for k in means}
    noise = {k: float(ses[k].pow(2).sum().sqrt()) for k in ses}
    for a, b in itertools.pairwise(ks):
        assert totals[b] - totals[a] > -4 * math.hypot(noise[a], noise[b]), (totals, noise)
    assert totals[10] - totals[1] > 4 * math.hypot(noise[1], noise[10]), (totals, noise)
    # ... and with the most samples it is well above the ELBO, at most log p(x).
    gap_elbo = float((log_px - elbo_exact).sum())
    gap_iw = float((log_px - means[ks[-1]]).sum())
    assert -4 * noise[ks[-1]] < gap_iw < gap_elbo - 4 * noise[1]


def test_log_prob_is_the_iw_estimate() -> None:
    model = tiny_vae()
    x = torch.ones(3, 6, dtype=torch.float64)
    with torch.no_grad():
        a = model.log_prob(x, torch.Generator().manual_seed(1))
        lw = model.log_weights(x, model.n_importance, torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, torch.logsumexp(lw, 0) - math.log(model.n_importance))


def test_gaussian_decoder_likelihood_matches_scipy(digits: Tensor) -> None:
    torch.manual_seed(0)
    model = VAE(likelihood="gaussian").double()
    assert model.data_kind == "continuous"
    x = digits[:5].double()
    z = torch.randn(5, model.z_dim, dtype=torch.float64)
    with torch.no_grad():
        mean, std = model.decode(z), model.decoder_std()
        ours = model.log_likelihood(x, z)
    ref = stats.norm.logpdf(x.numpy(), mean.numpy(), std.numpy()).sum(1)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12)
    assert (std >= model.min_std).all()


def test_float32_elbo_finite_for_extreme_inputs() -> None:
    """Saturated encoder/decoder outputs stay finite in float32 (softplus std, BCE logits)."""
    torch.manual_seed(0)
    model = VAE()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(30)
        x = torch.bernoulli(torch.full((16, 64), 0.5))
        assert torch.isfinite(model.elbo(x)).all()
        assert torch.isfinite(model.log_prob(x)).all()


def test_conv_vae_is_built_by_the_vae_constructor() -> None:
    """ConvVAE passes its convolutional encoder and decoder to VAE.__init__ (no bypass of
    the parent): the likelihood's parameters come from there too."""
    model = ConvVAE(side=8, channels=4, z_dim=3, likelihood="gaussian")
    assert model.event_shape == (1, 8, 8) and model.dim == 64 and model.z_dim == 3
    assert model.decoder_std_raw.shape == (1, 8, 8)  # made by VAE's common set-up
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"encoder", "decoder", "decoder_std_raw"}
    x = torch.rand(5, 1, 8, 8)
    assert torch.isfinite(model.loss(x)) and model.sample(2).shape == (2, 1, 8, 8)


def test_beta_weights_the_kl_term_only() -> None:
    """loss = -(E_q log p(x|z) - beta KL(q || p)): with the same noise, the beta-VAE's loss
    minus the plain VAE's is (beta - 1) KL; beta = 1 is the negative ELBO."""
    torch.manual_seed(0)
    plain = VAE(dim=6, hidden=5, z_dim=2).double()
    weighted = BetaVAE(dim=6, hidden=5, z_dim=2, beta=3.0).double()
    weighted.load_state_dict(plain.state_dict())
    x = torch.bernoulli(torch.full((9, 6), 0.5, dtype=torch.float64))
    q = plain.encode(x)
    kl = gaussian_kl(q.loc, q.scale).mean()
    a = plain.loss(x, torch.Generator().manual_seed(1))
    b = weighted.loss(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(b - a, 2.0 * kl, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a, -plain.elbo(x, torch.Generator().manual_seed(1)).mean())
    with pytest.raises(ValueError, match="beta"):
        VAE(beta=0)


def test_a_conditional_vae_is_normalised_for_every_context() -> None:
    """p(x | c) = int N(z; 0, 1) p(x | z, c) dz by quadrature (z_dim = 1) sums to one over
    all 2^3 binary x for each context, differs between contexts, and the importance-
    weighted estimate stays below it (a lower bound; the untrained encoder is a poor
    proposal, so it is not close)."""
    torch.manual_seed(4)
    model = VAE(dim=3, hidden=8, z_dim=1, context_dim=2).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    every = torch.tensor([[a, b, c] for a in (0.0, 1.0) for b in (0.0, 1.0)
                          for c in (0.0, 1.0)], dtype=torch.float64)
    z = torch.linspace(-9, 9, 6001, dtype=torch.float64).reshape(-1, 1, 1)  # [Z, 1, 1]
    weight = torch.exp(-0.5 * z.squeeze(-1) ** 2) / math.sqrt(2 * math.pi) * (18 / 6000)
    masses = []
    for context in (torch.tensor([1.0, -0.5], dtype=torch.float64),
                    torch.tensor([-2.0, 1.5], dtype=torch.float64)):
        with torch.no_grad():
            log_lik = model.log_likelihood(every, z.expand(-1, 8, 1), context)  # [Z, 8]
            mass = (torch.exp(log_lik) * weight).sum(0)
            torch.testing.assert_close(mass.sum(), torch.tensor(1.0, dtype=torch.float64),
                                       rtol=0, atol=1e-6)
            estimate = model.iw_log_prob(every, k=4000, context=context,
                                         generator=torch.Generator().manual_seed(0))
        assert (estimate <= torch.log(mass) + 0.05).all(), (estimate, torch.log(mass))
        masses.append(mass)
    assert (masses[0] - masses[1]).abs().max() > 0.05  # the context matters
    assert model.sample(5, context=torch.zeros(2, dtype=torch.float64)).shape == (5, 3)
    with pytest.raises(ValueError, match="needs a context"):
        model.loss(every)
    with pytest.raises(ValueError, match="takes no context"):
        VAE(dim=3).loss(every.float(), context=torch.zeros(8, 2))
