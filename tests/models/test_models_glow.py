"""Glow and its layers from the mathematics (float64, small sizes): log-determinants against
autograd Jacobians (images flattened), exact inverses, LU factors against slogdet and
F.conv2d, the squeeze's layout, ActNorm's per-channel initialisation, the coupling's and
the multi-scale structure by perturbation, the change of variables, RealNVP's mixing
layers (with normalisation by quadrature at D = 2), and training on the digits."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.functional import jacobian
from torch.distributions import Normal

from energydsl.models import (
    ChannelCoupling,
    Glow,
    InvConv1x1,
    LULinear,
    Permutation,
    RealNVP,
    Squeeze,
)
from energydsl.models.flows import ActNorm, _Flow

from models_helpers import perturb

Map = Callable[[Tensor], tuple[Tensor, Tensor]]
F64 = torch.float64


def _jacobian(f: Map, x: Tensor) -> Tensor:
    """The autograd Jacobian of one example's map, input and output flattened."""
    shape = x.shape
    return jacobian(lambda row: f(row.reshape(1, *shape))[0].flatten(), x.flatten())


def autograd_logdet(f: Map, x: Tensor) -> Tensor:
    """log|det J| per example, from torch.linalg.slogdet of the autograd Jacobian."""
    out = []
    for xi in x:
        sign, logabs = torch.linalg.slogdet(_jacobian(f, xi))
        assert sign != 0
        out.append(logabs)
    return torch.stack(out)


def check_layer(layer: torch.nn.Module, x: Tensor) -> Tensor:
    """The layer's log|det| equals autograd's and inverse(forward(x)) == x; returns y."""
    y, logdet = layer(x)
    assert logdet.shape == (x.shape[0],)
    torch.testing.assert_close(logdet, autograd_logdet(layer, x), rtol=0, atol=1e-10)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-10)
    return y


def _randn(*shape: int, seed: int = 0) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _is_permutation_matrix(m: Tensor) -> bool:
    return bool(((m == 0) | (m == 1)).all() and (m.sum(0) == 1).all() and (m.sum(1) == 1).all())


# -- flat layers -----------------------------------------------------------------------------
def test_permutation_reverses_or_shuffles_with_log_det_zero() -> None:
    v = _randn(3, 6)
    rev = Permutation(6)
    y, logdet = rev(v)
    assert torch.equal(y, v.flip(1)) and torch.equal(logdet, torch.zeros(3, dtype=F64))
    shuffle = Permutation(6, "random", seed=1)
    y, logdet = shuffle(v)
    assert torch.equal(torch.sort(y, 1).values, torch.sort(v, 1).values)
    assert not torch.equal(y, v) and not torch.equal(y, v.flip(1))
    assert torch.equal(shuffle.inverse(y), v) and torch.equal(logdet, torch.zeros(3, dtype=F64))
    assert _is_permutation_matrix(_jacobian(shuffle, v[0]))
    # The ordering is a seeded buffer: a loaded state dict brings its ordering along.
    other = Permutation(6, "random", seed=2)
    assert not torch.equal(other(v)[0], y)
    other.load_state_dict(shuffle.state_dict())
    assert torch.equal(other(v)[0], y)
    with pytest.raises(ValueError, match="kind"):
        Permutation(6, "sorted")


def _lu_layer(dim: int, seed: int = 0, cls: type[LULinear] = LULinear) -> LULinear:
    torch.manual_seed(seed)
    # Perturbing every entry (the diagonal and the other triangle of `lower` and `upper`
    # as well) also checks that only the triangles the factorisation uses are read.
    return perturb(cls(dim), 0.3, seed).double()


def _assembled(layer: LULinear) -> Tensor:
    """P L (U + diag s) from the factors, with the matrices written out."""
    dim = layer.log_s.numel()
    eye = torch.eye(dim, dtype=F64)
    p = eye[layer.perm]  # P[i, perm[i]] = 1
    lower = layer.lower.tril(-1) + eye
    upper = layer.upper.triu(1) + torch.diag(layer.sign * torch.exp(layer.log_s))
    return p @ lower @ upper


