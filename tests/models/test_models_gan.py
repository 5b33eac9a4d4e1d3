"""GAN value function (seed 001, 2.3-2.4): V(D*, G) = -log 4 + 2 JSD on 1-D Gaussians,
optimal discriminators with and without label smoothing, saturating generator gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.spatial.distance import jensenshannon
from torch import Tensor
from torch.distributions import Normal

from energydsl.models import (
    DCGAN,
    GAN,
    discriminator_loss_from_logits,
    generator_loss_from_logits,
    minimax_value,
)

P_DATA = (0.0, 1.0)


def grid() -> tuple[Tensor, float]:
    edges = torch.linspace(-15, 15, 30001, dtype=torch.float64)
    return (edges[:-1] + edges[1:]) / 2, 30 / 30000


def optimal_logit(x: Tensor, p_g: tuple[float, float]) -> Tensor:
    """logit of D* = p_d / (p_d + p_g), i.e. log p_d(x) - log p_g(x)."""
    return Normal(*P_DATA).log_prob(x) - Normal(*p_g).log_prob(x)


@pytest.mark.parametrize("p_g", [(0.0, 1.0), (1.0, 1.5), (-2.0, 0.5)])
def test_value_at_optimal_discriminator_by_quadrature(p_g: tuple[float, float]) -> None:
    x, dx = grid()
    w_d = torch.exp(Normal(*P_DATA).log_prob(x)) * dx
    w_g = torch.exp(Normal(*p_g).log_prob(x)) * dx
    logit = optimal_logit(x, p_g)
    value = float(minimax_value(logit, logit, w_d, w_g))
    # JSD computed independently: scipy's Jensen-Shannon distance (natural log), squared.
    pd = stats.norm.pdf(x.numpy(), *P_DATA)
    pg = stats.norm.pdf(x.numpy(), *p_g)
    jsd = jensenshannon(pd, pg) ** 2
    assert value == pytest.approx(-math.log(4) + 2 * jsd, abs=1e-8)
    if p_g == P_DATA:
        assert value == pytest.approx(-math.log(4), abs=1e-12)
    else:
        assert value > -math.log(4) + 0.01
    # D* maximises V: any other discriminator does worse.
    for other in (logit + 0.3, logit - 0.3, logit + 0.5 * torch.tanh(x), 0.8 * logit + 0.1):
        assert float(minimax_value(other, other, w_d, w_g)) < value


def test_value_at_optimal_discriminator_by_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    n, p_g = 200_000, (1.0, 1.5)
    xd = P_DATA[0] + P_DATA[1] * torch.randn(n, generator=g, dtype=torch.float64)
    xg = p_g[0] + p_g[1] * torch.randn(n, generator=g, dtype=torch.float64)
    terms_d = torch.nn.functional.logsigmoid(optimal_logit(xd, p_g))
    terms_g = torch.nn.functional.logsigmoid(-optimal_logit(xg, p_g))
    value = float(minimax_value(optimal_logit(xd, p_g), optimal_logit(xg, p_g)))
    se = math.sqrt(float(terms_d.var()) / n + float(terms_g.var()) / n)
    pd = stats.norm.pdf(np.linspace(-15, 15, 30001), *P_DATA)
    pg = stats.norm.pdf(np.linspace(-15, 15, 30001), *p_g)
    expected = -math.log(4) + 2 * jensenshannon(pd, pg) ** 2
    assert abs(value - expected) < 4 * se
    # Identical distributions: D* = 1/2 everywhere and V = -log 4 exactly.
    same = optimal_logit(xd, P_DATA)
    assert float(minimax_value(same, same)) == pytest.approx(-math.log(4), abs=1e-12)


@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_smoothed_discriminator_optimum(real_label: float) -> None:
    """The per-point minimiser of D's loss is D = real_label * p_d / (p_d + p_g)."""
    x, dx = grid()
    x, p_g = x[::100], (1.0, 1.5)
    w_d = torch.exp(Normal(*P_DATA).log_prob(x))
    w_g = torch.exp(Normal(*p_g).log_prob(x))
    # Weights are normalised inside; use the normalised ones for the closed form.
    a, b = w_d / w_d.sum(), w_g / w_g.sum()
    d_star = real_label * a / (a + b)
    logit = torch.logit(d_star).requires_grad_(True)
    discriminator_loss_from_logits(logit, logit, real_label, w_d, w_g).backward()
    assert logit.grad is not None and logit.grad.abs().max() < 1e-15
    # The unsmoothed optimum is not stationary for the smoothed loss.
    if real_label < 1:
        plain = torch.logit(a / (a + b)).requires_grad_(True)
        discriminator_loss_from_logits(plain, plain, real_label, w_d, w_g).backward()
        assert plain.grad is not None and plain.grad.abs().max() > 1e-6


