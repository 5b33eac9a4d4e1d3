"""Flows: invertibility, log-determinants against autograd, normalisation by quadrature,
half-input coupling networks (parameter counts), the split-space path."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import Tensor
from torch.autograd.functional import jacobian

from energydsl.models import NICE, AdditiveCoupling, AffineCoupling, RealNVP, make_mask
from energydsl.models.flows import _Flow

from models_helpers import perturb

FLOW_CONFIGS = {
    "nice-alternating": (NICE, {"dim": 6, "mask": "alternating"}),
    "nice-half": (NICE, {"dim": 6, "mask": "half"}),
    "realnvp-alternating": (RealNVP, {"dim": 6, "mask": "alternating"}),
    "realnvp-checkerboard": (RealNVP, {"dim": 9, "mask": "checkerboard", "side": 3}),
    # An even side: the kept entries are no arithmetic progression of flat indices.
    "nice-checkerboard-even": (NICE, {"dim": 16, "mask": "checkerboard", "side": 4}),
    # Odd D: the networks map 3 entries to 4 (and 4 to 3) in alternate layers.
    "realnvp-half-odd": (RealNVP, {"dim": 7, "mask": "half"}),
}


def make_flow(key: str, dequantization: str = "none", seed: int = 0) -> _Flow:
    cls, kw = FLOW_CONFIGS[key]
    torch.manual_seed(seed)
    flow = cls(n_couplings=4, hidden=(16,), dequantization=dequantization, **kw)
    perturb(flow, 0.2, seed)  # non-trivial scaling layer / scales as well
    return flow.double()


def full_map(flow: _Flow, y: Tensor) -> tuple[Tensor, Tensor]:
    """Data y -> latent z, with the total log|det| (preprocessing + flow)."""
    v, ld_pre = flow.preprocess(y)
    z, ld = flow.forward_transform(v)
    return z, ld + ld_pre


@pytest.mark.parametrize("dequantization", ["none", "logit"])
@pytest.mark.parametrize("key", sorted(FLOW_CONFIGS))
def test_inverse_recovers_input(key: str, dequantization: str) -> None:
    flow = make_flow(key, dequantization)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(32, flow.dim, generator=g, dtype=torch.float64)
    if dequantization == "none":
        y = 3 * y - 1.5
    with torch.no_grad():
        z, _ = full_map(flow, y)
        back = flow.postprocess(flow.inverse_transform(z))
        # And the other direction: f(f^-1(z)) = z.
        z2 = torch.randn(32, flow.dim, generator=g, dtype=torch.float64)
        again, _ = flow.forward_transform(flow.inverse_transform(z2))
    assert (z - y).abs().max() > 1e-2  # the map is not the identity
    torch.testing.assert_close(back, y, rtol=0, atol=1e-12)
    torch.testing.assert_close(again, z2, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dequantization", ["none", "logit"])
@pytest.mark.parametrize("key", sorted(FLOW_CONFIGS))
def test_log_det_equals_autograd_jacobian(key: str, dequantization: str) -> None:
    flow = make_flow(key, dequantization)
    y = torch.rand(4, flow.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, logdet = full_map(flow, y)
    for i in range(y.shape[0]):
        jac = jacobian(lambda row: full_map(flow, row.unsqueeze(0))[0].squeeze(0), y[i])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabs, rtol=0, atol=1e-10)


def _grid(lo: float, hi: float, n: int) -> tuple[Tensor, float]:
    """Midpoints of n cells on [lo, hi] and the cell width."""
    edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    return (edges[:-1] + edges[1:]) / 2, (hi - lo) / n


def flow_2d(
    cls: type[_Flow], prior: str, dequantization: str = "none", alpha: float = 0.05
) -> _Flow:
    torch.manual_seed(0)
    flow = cls(
        dim=2, n_couplings=4, hidden=(16,), mask="alternating", prior=prior,
        dequantization=dequantization, alpha=alpha, levels=4,
    )  # fmt: skip
    perturb(flow, 0.2, 0)
    return flow.double()


@pytest.mark.parametrize(
    ("cls", "prior", "half_width", "n"),
    [(RealNVP, "gaussian", 20.0, 500), (NICE, "logistic", 40.0, 600), (NICE, "gaussian", 12, 300)],
)
def test_2d_density_integrates_to_one(
    cls: type[_Flow], prior: str, half_width: float, n: int
) -> None:
    flow = flow_2d(cls, prior)
    g, dx = _grid(-half_width, half_width, n)
    with torch.no_grad():
        mass = torch.exp(flow.log_density(torch.cartesian_prod(g, g))).sum() * dx * dx
    assert abs(float(mass) - 1) < 1e-3


def test_samples_follow_the_density() -> None:
    """Sample moments match the moments of the density computed by quadrature."""
    flow = flow_2d(RealNVP, "gaussian")
    g, dx = _grid(-20, 20, 500)
    pts = torch.cartesian_prod(g, g)
    with torch.no_grad():
        w = torch.exp(flow.log_density(pts)) * dx * dx
    mean_q = (w[:, None] * pts).sum(0) / w.sum()
    s = flow.sample(20000, generator=torch.Generator().manual_seed(0))
    se = s.std(0) / math.sqrt(s.shape[0])
    assert ((s.mean(0) - mean_q).abs() < 5 * se).all(), (s.mean(0), mean_q, se)


def test_logit_dequantised_density_on_unit_square() -> None:
    """With alpha = 0 the logit map is a bijection onto (0, 1)^2: the density integrates to 1.

    With alpha > 0 only the flow's mass inside the box [logit(a), logit(1-a)]^2 lands in
    [0, 1]^2; that box mass is computed independently in the flow's input space.
    """
    g, dy = _grid(0.0, 1.0, 600)
    unit = torch.cartesian_prod(g, g)
    alpha = 0.2
    with torch.no_grad():
        exact = flow_2d(RealNVP, "gaussian", "logit", alpha=0.0)
        assert abs(float(torch.exp(exact.log_density(unit)).sum() * dy * dy) - 1) < 1e-3
        shrunk = flow_2d(RealNVP, "gaussian", "logit", alpha=alpha)
        mass_y = float(torch.exp(shrunk.log_density(unit)).sum() * dy * dy)
        edge = math.log((1 - alpha) / alpha)
        gv, dv = _grid(-edge, edge, 600)
        z, ld = shrunk.forward_transform(torch.cartesian_prod(gv, gv))
        mass_v = float(torch.exp(shrunk.prior_log_prob(z) + ld).sum() * dv * dv)
    assert mass_y < 0.99
    assert abs(mass_y - mass_v) < 1e-3


@pytest.mark.parametrize(
    ("cls", "prior", "dequantization"),
    [(RealNVP, "gaussian", "logit"), (NICE, "gaussian", "uniform")],
)
def test_dequantisation_bound(cls: type[_Flow], prior: str, dequantization: str) -> None:
    """log_prob(x) is an unbiased estimate of E_u[log p(y)] - D log L <= log P(cell).

    Both sides come from quadrature over each cell [k/L, (k+1)/L]^2 of y-space: the
    expectation under the uniform noise, and the discrete mass P(cell) (Jensen).
    """
    flow = flow_2d(cls, prior, dequantization, alpha=0.05)
    levels, per_cell = 4, 40
    g, dy = _grid(0.0, 1.0, levels * per_cell)
    with torch.no_grad():
        logp = flow.log_density(torch.cartesian_prod(g, g)).reshape(
            levels, per_cell, levels, per_cell
        )
        log_mass = torch.logsumexp(logp, dim=(1, 3)) + 2 * math.log(dy)  # [L, L]
        expected = logp.mean(dim=(1, 3)) - 2 * math.log(levels)  # E_u[log p(y)] - D log L
        assert float(torch.exp(log_mass).sum()) <= 1 + 1e-6
        ks = torch.cartesian_prod(torch.arange(levels), torch.arange(levels))
        x = ks.double() / (levels - 1)
        reps = 4000
        est = flow.log_prob(x.repeat(reps, 1), torch.Generator().manual_seed(3))
    est = est.reshape(reps, -1)
    mean, se = est.mean(0), est.std(0) / math.sqrt(reps)
    exp_k, mass_k = expected[ks[:, 0], ks[:, 1]], log_mass[ks[:, 0], ks[:, 1]]
    assert ((mean - exp_k).abs() < 4 * se + 1e-3).all(), (mean - exp_k, se)
    assert (exp_k <= mass_k + 1e-9).all()


def test_bits_per_dim_of_identity_flows_match_scipy() -> None:
    """With zeroed coupling nets the flows are identities: log p is the prior's (scipy)."""
    y = np.random.default_rng(0).uniform(0.02, 0.98, size=(5, 6))
    t = torch.tensor(y)
    nice = NICE(dim=6, dequantization="none").double()
    real = RealNVP(dim=6, mask="alternating", dequantization="logit", alpha=0.05).double()
    for flow in (nice, real):
        with torch.no_grad():
            for layer in flow.layers:
                last = layer.net[-1]
                last.weight.zero_()
                last.bias.zero_()
    ref_nice = stats.logistic.logpdf(y).sum(1)
    s = 0.05 + 0.9 * y
    ref_real = (
        stats.norm.logpdf(np.log(s / (1 - s))) + np.log(0.9) - np.log(s) - np.log1p(-s)
    ).sum(1)
    with torch.no_grad():
        np.testing.assert_allclose(nice.log_prob(t).numpy(), ref_nice, rtol=1e-12)
        np.testing.assert_allclose(
            nice.bits_per_dim(t).numpy(), -ref_nice / (6 * math.log(2)), rtol=1e-12
        )
        np.testing.assert_allclose(real.log_density(t).numpy(), ref_real, rtol=1e-12)