def test_lu_linear_is_its_factors_product_with_slogdet_log_det() -> None:
    layer = _lu_layer(5)
    w = _assembled(layer).detach()
    torch.testing.assert_close(layer.weight(), w, rtol=0, atol=1e-12)
    v = _randn(4, 5)
    y = check_layer(layer, v)
    torch.testing.assert_close(y, v @ w.T, rtol=0, atol=1e-12)
    sign, logabs = torch.linalg.slogdet(w)
    assert sign != 0
    torch.testing.assert_close(layer(v)[1], logabs.expand(4), rtol=0, atol=1e-12)
    # And from the latent side: forward(inverse(z)) == z.
    z = _randn(4, 5, seed=1)
    torch.testing.assert_close(layer(layer.inverse(z))[0], z, rtol=0, atol=1e-10)


def test_lu_linear_starts_at_a_random_rotation() -> None:
    torch.manual_seed(0)
    a = LULinear(6)
    torch.manual_seed(1)
    b = LULinear(6)
    w = a.weight().detach().double()
    torch.testing.assert_close(w @ w.T, torch.eye(6, dtype=F64), rtol=0, atol=1e-5)
    assert abs(float(a.log_abs_det().detach())) < 1e-5  # |det| = 1
    assert (w - torch.diag(w.diagonal())).abs().max() > 0.1  # no permutation of the axes
    assert not torch.allclose(a.weight(), b.weight())


def test_inv_conv_1x1_is_a_conv2d_with_the_lu_weight() -> None:
    layer = _lu_layer(4, cls=InvConv1x1)
    assert isinstance(layer, InvConv1x1)
    x = _randn(3, 4, 3, 2)  # H != W
    y = check_layer(layer, x)
    w = _assembled(layer).detach()
    torch.testing.assert_close(y, F.conv2d(x, w[:, :, None, None]), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x)[1], 6 * torch.linalg.slogdet(w)[1].expand(3),
                               rtol=0, atol=1e-12)


# -- image layers ---------------------------------------------------------------------------
def test_squeeze_moves_each_2x2_patch_into_channels() -> None:
    x = _randn(2, 3, 4, 6)
    squeeze = Squeeze()
    y, logdet = squeeze(x)
    assert y.shape == (2, 12, 2, 3) and torch.equal(logdet, torch.zeros(2, dtype=F64))
    for c in range(3):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[:, 4 * c + 2 * i + j], x[:, c, i::2, j::2])
    assert torch.equal(squeeze.inverse(y), x)
    assert _is_permutation_matrix(_jacobian(squeeze, x[0]))
    with pytest.raises(ValueError, match="even"):
        squeeze(_randn(1, 1, 3, 4))


def test_actnorm_on_images_whitens_each_channel_of_the_first_batch() -> None:
    x = torch.tensor([3.0, -1.0, 0.5], dtype=F64).view(1, 3, 1, 1) + torch.tensor(
        [2.0, 0.1, 5.0], dtype=F64).view(1, 3, 1, 1) * _randn(16, 3, 4, 4)  # fmt: skip
    norm = ActNorm(3).double()
    assert not bool(norm.initialised)
    y, _ = norm(x)
    assert bool(norm.initialised)
    zeros, ones = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    torch.testing.assert_close(y.mean((0, 2, 3)), zeros, rtol=0, atol=1e-10)
    torch.testing.assert_close(y.std((0, 2, 3)), ones, rtol=0, atol=1e-5)
    # Later batches do not re-initialise it.
    y2, _ = norm(2 * x)
    torch.testing.assert_close(y2.mean((0, 2, 3)), norm.shift.detach() * torch.exp(
        -norm.log_scale.detach()), rtol=0, atol=1e-10)  # fmt: skip
    perturb(norm, 0.3)
    check_layer(norm, _randn(3, 3, 2, 5, seed=1))  # log|det| = -H W sum(s)


