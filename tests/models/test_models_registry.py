"""Every registered model through the shared protocol on the embedded digits data."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from energydsl.models import DATA_KINDS, DATA_NOTES, GAN, MODELS, create

from models_helpers import data_for

NAMES = sorted(MODELS)
EXPECTED = {
    "linear_ae", "mlp_ae", "conv_ae", "denoising_ae", "sparse_ae", "vae", "conv_vae", "gan",
    "dcgan", "nice", "realnvp", "maf", "iaf", "fvsbn", "nade", "made", "pixelcnn", "lstm_ar",
    "beta_vae", "untied_nade", "rnn_ar", "glow", "gated_pixelcnn",
}  # fmt: skip
BINARY = {"fvsbn", "nade", "made", "pixelcnn", "lstm_ar", "vae", "conv_vae", "beta_vae",
          "untied_nade", "rnn_ar", "gated_pixelcnn"}


def build(name: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MODELS[name]()


def seeded_loss(model: nn.Module, x: Tensor, seed: int = 123) -> Tensor:
    """The loss with fixed noise, so stochastic objectives are comparable across calls."""
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.loss(x)


def test_registry_names_and_data_kinds() -> None:
    assert set(MODELS) == EXPECTED
    assert set(DATA_NOTES) == EXPECTED
    for name in NAMES:
        expected = "binary" if name in BINARY else "continuous"
        assert DATA_KINDS[name] == expected, name
        assert build(name).data_kind == expected, name
    with pytest.raises(KeyError):
        create("no_such_model")


@pytest.mark.parametrize("name", NAMES)
def test_protocol_attributes(name: str, digits: Tensor) -> None:
    model = build(name)
    assert isinstance(model, nn.Module)
    assert model.log_prob_kind in ("exact", "lower_bound", "none")
    # The method exists exactly when the model has a likelihood (exact or bound).
    assert hasattr(model, "log_prob") == (model.log_prob_kind != "none")
    assert math.prod(model.event_shape) == digits.shape[1]
    x = data_for(model, digits)
    loss = model.loss(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    if model.log_prob_kind != "none":
        lp = model.log_prob(x)
        assert lp.shape == (x.shape[0],) and torch.isfinite(lp).all()
        # An image model accepts the same data as images and gives the same values.
        if len(model.event_shape) == 3:
            torch.manual_seed(5)
            lp_flat = model.log_prob(x)
            torch.manual_seed(5)
            lp_img = model.log_prob(x.reshape(-1, *model.event_shape))
            torch.testing.assert_close(lp_flat, lp_img, rtol=0, atol=0)


@pytest.mark.parametrize("name", [n for n in NAMES if n not in ("gan", "dcgan")])
def test_few_steps_lower_the_loss(name: str, digits: Tensor) -> None:
    model = build(name)
    x = data_for(model, digits)
    before = seeded_loss(model, x)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(15):
        opt.zero_grad(set_to_none=True)
        backward_once(model, x)
        opt.step()
    after = seeded_loss(model, x)
    assert after < before - 1e-3 * abs(float(before)), (float(before), float(after))


@pytest.mark.parametrize("name", ["gan", "dcgan"])
def test_gan_players_lower_their_own_losses(name: str, digits: Tensor) -> None:
    """GAN training is two minimisations: each player's steps lower that player's loss."""
    model = build(name)
    assert isinstance(model, GAN)
    x = digits

    def d_loss() -> float:
        with torch.no_grad():
            return float(model.discriminator_loss(x, torch.Generator().manual_seed(1)))

    def g_loss() -> float:
        with torch.no_grad():
            return float(model.generator_loss(64, torch.Generator().manual_seed(2)))

    opt_d = torch.optim.Adam(model.discriminator_net.parameters(), lr=1e-3)
    before = d_loss()
    for _ in range(10):
        opt_d.zero_grad(set_to_none=True)
        model.discriminator_loss(x, torch.Generator().manual_seed(1)).backward()
        opt_d.step()
    assert d_loss() < before

    opt_g = torch.optim.Adam(model.generator_net.parameters(), lr=1e-3)
    before = g_loss()
    for _ in range(10):
        opt_g.zero_grad(set_to_none=True)
        model.generator_loss(64, torch.Generator().manual_seed(2)).backward()
        opt_g.step()
    assert g_loss() < before

    out = model.train_step(x, opt_d, opt_g)
    assert set(out) == {"discriminator_loss", "generator_loss"}
    assert all(math.isfinite(v) for v in out.values())


def backward_once(model, x: Tensor) -> None:
    """One backward pass of what trains the model: its loss, or a GAN's two players' own
    losses (its `loss` is for monitoring and carries no gradient)."""
    if hasattr(model, "train_step"):
        model.discriminator_loss(x).backward()
        model.generator_loss(len(x)).backward()
    else:
        model.loss(x).backward()


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_parameter(name: str, digits: Tensor) -> None:
    """Every parameter is connected to the training objective. Checked after one optimiser
    step: a zero-initialised output layer (Glow's couplings start as the identity) passes no
    gradient back to the layers before it at initialisation, by design, only once it moved."""
    model = build(name)
    x = data_for(model, digits)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    backward_once(model, x)
    opt.step()
    opt.zero_grad(set_to_none=True)
    backward_once(model, x)
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip(name: str, digits: Tensor) -> None:
    model = build(name, seed=0)
    x = data_for(model, digits)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for _ in range(2):  # move away from the initialisation (and BatchNorm statistics)
        opt.zero_grad(set_to_none=True)
        backward_once(model, x)
        opt.step()
    fresh = build(name, seed=99)
    model.eval()
    fresh.eval()
    # The comparison below can fail: a different initialisation gives a different loss.
    assert not torch.equal(seeded_loss(model, x), seeded_loss(fresh, x))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(seeded_loss(model, x), seeded_loss(fresh, x))
    if model.log_prob_kind != "none":
        torch.manual_seed(11)
        a = model.log_prob(x)
        torch.manual_seed(11)
        b = fresh.log_prob(x)
        assert torch.equal(a, b)
    sa = model.sample(5, generator=torch.Generator().manual_seed(3))
    sb = fresh.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(sa, sb)


@pytest.mark.parametrize("name", NAMES)
def test_sample_shape_and_determinism(name: str, digits: Tensor) -> None:
    model = build(name)
    model.eval()
    s = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, *model.event_shape)
    assert s.reshape(6, -1).shape[1] == digits.shape[1]
    assert torch.isfinite(s).all()
    assert torch.equal(s, model.sample(6, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(4)
    s1 = model.sample(6)
    torch.manual_seed(4)
    assert torch.equal(s1, model.sample(6))  # global seed is honoured too
    if model.data_kind == "binary":
        assert set(s.unique().tolist()) <= {0.0, 1.0}
    if name in ("gan", "dcgan", "nice", "realnvp", "maf", "iaf", "glow"):
        assert s.min() >= 0 and s.max() <= 1