def test_masks() -> None:
    assert make_mask(4, "half").tolist() == [1, 1, 0, 0]
    assert make_mask(5, "alternating").tolist() == [1, 0, 1, 0, 1]
    board = make_mask(16, "checkerboard", side=4).reshape(4, 4)
    assert board.tolist() == [[1, 0, 1, 0], [0, 1, 0, 1], [1, 0, 1, 0], [0, 1, 0, 1]]
    # Consecutive RealNVP layers use complementary masks, so every coordinate moves.
    flow = RealNVP(dim=16, side=4, n_couplings=2)
    assert torch.equal(flow.layers[0].mask + flow.layers[1].mask, torch.ones(16))


def test_float32_stays_finite_at_the_data_edges(digits: Tensor) -> None:
    """Dequantised all-zero and all-one pixels must not overflow the logit in float32."""
    edge = torch.cat([torch.zeros(4, 64), torch.ones(4, 64), digits[:8]])
    for flow in (NICE(), RealNVP(), RealNVP(alpha=0.0)):
        with torch.no_grad():
            assert torch.isfinite(flow.log_prob(edge)).all()
            assert torch.isfinite(flow.bits_per_dim(edge)).all()


def _mlp_params(sizes: list[int]) -> int:
    return sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (NICE, {}),
        (RealNVP, {}),
        (NICE, {"dim": 7, "mask": "half", "n_couplings": 3, "hidden": (5,)}),
        (RealNVP, {"dim": 9, "mask": "checkerboard", "side": 3, "hidden": (4, 6)}),
        (RealNVP, {"dim": 784, "side": 28, "hidden": (32,)}),
    ],
)
def test_coupling_networks_see_only_the_conditioning_half(cls: type[_Flow], kw: dict) -> None:
    """Parameters: each network maps the n_keep kept entries to 1 (NICE) or 2 (RealNVP)
    outputs per moved entry, as in the papers, plus RealNVP's per-entry scale of the
    log-scales and NICE's diagonal scaling."""
    flow = cls(**kw)
    hidden = list(kw.get("hidden", (128, 128)))
    per_moved = 1 if cls is NICE else 2
    expected = flow.dim if cls is NICE else 0
    for layer in flow.layers:
        n_keep = int(layer.mask.sum())
        n_move = flow.dim - n_keep
        assert layer.keep.numel() == n_keep and layer.move.numel() == n_move
        expected += _mlp_params([n_keep, *hidden, per_moved * n_move])
        expected += 0 if cls is NICE else n_move
    assert sum(p.numel() for p in flow.parameters()) == expected
    if flow.dim == 64:  # the defaults: D/2 = 32 inputs, 32 (NICE) or 64 (RealNVP) outputs
        assert flow.layers[0].net[0].in_features == 32
        assert flow.layers[0].net[-1].out_features == 32 * per_moved


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (NICE, {}),
        (RealNVP, {}),
        (RealNVP, {"mask": "alternating"}),
        (NICE, {"dim": 784, "mask": "checkerboard", "side": 28}),
        (RealNVP, {"dim": 784, "side": 28}),
    ],
)
def test_float32_inverse_recovers_input(cls: type[_Flow], kw: dict) -> None:
    torch.manual_seed(0)
    flow = perturb(cls(dequantization="none", **kw), 0.02, 0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, flow.dim, generator=g)
    with torch.no_grad():
        z, _ = flow.forward_transform(x)
        back = flow.inverse_transform(z)
        z2 = torch.randn(64, flow.dim, generator=g)
        again, _ = flow.forward_transform(flow.inverse_transform(z2))
    assert (z - x).abs().max() > 0.5  # the map is not the identity
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    torch.testing.assert_close(again, z2, rtol=0, atol=1e-5)