@pytest.mark.parametrize("channels", [4, 5])
def test_channel_coupling_starts_as_identity_then_is_triangular(channels: int) -> None:
    torch.manual_seed(0)
    layer = ChannelCoupling(channels, hidden=6).double()
    x = _randn(3, channels, 3, 3)
    y, logdet = layer(x)
    assert torch.equal(y, x) and torch.equal(logdet, torch.zeros(3, dtype=F64))  # zero init
    perturb(layer, 0.3)
    y = check_layer(layer, x)
    kept = channels // 2
    assert torch.equal(y[:, :kept], x[:, :kept]) and not torch.equal(y, x)
    # Structure: the kept channels map to themselves; a moved entry depends on the kept
    # channels and on itself only (a diagonal block), so the Jacobian is triangular.
    n_kept = kept * 9
    jac = _jacobian(layer, x[0])
    torch.testing.assert_close(jac[:n_kept], torch.eye(channels * 9, dtype=F64)[:n_kept])
    moved = jac[n_kept:, n_kept:]
    assert torch.equal(moved, torch.diag(moved.diagonal()))
    assert (jac[n_kept:, :n_kept].abs() > 0).any()


def test_coupling_log_scales_are_bounded_in_float32() -> None:
    torch.manual_seed(0)
    layer = ChannelCoupling(4, hidden=8, max_log_scale=2.0)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(1e3 * torch.randn(p.shape))
        x = torch.randn(8, 4, 4, 4)
        s, _ = layer._s_t(x[:, :2], None)
        y, logdet = layer(x)
    assert s.abs().max() <= 2.0 and s.abs().max() > 1.9
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()


# -- the multi-scale flow -------------------------------------------------------------------
def make_glow(dequantization: str = "none", channels: int = 1, side: int = 4,
              levels_of_scale: int = 2, seed: int = 0, context_dim: int = 0) -> Glow:
    torch.manual_seed(seed)
    glow = Glow(side=side, channels=channels, levels_of_scale=levels_of_scale,
                steps_per_level=2, hidden=8, dequantization=dequantization,
                context_dim=context_dim)
    perturb(glow, 0.2, seed)  # non-trivial couplings (their last convs start at zero)
    return glow.double()