def test_minimax_generator_gradient_saturates_non_saturating_does_not() -> None:
    """Seed 001, 2.4: when D rejects fakes (logit -> -inf) log(1 - D) has a vanishing
    gradient (-sigmoid(l)) while -log D keeps one near -1 (-sigmoid(-l))."""
    logit = torch.tensor([-8.0, -4.0, 0.0, 3.0], dtype=torch.float64, requires_grad=True)
    (g_mm,) = torch.autograd.grad(generator_loss_from_logits(logit, "minimax"), logit)
    (g_ns,) = torch.autograd.grad(generator_loss_from_logits(logit, "non_saturating"), logit)
    n = logit.numel()
    sig = 1 / (1 + np.exp(-logit.detach().numpy()))
    np.testing.assert_allclose(g_mm.numpy(), -sig / n, rtol=1e-12)
    np.testing.assert_allclose(g_ns.numpy(), -(1 - sig) / n, rtol=1e-12)
    assert abs(float(g_mm[0])) < 1e-3 / n and abs(float(g_ns[0])) > 0.99 / n
    # Both generator losses move the fakes the same way: towards higher logits.
    assert (g_mm < 0).all() and (g_ns < 0).all()


@pytest.mark.parametrize("cls", [GAN, DCGAN])
def test_gan_losses_from_its_networks(cls: type[GAN], digits: Tensor) -> None:
    """discriminator_loss with real_label 1 is -V(D, G) on the same fakes (formula in numpy)."""
    torch.manual_seed(0)
    model = cls(real_label=1.0).double()
    x = digits[:32].double()
    with torch.no_grad():
        loss = float(model.discriminator_loss(x, torch.Generator().manual_seed(5)))
        fake = model.fake(32, torch.Generator().manual_seed(5))
        lr = model.discriminate(x).numpy()
        lf = model.discriminate(fake).numpy()
        g_loss = float(model.generator_loss(32, torch.Generator().manual_seed(5)))
    # log D = log sigmoid(l) = -log(1 + e^-l) and log(1 - D) = -log(1 + e^l), in numpy.
    value = -np.logaddexp(0, -lr).mean() - np.logaddexp(0, lf).mean()
    assert loss == pytest.approx(-value, rel=1e-10)
    assert g_loss == pytest.approx(np.logaddexp(0, -lf).mean(), rel=1e-10)
    assert fake.shape == (32, *model.event_shape)
    assert (fake >= 0).all() and (fake <= 1).all()
    assert not hasattr(model, "log_prob") and model.log_prob_kind == "none"


def test_train_step_updates_each_player_with_its_own_optimiser(digits: Tensor) -> None:
    torch.manual_seed(0)
    model = GAN(generator_hidden=(32, 64), discriminator_hidden=(64,))
    opt_d = torch.optim.SGD(model.discriminator_net.parameters(), lr=0.1)
    opt_g = torch.optim.SGD(model.generator_net.parameters(), lr=0.1)
    d0 = [p.detach().clone() for p in model.discriminator_net.parameters()]
    g0 = [p.detach().clone() for p in model.generator_net.parameters()]
    model.train_step(digits, opt_d, opt_g)
    d1, g1 = model.discriminator_net.parameters(), model.generator_net.parameters()
    assert all(not torch.equal(a, b) for a, b in zip(d0, d1, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(g0, g1, strict=True))
    # sample() uses eval-mode BatchNorm and restores the training mode.
    assert model.sample(1).shape == (1, 64)
    assert model.generator_net.training


@pytest.mark.parametrize("cls", [GAN, DCGAN])
def test_the_monitoring_loss_cannot_train_both_players_on_the_sum(cls, digits: Tensor) -> None:
    """GAN.loss is for monitoring: it carries no gradient, so backward() on it fails
    instead of pushing both players down one summed objective."""
    model = cls()
    value = model.loss(digits[:16])
    assert torch.isfinite(value) and not value.requires_grad
    with pytest.raises(RuntimeError):
        value.backward()
    # each player's own loss still trains it
    model.discriminator_loss(digits[:16]).backward()
    assert all(p.grad is not None for p in model.discriminator_net.parameters())


def test_dcgan_is_built_by_the_gan_constructor() -> None:
    """DCGAN passes its convolutional players to GAN.__init__ (no bypass of the parent)."""
    model = DCGAN(side=8, z_dim=10, channels=4)
    assert model.event_shape == (1, 8, 8) and model.dim == 64 and model.z_dim == 10
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"generator_net", "discriminator_net"}
    assert isinstance(model.generator_net[1], torch.nn.ConvTranspose2d)
    assert model.sample(3).shape == (3, 1, 8, 8)


def test_one_custom_player_without_the_other_is_refused() -> None:
    """generator_net and discriminator_net come together: one alone was silently dropped."""
    with pytest.raises(ValueError, match="both generator_net and discriminator_net"):
        GAN(dim=4, generator_net=torch.nn.Linear(100, 4))
