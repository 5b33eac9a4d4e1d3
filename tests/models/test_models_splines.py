"""Rational-quadratic splines (Durkan et al. 2019) from the mathematics, float64 and small:
the bare spline's inverse, log-derivative (autograd), monotonicity and continuity at the
knots and at +-bound."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from energydsl.models.splines import rq_spline, spline_knots

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