def full_map(flow: _Flow, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Data y -> latent z, with the total log|det| (preprocessing + flow)."""
    v, ld_pre = flow.preprocess(y.flatten(1))
    z, ld = flow.forward_transform(v, context)
    return z, ld + ld_pre


GLOWS = [
    pytest.param({"levels_of_scale": 2}, id="side4-2levels"),
    pytest.param({"levels_of_scale": 1}, id="side4-1level"),
    pytest.param({"channels": 2, "levels_of_scale": 2}, id="2channels"),
]


@pytest.mark.parametrize("dequantization", ["none", "logit"])
@pytest.mark.parametrize("kw", GLOWS)
def test_glow_log_det_against_autograd_and_inverse(kw: dict, dequantization: str) -> None:
    glow = make_glow(dequantization, **kw)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(3, *glow.event_shape, generator=g, dtype=F64)
    z, logdet = full_map(glow, y)
    torch.testing.assert_close(logdet, autograd_logdet(lambda r: full_map(glow, r), y),
                               rtol=0, atol=1e-10)
    with torch.no_grad():
        back = glow.postprocess(glow.inverse_transform(z)).reshape(y.shape)
        z2 = torch.randn(3, glow.dim, generator=g, dtype=F64)
        again, _ = glow.forward_transform(glow.inverse_transform(z2))
    assert (z.reshape(y.shape) - y).abs().max() > 1e-2  # not the identity
    torch.testing.assert_close(back, y, rtol=0, atol=1e-10)
    torch.testing.assert_close(again, z2, rtol=0, atol=1e-10)


@pytest.mark.parametrize("dequantization", ["none", "logit"])
def test_glow_log_density_is_the_change_of_variables(dequantization: str) -> None:
    """log p(y) = log N(z; 0, I) + log|det dz/dy|, with the determinant from autograd's
    Jacobian and the normal density from torch.distributions (images and flat rows alike)."""
    glow = make_glow(dequantization)
    y = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    with torch.no_grad():
        z, _ = full_map(glow, y)
        ours = glow.log_density(y)
        assert torch.equal(ours, glow.log_density(y.flatten(1)))
    ref = Normal(0.0, 1.0).log_prob(z).sum(1) + autograd_logdet(lambda r: full_map(glow, r), y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)


def test_a_conditional_glow_is_a_change_of_variables_for_each_context() -> None:
    """context_dim = 3: for two contexts, log p(y | c) = log N(z; 0, I) + log|det dz/dy|
    with autograd's Jacobian at that context, the inverse holds, and the densities differ."""
    glow = make_glow("logit", context_dim=3)
    y = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    values = []
    for context in (torch.tensor([1.0, 0.0, 0.0], dtype=F64),
                    torch.tensor([0.0, -1.0, 2.0], dtype=F64)):
        c = context.expand(3, -1)
        with torch.no_grad():
            z, _ = full_map(glow, y, c)
            ours = glow.log_density(y, context=c)
            back = glow.postprocess(glow.inverse_transform(z, c)).reshape(y.shape)
        ref = Normal(0.0, 1.0).log_prob(z).sum(1) + autograd_logdet(
            lambda r, c=context: full_map(glow, r, c), y)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10)
        torch.testing.assert_close(back, y, rtol=0, atol=1e-10)
        values.append(ours)
    assert (values[0] - values[1]).abs().min() > 1e-3
    with pytest.raises(ValueError, match="context"):
        glow.log_density(y)
    assert glow.sample(2, context=torch.zeros(3, dtype=F64)).shape == (2, 1, 4, 4)


def test_factored_out_half_skips_the_later_levels() -> None:
    """Side 4: level 0 maps the 16 entries to [4, 2, 2] and factors out channels 2-3 (the
    last 8 entries of z); level 1 works on the first 8 only. So z[:, 8:] is level 0's
    output and does not move when level 1's parameters change, while z[:, :8] does."""
    glow = make_glow()
    v = _randn(5, 16)
    with torch.no_grad():
        z, _ = glow.forward_transform(v)
        after_first, _ = glow.layers[0](v)
        assert torch.equal(z[:, 8:], after_first[:, 8:])
        for p in glow.layers[1].parameters():
            p.add_(0.5)
        z_moved, _ = glow.forward_transform(v)
    assert torch.equal(z_moved[:, 8:], z[:, 8:])
    assert (z_moved[:, :8] - z[:, :8]).abs().min() > 1e-6


