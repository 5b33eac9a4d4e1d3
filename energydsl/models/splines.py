"""Monotonic rational-quadratic splines (Durkan, Bekasov, Murray and Papamakarios 2019,
"Neural Spline Flows"), the elementwise bijection of the spline flows.

On [-B, B] the spline passes through K + 1 knots (x_k, y_k), from (-B, -B) to (B, B), with
derivatives d_k > 0 at the knots (d_0 = d_K = 1); outside it is the identity (linear
tails), so value and derivative are continuous at +-B and log|det| = 0 in the tails.
In bin k, with w = x_{k+1} - x_k, h = y_{k+1} - y_k, s = h / w, xi = (x - x_k) / w in
[0, 1] and theta = xi (1 - xi):

    y = y_k + h (s xi^2 + d_k theta) / D(xi),   D(xi) = s + (d_k + d_{k+1} - 2 s) theta
    dy/dx = s^2 (d_{k+1} xi^2 + 2 s theta + d_k (1 - xi)^2) / D(xi)^2

(a ratio of two quadratics; monotone because s, d_k, d_{k+1} > 0). D is computed as
s (xi^2 + (1 - xi)^2) + (d_k + d_{k+1}) theta, a sum of non-negative terms. The inverse
solves a xi^2 + b xi + c = 0 for the bin of y (psi = y - y_k):

    a = h (s - d_k) + psi (d_k + d_{k+1} - 2 s),  b = h d_k - psi (d_k + d_{k+1} - 2 s),
    c = -s psi,   xi = 2 c / (-b - sqrt(b^2 - 4 a c))

(the root in [0, 1], written without the cancellation of (-b + sqrt(.)) / 2a).

The network's unconstrained outputs become bins by softmax with a minimum size,
w = m + (1 - m K) softmax(raw_w) of 2B (same for heights), and interior derivatives
d = m_d + softplus(raw_d + c) with c = log(expm1(1 - m_d)), so all-zero raw parameters
give the identity (uniform bins, unit derivatives).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._utils import positive

__all__ = ["rq_spline", "spline_knots", "split_spline_params"]

MIN_BIN = 1e-3
MIN_DERIVATIVE = 1e-3


def spline_knots(unnormalised: Tensor, bound: float, min_bin: float = MIN_BIN) -> Tensor:
    """Knot positions [..., K + 1] from -B to B (exactly) of bins of relative sizes
    m + (1 - m K) softmax(unnormalised) over the last dim (K bins)."""
    bins = unnormalised.shape[-1]
    if not 0 <= min_bin * bins < 1:
        raise ValueError(f"min_bin * bins must be in [0, 1), got {min_bin} * {bins}")
    size = min_bin + (1 - min_bin * bins) * torch.softmax(unnormalised, dim=-1)
    inner = 2 * bound * torch.cumsum(size[..., :-1], dim=-1) - bound
    return F.pad(F.pad(inner, (1, 0), value=-bound), (0, 1), value=bound)


def split_spline_params(raw: Tensor, bins: int) -> tuple[Tensor, Tensor, Tensor]:
    """A conditioner's output [N, 3K - 1, D] (parameter-major, as ``MaskedNetwork``'s
    [N, P, D]) -> unnormalised widths [N, D, K], heights [N, D, K], derivatives [N, D, K-1]."""
    per_dim = raw.transpose(1, 2)
    widths, heights, derivatives = per_dim.split([bins, bins, bins - 1], dim=-1)
    return widths, heights, derivatives


def _at(table: Tensor, idx: Tensor) -> Tensor:
    """table[..., idx] per element: [..., D, M] at [..., D, 1] -> [..., D]."""
    return table.gather(-1, idx).squeeze(-1)


def rq_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    inverse: bool = False,
    bound: float = 5.0,
    min_bin: float = MIN_BIN,
    min_derivative: float = MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    """The spline (or its inverse) applied elementwise to x [..., D]: (y, log|dy/dx|),
    both [..., D]; with ``inverse=True`` x is a spline output and the log-derivative is
    that of the inverse map, -log|spline'(result)|.

    ``widths``, ``heights``: unnormalised bin sizes [..., D, K]; ``derivatives``:
    unconstrained interior-knot derivatives [..., D, K - 1] (see the module docstring).
    """
    positive("bound", bound)
    if not 0 <= min_derivative < 1:
        raise ValueError(f"min_derivative must be in [0, 1), got {min_derivative}")
    xs = spline_knots(widths, bound, min_bin)
    ys = spline_knots(heights, bound, min_bin)
    shift = math.log(math.expm1(1 - min_derivative))  # raw 0 -> derivative 1
    interior = min_derivative + F.softplus(derivatives + shift)
    ds = F.pad(interior, (1, 1), value=1.0)  # d_0 = d_K = 1: the tails' slope
    inside = (x >= -bound) & (x <= bound)
    # Tails are cut off before the spline so no inf/nan reaches the gradient of torch.where.
    xc = x.clamp(-bound, bound)
    knots_in = ys if inverse else xs
    idx = (xc.unsqueeze(-1) >= knots_in[..., 1:-1]).sum(-1, keepdim=True)
    x_k, y_k = _at(xs, idx), _at(ys, idx)
    w, h = _at(xs, idx + 1) - x_k, _at(ys, idx + 1) - y_k
    d0, d1 = _at(ds, idx), _at(ds, idx + 1)
    s = h / w
    if inverse:
        psi = xc - y_k
        beta = d0 + d1 - 2 * s
        a = h * (s - d0) + psi * beta
        b = h * d0 - psi * beta
        c = -s * psi
        xi = 2 * c / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        xi = xi.clamp(0, 1)  # the root lies in [0, 1]; rounding may step out (float32)
    else:
        xi = (xc - x_k) / w
    theta = xi * (1 - xi)
    denom = s * (xi * xi + (1 - xi) * (1 - xi)) + (d0 + d1) * theta
    log_deriv = (
        2 * torch.log(s)
        + torch.log(d1 * xi * xi + 2 * s * theta + d0 * (1 - xi) * (1 - xi))
        - 2 * torch.log(denom)
    )
    if inverse:
        out, log_deriv = x_k + xi * w, -log_deriv
    else:
        out = y_k + h * (s * xi * xi + d0 * theta) / denom
    return torch.where(inside, out, x), torch.where(inside, log_deriv, torch.zeros_like(x))
