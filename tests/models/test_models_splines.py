"""Rational-quadratic splines (Durkan et al. 2019) from the mathematics, float64 and small:
the bare spline's inverse, log-derivative (autograd), monotonicity and continuity at the
knots and at +-bound; spline MAF/IAF/RealNVP log-determinants against autograd Jacobians,
inverses, the autoregressive property by perturbation, normalisation by quadrature."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.autograd.functional import jacobian

from energydsl.models import (
    IAF,
    MAF,
    MaskedSpline,
    RealNVP,
    SplineCoupling,
    create,
    make_mask,
    rq_spline,
)
from energydsl.models.flows import _Flow
from energydsl.models.splines import spline_knots

from models_helpers import perturb

F64 = torch.float64
BOUND = 3.0


def params(n: int, d: int, bins: int, scale: float = 2.0, seed: int = 0,
           dtype: torch.dtype = F64) -> tuple[Tensor, Tensor, Tensor]:
    """Random unnormalised widths, heights [n, d, K] and derivatives [n, d, K - 1]."""
    g = torch.Generator().manual_seed(seed)
    return tuple(  # type: ignore[return-value]
        scale * torch.randn(n, d, k, generator=g, dtype=dtype) for k in (bins, bins, bins - 1)
    )


def spline(x: Tensor, p: tuple[Tensor, Tensor, Tensor], inverse: bool = False
           ) -> tuple[Tensor, Tensor]:
    return rq_spline(x, *p, inverse=inverse, bound=BOUND)


def test_inverse_recovers_input_in_bins_on_knots_and_in_tails() -> None:
    n, d, bins = 40, 3, 5
    p = params(n, d, bins)
    g = torch.Generator().manual_seed(1)
    x = (2 * torch.rand(n, d, generator=g, dtype=F64) - 1) * 1.5 * BOUND  # a third in tails
    knots = spline_knots(p[0], BOUND)  # [n, d, K + 1], both ends included
    x[:bins + 1] = knots[:bins + 1].diagonal(dim1=0, dim2=2).T  # row k: knot k exactly
    x[-2:] = torch.tensor([[-BOUND, BOUND, 0.0], [BOUND, -BOUND, 1e-300]], dtype=F64)
    y, ld = spline(x, p)
    back, ld_back = spline(y, p, inverse=True)
    torch.testing.assert_close(back, x, rtol=0, atol=1e-10)
    torch.testing.assert_close(ld_back, -ld, rtol=0, atol=1e-10)
    # The other direction, and the knots map onto the height knots.
    z = (2 * torch.rand(n, d, generator=g, dtype=F64) - 1) * 1.5 * BOUND
    torch.testing.assert_close(spline(spline(z, p, inverse=True)[0], p)[0], z, rtol=0,
                               atol=1e-10)
    y_knots = spline_knots(p[1], BOUND)[:bins + 1].diagonal(dim1=0, dim2=2).T
    torch.testing.assert_close(y[:bins + 1], y_knots, rtol=0, atol=1e-12)
    inside = x.abs() < BOUND
    assert (y - x)[inside].abs().max() > 0.1  # not the identity inside
    tails = x.abs() > BOUND
    assert tails.sum() > 10 and torch.equal(y[tails], x[tails])
    assert torch.equal(ld[tails], torch.zeros_like(ld[tails]))


@pytest.mark.parametrize("inverse", [False, True])
def test_log_derivative_equals_autograd(inverse: bool) -> None:
    """Elementwise map: d(sum y)/dx_i = dy_i/dx_i, compared in logs to the returned value."""
    p = params(50, 4, 6, seed=3)
    g = torch.Generator().manual_seed(4)
    x = ((2 * torch.rand(50, 4, generator=g, dtype=F64) - 1) * 1.3 * BOUND).requires_grad_()
    y, ld = spline(x, p, inverse)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert (grad > 0).all()
    torch.testing.assert_close(ld, torch.log(grad), rtol=0, atol=1e-10)
    assert ld.abs().max() > 0.5  # far from a unit slope somewhere


def test_monotone_bijection_of_the_interval() -> None:
    """Increasing on a fine grid, -B -> -B and B -> B, and the derivative exp(log_det)
    integrates (midpoint rule) to the height of the interval, 2B."""
    d, m = 3, 20000
    p = tuple(t.expand(m, -1, -1) for t in params(1, d, 7, seed=5))
    edges = torch.linspace(-BOUND, BOUND, m + 1, dtype=F64)
    mids = ((edges[:-1] + edges[1:]) / 2)[:, None].expand(-1, d)
    y, ld = spline(mids, p)  # type: ignore[arg-type]
    assert (y.diff(dim=0) > 0).all()
    ends, _ = spline(torch.tensor([[-BOUND] * d, [BOUND] * d], dtype=F64),
                     tuple(t[:2] for t in p))  # type: ignore[arg-type]
    torch.testing.assert_close(ends[:, 0], torch.tensor([-BOUND, BOUND], dtype=F64), rtol=0,
                               atol=1e-12)
    area = torch.exp(ld).sum(0) * (2 * BOUND / m)
    torch.testing.assert_close(area, torch.full((d,), 2 * BOUND, dtype=F64), rtol=0, atol=1e-5)


def _one_sided(p: tuple[Tensor, Tensor, Tensor], at: Tensor, h: float) -> tuple[Tensor, ...]:
    """Values at `at`, at -h and at +h, and the left and right difference quotients."""
    y0, y_minus, y_plus = (spline(at + e, p)[0] for e in (0.0, -h, h))
    return y0, y_minus, y_plus, (y0 - y_minus) / h, (y_plus - y0) / h


def test_value_and_slope_are_continuous_at_the_bounds_and_knots() -> None:
    """At +-B the spline meets the identity tails with slope 1 on both sides; at every
    interior knot the left and right slopes agree (the spline is C^1)."""
    bins, h = 5, 1e-7
    p = params(1, 1, bins, scale=1.0, seed=6)
    ends = torch.tensor([[-BOUND], [BOUND]], dtype=F64)
    p2 = tuple(t.expand(2, -1, -1) for t in p)
    y0, y_minus, y_plus, left, right = _one_sided(p2, ends, h)  # type: ignore[arg-type]
    torch.testing.assert_close(y0, ends, rtol=0, atol=1e-12)
    torch.testing.assert_close(left, torch.ones_like(left), rtol=0, atol=1e-5)
    torch.testing.assert_close(right, torch.ones_like(right), rtol=0, atol=1e-5)
    knots = spline_knots(p[0], BOUND)[0, 0, 1:-1, None]  # [K - 1, 1]
    pk = tuple(t.expand(bins - 1, -1, -1) for t in p)
    y0, y_minus, y_plus, left, right = _one_sided(pk, knots, h)  # type: ignore[arg-type]
    assert (y_plus - y_minus).abs().max() < 1e-5
    torch.testing.assert_close(left, right, rtol=1e-4, atol=1e-5)
    assert (left - 1).abs().max() > 0.1  # interior slopes are not all 1


def test_zero_parameters_give_the_identity() -> None:
    x = torch.linspace(-2 * BOUND, 2 * BOUND, 41, dtype=F64)[:, None]
    zero = (torch.zeros(41, 1, 4, dtype=F64),) * 2 + (torch.zeros(41, 1, 3, dtype=F64),)
    y, ld = spline(x, zero)  # type: ignore[arg-type]
    torch.testing.assert_close(y, x, rtol=0, atol=1e-14)
    torch.testing.assert_close(ld, torch.zeros_like(ld), rtol=0, atol=1e-14)


def test_float32_extreme_parameters_stay_finite() -> None:
    """Raw parameters of +-60: minimum-size bins and slopes from e^-18 to e^7, still
    finite both ways in float32 (softmax, softplus and logs of positive sums). Where the
    slope is ~e^-18 no float32 inverse can recover x, so the inverse is checked where it
    is well posed, in y: spline(inverse(y)) = y."""
    p = params(200, 4, 8, scale=30.0, seed=8, dtype=torch.float32)
    x = (torch.rand(200, 4, generator=torch.Generator().manual_seed(9)) * 2 - 1) * 4.0
    y, ld = spline(x, p)
    back, ld_back = spline(y, p, inverse=True)
    for t in (y, ld, back, ld_back):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert ld.min() < -15 and ld.max() > 5
    # ... up to the slope (<= e^8) times float32 rounding of x (~2e-7 near 3).
    assert (spline(back, p)[0] - y).abs().max() < 1e-3


# -- flows ------------------------------------------------------------------------------------
FLOWS = {"maf": MAF, "iaf": IAF}


def make_flow(name: str, dim: int = 5, dequantization: str = "none", context_dim: int = 0,
              n_layers: int = 3, bound: float = 1.5, seed: int = 0) -> _Flow:
    """A spline flow away from its initialisation; with bound 1.5 both the spline and the
    identity tails are exercised by standard-normal-sized inputs."""
    torch.manual_seed(seed)
    flow = FLOWS[name](dim=dim, n_layers=n_layers, hidden=(16, 16), context_dim=context_dim,
                       dequantization=dequantization, levels=4, transform="spline", bins=5,
                       bound=bound)  # fmt: skip
    perturb(flow, 0.2, seed)
    return flow.double()


def full_map(flow: _Flow, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    v, ld_pre = flow.preprocess(y)
    z, ld = flow.forward_transform(v, context)
    return z, ld + ld_pre


def _context(n: int, c: int) -> Tensor | None:
    return torch.randn(n, c, generator=torch.Generator().manual_seed(7), dtype=F64) if c else None


def _inputs(flow: _Flow, n: int, seed: int) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    if flow.dequantization == "logit":
        return torch.rand(n, flow.dim, generator=g, dtype=F64)
    return 1.5 * torch.randn(n, flow.dim, generator=g, dtype=F64)


def _check_log_det(flow: _Flow, y: Tensor, ctx: Tensor | None = None) -> None:
    z, logdet = full_map(flow, y, ctx)
    assert (z - y).abs().max() > 0.1
    for i in range(y.shape[0]):
        c_i = None if ctx is None else ctx[i : i + 1]

        def f(row: Tensor, c_i: Tensor | None = c_i) -> Tensor:
            return full_map(flow, row.unsqueeze(0), c_i)[0].squeeze(0)

        sign, logabs = torch.linalg.slogdet(jacobian(f, y[i]))
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabs, rtol=0, atol=1e-10)


def _check_inverse(flow: _Flow, y: Tensor, ctx: Tensor | None = None) -> None:
    with torch.no_grad():
        z, _ = full_map(flow, y, ctx)
        back = flow.postprocess(flow.inverse_transform(z, ctx))
        z2 = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=F64)
        again, _ = flow.forward_transform(flow.inverse_transform(z2, ctx), ctx)
    torch.testing.assert_close(back, y, rtol=0, atol=1e-10)
    torch.testing.assert_close(again, z2, rtol=0, atol=1e-10)


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("dequantization", ["none", "logit"])
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_masked_spline_flow_log_det_and_inverse(name: str, dequantization: str,
                                                context_dim: int) -> None:
    flow = make_flow(name, dequantization=dequantization, context_dim=context_dim)
    y = _inputs(flow, 6, seed=2)
    ctx = _context(6, context_dim)
    v, _ = flow.preprocess(y)
    assert (v.abs() > 1.5).any() and (v.abs() < 1.5).any()  # tails and splines
    _check_log_det(flow, y, ctx)
    _check_inverse(flow, y, ctx)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_masked_spline_layers_are_autoregressive_in_their_orderings(name: str) -> None:
    """In each layer of the flow (natural, then reversed ordering), changing input j
    changes output j (a strictly monotone map) and no output earlier in the ordering."""
    flow = make_flow(name, dim=5, n_layers=2)
    g = torch.Generator().manual_seed(5)
    v = 1.2 * torch.randn(8, 5, generator=g, dtype=F64)
    for layer in flow.layers:
        assert isinstance(layer, MaskedSpline)
        pos = torch.argsort(layer.net.order)
        with torch.no_grad():
            z, _ = layer(v)
            for j in range(5):
                v2 = v.clone()
                v2[:, j] += 0.3 + torch.rand(8, generator=g, dtype=F64)
                changed = (layer(v2)[0] - z).abs().amax(0) > 1e-12
                assert changed[j]
                assert not (changed & (pos < pos[j])).any(), (j, changed, pos)
    assert not torch.equal(flow.layers[0].net.order, flow.layers[1].net.order)


def _grid(lo: float, hi: float, n: int) -> tuple[Tensor, float]:
    edges = torch.linspace(lo, hi, n + 1, dtype=F64)
    return (edges[:-1] + edges[1:]) / 2, (hi - lo) / n


def _box_mass(flow: _Flow, half_width: float, context: Tensor | None = None) -> float:
    g, dx = _grid(-half_width, half_width, 400)
    with torch.no_grad():
        lp = flow.log_density(torch.cartesian_prod(g, g), context)
    return float(torch.exp(lp).sum()) * dx * dx


def _gaussian_box_mass(half_width: float, dim: int = 2) -> float:
    """Each spline maps [-L, L] onto itself for L >= bound (identity tails), and so does
    every layer to the box [-L, L]^D: the box holds exactly the normal base's box mass."""
    return math.erf(half_width / math.sqrt(2)) ** dim


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_2d_spline_density_integrates_to_the_base_mass_of_the_box(name: str) -> None:
    flow = make_flow(name, dim=2, n_layers=4, bound=2.5)
    assert abs(_box_mass(flow, 3.0) - _gaussian_box_mass(3.0)) < 1e-3  # 0.9946
    assert abs(_box_mass(flow, 5.0) - 1) < 1e-3


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_conditional_2d_spline_density_integrates_to_one_for_each_context(name: str) -> None:
    """Moderate contexts: large ones (|c| ~ 2, the context feeds every unit) drive the
    bins to their minimum size, and the density spikes narrower than the grid."""
    flow = make_flow(name, dim=2, n_layers=3, bound=2.5, context_dim=2)
    c1 = torch.tensor([0.3, -0.2], dtype=F64)
    c2 = torch.tensor([-0.4, 0.3], dtype=F64)
    assert abs(_box_mass(flow, 5.0, c1) - 1) < 1e-3
    assert abs(_box_mass(flow, 5.0, c2) - 1) < 1e-3
    pts = torch.randn(10, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        assert (flow.log_density(pts, c1) - flow.log_density(pts, c2)).abs().max() > 0.5


# -- coupling -----------------------------------------------------------------------------------
def test_spline_coupling_layer_log_det_and_inverse() -> None:
    torch.manual_seed(0)
    layer = perturb(SplineCoupling(make_mask(16, "checkerboard", side=4), (8,), bins=4,
                                   bound=1.5), 0.3, 0).double()  # fmt: skip
    x = 1.5 * torch.randn(5, 16, generator=torch.Generator().manual_seed(6), dtype=F64)
    y, logdet = layer(x)
    keep = layer.mask.bool()
    assert torch.equal(y[:, keep], x[:, keep]) and (y - x).abs().max() > 0.1
    torch.testing.assert_close(layer.inverse(y), x, rtol=0, atol=1e-12)
    for i in range(x.shape[0]):
        jac = jacobian(lambda row: layer(row.unsqueeze(0))[0].squeeze(0), x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)


def make_realnvp(dim: int = 6, dequantization: str = "none", bound: float = 1.5,
                 scale: float = 0.2) -> _Flow:
    torch.manual_seed(0)
    flow = RealNVP(dim=dim, n_couplings=4, hidden=(16,), mask="alternating",
                   dequantization=dequantization, transform="spline", bins=5, bound=bound)
    return perturb(flow, scale, 0).double()  # type: ignore[return-value]


@pytest.mark.parametrize("dequantization", ["none", "logit"])
def test_spline_realnvp_log_det_and_inverse(dequantization: str) -> None:
    flow = make_realnvp(dequantization=dequantization)
    assert flow._alternating and all(isinstance(m, SplineCoupling) for m in flow.layers)
    y = _inputs(flow, 6, seed=2)
    _check_log_det(flow, y)
    _check_inverse(flow, y)


def test_2d_spline_realnvp_density_integrates_to_the_base_mass_of_the_box() -> None:
    flow = make_realnvp(dim=2, bound=2.5, scale=0.1)
    assert abs(_box_mass(flow, 3.0) - _gaussian_box_mass(3.0)) < 1e-3
    assert abs(_box_mass(flow, 5.0) - 1) < 1e-3


# -- construction and training ----------------------------------------------------------------
def test_created_by_name_with_spline_layers_of_3k_minus_1_outputs() -> None:
    maf = create("maf", transform="spline", bins=6)
    assert all(isinstance(layer, MaskedSpline) for layer in maf.layers)
    assert maf.layers[0].net.layers[-1].out_features == 64 * (3 * 6 - 1)
    nvp = create("realnvp", transform="spline", bins=4)
    assert nvp.layers[0].net[-1].out_features == 32 * (3 * 4 - 1)
    with pytest.raises(ValueError, match="transform"):
        create("iaf", transform="quadratic")
    with pytest.raises(ValueError, match="bins"):
        create("maf", transform="spline", bins=1)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_float32_spline_flows_stay_finite_with_huge_weights(name: str) -> None:
    flow = FLOWS[name](dim=6, n_layers=2, hidden=(8,), transform="spline")
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1e3)
        x = torch.rand(16, 6, generator=torch.Generator().manual_seed(0))
        assert torch.isfinite(flow.log_prob(x)).all()
        assert torch.isfinite(flow.sample(4, generator=torch.Generator().manual_seed(1))).all()


def test_float32_spline_maf_trains_on_digits(digits: Tensor) -> None:
    torch.manual_seed(0)
    flow = MAF(dim=64, n_layers=2, hidden=(64,), transform="spline")

    def loss() -> Tensor:
        return flow.loss(digits, torch.Generator().manual_seed(1))

    with torch.no_grad():
        before = float(loss())
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        step = flow.loss(digits)
        assert torch.isfinite(step)
        step.backward()
        opt.step()
    with torch.no_grad():
        after = float(loss())
    assert math.isfinite(after) and after < before - 0.05 * abs(before), (before, after)