def test_glow_defaults_shapes_and_float32(digits: Tensor) -> None:
    glow = Glow()
    assert glow.event_shape == (1, 8, 8) and glow.dim == 64
    assert glow.log_prob_kind == "lower_bound" and glow.data_kind == "continuous"
    assert Glow(dequantization="none").log_prob_kind == "exact"
    # 8x8 -> [4, 4, 4] (2 channels factored out) -> [16, 2, 2].
    assert [lvl.in_shape for lvl in glow.layers] == [(1, 8, 8), (2, 4, 4)]
    edge = torch.cat([torch.zeros(4, 64), torch.ones(4, 64), digits[:8]])
    glow.train()
    g = torch.Generator().manual_seed(0)
    lp = glow.log_prob(edge, g)
    assert lp.shape == (16,) and torch.isfinite(lp).all()
    bpd = glow.bits_per_dim(edge, torch.Generator().manual_seed(0))
    torch.testing.assert_close(bpd, -lp / (64 * math.log(2)))
    glow.eval()
    s = glow.sample(5, generator=torch.Generator().manual_seed(1))
    assert s.shape == (5, 1, 8, 8) and s.min() >= 0 and s.max() <= 1
    r = glow.rsample(5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(r.clamp(0, 1), s)
    r.sum().backward()
    assert glow.layers[0].steps[1].log_s.grad is not None  # differentiable draws
    with pytest.raises(ValueError):
        glow.log_prob(digits[:4].reshape(4, 2, 32))
    with pytest.raises(ValueError, match="halved"):
        Glow(side=6, levels_of_scale=2)


def test_first_training_batch_initialises_every_actnorm() -> None:
    glow = make_glow()
    for norm in (m for m in glow.modules() if isinstance(m, ActNorm)):
        norm.initialised.fill_(False)
    y = torch.rand(32, 16, generator=torch.Generator().manual_seed(3), dtype=F64)
    glow.train()
    glow.loss(y)
    norms = [m for m in glow.modules() if isinstance(m, ActNorm)]
    assert len(norms) == 4 and all(bool(m.initialised) for m in norms)
    # The first one whitened the squeezed data channel by channel.
    squeezed = F.pixel_unshuffle(y.reshape(32, 1, 4, 4), 2)
    torch.testing.assert_close(norms[0].shift.detach(), squeezed.mean((0, 2, 3)))


def test_thirty_adam_steps_lower_the_loss(digits: Tensor) -> None:
    torch.manual_seed(0)
    glow = Glow()
    opt = torch.optim.Adam(glow.parameters(), lr=1e-3)

    def loss() -> Tensor:
        return glow.loss(digits, torch.Generator().manual_seed(7))

    with torch.no_grad():
        before = float(loss())  # (in training mode: sets the ActNorms from the data)
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert after < before - 10.0, (before, after)  # nats per digit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_glow_runs_on_cuda(digits: Tensor) -> None:
    glow = Glow(hidden=8).cuda()
    glow.loss(digits.cuda()).backward()
    s = glow.sample(3, generator=torch.Generator("cuda").manual_seed(0))
    assert s.device.type == "cuda" and torch.isfinite(s).all()


# -- mixing layers in a flat flow -----------------------------------------------------------
@pytest.mark.parametrize("mixing", ["reverse", "random", "lu"])
def test_realnvp_mixing_layers(mixing: str) -> None:
    torch.manual_seed(0)
    flow = perturb(RealNVP(dim=5, n_couplings=3, hidden=(8,), mask="alternating",
                           dequantization="logit", mixing=mixing), 0.2).double()  # fmt: skip
    kinds = [type(layer).__name__ for layer in flow.layers]
    mixer = "LULinear" if mixing == "lu" else "Permutation"
    assert kinds == [mixer, "AffineCoupling"] * 3
    y = torch.rand(3, 5, generator=torch.Generator().manual_seed(1), dtype=F64)
    z, logdet = full_map(flow, y)
    torch.testing.assert_close(logdet, autograd_logdet(lambda r: full_map(flow, r), y),
                               rtol=0, atol=1e-10)
    with torch.no_grad():
        torch.testing.assert_close(flow.postprocess(flow.inverse_transform(z)), y, rtol=0,
                                   atol=1e-10)
    with pytest.raises(ValueError, match="mixing"):
        RealNVP(dim=4, mixing="shuffle")


def test_lu_mixed_2d_density_integrates_to_one() -> None:
    torch.manual_seed(0)
    flow = perturb(RealNVP(dim=2, n_couplings=4, hidden=(16,), mask="alternating",
                           dequantization="none", mixing="lu"), 0.2).double()  # fmt: skip
    edges = torch.linspace(-20, 20, 501, dtype=F64)
    grid, dx = (edges[:-1] + edges[1:]) / 2, 40 / 500
    with torch.no_grad():
        mass = torch.exp(flow.log_density(torch.cartesian_prod(grid, grid))).sum() * dx * dx
    assert abs(float(mass) - 1) < 1e-3