def _layer_by_layer(flow: _Flow, v: Tensor) -> tuple[Tensor, Tensor]:
    """forward_transform through the public coupling layers, one call each."""
    logdet = v.new_zeros(v.shape[0])
    for layer in flow.layers:
        v, ld = layer(v)
        logdet = logdet + ld
    if flow.log_scale is not None:
        v = v * torch.exp(flow.log_scale)
        logdet = logdet + flow.log_scale.sum()
    return v, logdet


@pytest.mark.parametrize("key", sorted(FLOW_CONFIGS))
def test_split_space_path_equals_the_layers_one_by_one(key: str) -> None:
    """The flow splits once and merges once; the values are the layers' own, exactly."""
    flow = make_flow(key)
    assert flow._alternating
    y = torch.randn(16, flow.dim, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        z, logdet = flow.forward_transform(y)
        z_ref, logdet_ref = _layer_by_layer(flow, y)
        back = flow.inverse_transform(z)
        back_ref = z * torch.exp(-flow.log_scale) if flow.log_scale is not None else z
        for layer in reversed(flow.layers):
            back_ref = layer.inverse(back_ref)
    assert torch.equal(z, z_ref) and torch.equal(logdet, logdet_ref)
    assert torch.equal(back, back_ref)
    # Each layer keeps its conditioning entries bit for bit.
    out, _ = flow.layers[0](y)
    keep = flow.layers[0].mask.bool()
    assert torch.equal(out[:, keep], y[:, keep]) and not torch.equal(out, y)


@pytest.mark.parametrize("cls", [AdditiveCoupling, AffineCoupling])
def test_a_coupling_layer_alone_is_invertible_with_its_log_det(cls: type) -> None:
    torch.manual_seed(0)
    layer = perturb(cls(make_mask(16, "checkerboard", side=4), (8,)), 0.3, 0).double()
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    y, logdet = layer(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-12)
    for i in range(x.shape[0]):
        jac = jacobian(lambda row: layer(row.unsqueeze(0))[0].squeeze(0), x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)


def test_loaded_masks_move_the_indices() -> None:
    """The index buffers are derived from the masks, so loading a state dict whose masks
    differ (same counts) gives the flow those masks; masks that no longer alternate fall
    back to the layers one by one, still exactly invertible."""
    torch.manual_seed(0)
    half = perturb(RealNVP(dim=6, n_couplings=4, mask="half", hidden=(8,),
                           dequantization="none"), 0.2, 0).double()  # fmt: skip
    alternating = RealNVP(dim=6, n_couplings=4, mask="alternating", hidden=(8,),
                          dequantization="none").double()  # fmt: skip
    alternating.load_state_dict(half.state_dict())
    y = torch.randn(8, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        for a, b in zip(alternating.forward_transform(y), half.forward_transform(y), strict=True):
            assert torch.equal(a, b)
        state = half.state_dict()
        state["layers.1.mask"] = state["layers.0.mask"].clone()  # two layers alike
        alternating.load_state_dict(state)
        assert not alternating._alternating
        z, logdet = alternating.forward_transform(y)
        z_ref, logdet_ref = _layer_by_layer(alternating, y)
        back = alternating.inverse_transform(z)
    assert torch.equal(z, z_ref) and torch.equal(logdet, logdet_ref)
    torch.testing.assert_close(back, y, rtol=0, atol=1e-12)
