"""Normalizing flows (seed 003; seed 001, question 3): NICE and RealNVP.

An invertible f maps data v to latent z = f(v) with a simple prior p(z); by the change of
variables  log p(v) = log p(f(v)) + log|det df/dv|.  Coupling layers keep one part of v
fixed (``mask = 1``) and transform the other part using a network of the fixed part, so the
Jacobian is triangular and its log-determinant is a cheap sum (seed 003, 18.1.2.1).

Discrete data (the digits take ``levels = 17`` values k/16) have no density; they are
*dequantised* (seed 001, 3.4): x_int = round(x * (levels - 1)), y = (x_int + u) / levels
with u ~ U[0, 1)^D, so y lies in [0, 1)^D. Then, for the probability mass of x_int,
log P(x_int) >= E_u[log p(y)] - D log(levels)   (Jensen).
``dequantization="logit"`` further maps y to v = logit(alpha + (1 - 2 alpha) y) (RealNVP's
preprocessing) and the flow models v; the density of y includes that Jacobian.

- ``log_density(y)``: exact log density of continuous y (data space), shape [N].
- ``log_prob(x)``: with ``dequantization="none"`` exactly ``log_density(x)``
  (``log_prob_kind = "exact"``); otherwise one-sample estimate of the bound above on the
  discrete log-mass (``log_prob_kind = "lower_bound"``).
- ``bits_per_dim(x) = -log_prob(x) / (D log 2)``; ``loss(x) = -mean(log_prob(x))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import as_flat, mlp, rand, randn

__all__ = ["NICE", "RealNVP", "AdditiveCoupling", "AffineCoupling", "make_mask"]

_DEQUANTIZATIONS = ("none", "uniform", "logit")
_PRIORS = ("gaussian", "logistic")
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def make_mask(dim: int, kind: str, side: int | None = None) -> Tensor:
    """A {0,1} float mask of length dim marking the coordinates a coupling layer keeps.

    ``"half"``: the first half (NICE's x_{1:d/2} of seed 003); ``"alternating"``: even flat
    indices; ``"checkerboard"``: pixels with (row + col) even on a side x side image.
    """
    idx = torch.arange(dim)
    if kind == "half":
        return (idx < dim // 2).float()
    if kind == "alternating":
        return (idx % 2 == 0).float()
    if kind == "checkerboard":
        if side is None or side * side != dim:
            raise ValueError("checkerboard masks need side with side * side == dim")
        return ((idx // side + idx % side) % 2 == 0).float()
    raise ValueError(f"unknown mask kind {kind!r}")


class AdditiveCoupling(nn.Module):
    """NICE coupling: y = x + (1 - mask) * m(mask * x); log|det J| = 0."""

    def __init__(self, mask: Tensor, hidden: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mask", mask.clone())
        dim = mask.numel()
        self.net = mlp([dim, *hidden, dim])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask.to(x.dtype)
        return x + (1 - m) * self.net(m * x), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        m = self.mask.to(y.dtype)
        return y - (1 - m) * self.net(m * y)


class AffineCoupling(nn.Module):
    """RealNVP coupling: y = mask*x + (1-mask)*(x * exp(s) + t), (s, t) = nets(mask * x).

    s = scale * tanh(raw) keeps exp(s) bounded (no float32 overflow); log|det J| = sum of
    s over the transformed coordinates.
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int]) -> None:
        super().__init__()
        self.register_buffer("mask", mask.clone())
        dim = mask.numel()
        self.net = mlp([dim, *hidden, 2 * dim])
        self.scale = nn.Parameter(torch.ones(dim))

    def _s_t(self, masked: Tensor) -> tuple[Tensor, Tensor]:
        raw, t = self.net(masked).chunk(2, dim=-1)
        m = self.mask.to(masked.dtype)
        return (1 - m) * self.scale * torch.tanh(raw), (1 - m) * t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        m = self.mask.to(x.dtype)
        s, t = self._s_t(m * x)
        return m * x + (1 - m) * (x * torch.exp(s) + t), s.sum(-1)

    def inverse(self, y: Tensor) -> Tensor:
        m = self.mask.to(y.dtype)
        s, t = self._s_t(m * y)
        return m * y + (1 - m) * ((y - t) * torch.exp(-s))


class _Flow(nn.Module):
    """Shared machinery: coupling stack, optional diagonal scaling, prior, dequantisation."""

    data_kind = "continuous"
    log_prob_kind: str

    def __init__(
        self,
        dim: int,
        layers: Sequence[nn.Module],
        prior: str,
        dequantization: str,
        levels: int,
        alpha: float,
        scaling: bool,
    ) -> None:
        super().__init__()
        if prior not in _PRIORS:
            raise ValueError(f"prior must be one of {_PRIORS}, got {prior!r}")
        if dequantization not in _DEQUANTIZATIONS:
            raise ValueError(
                f"dequantization must be one of {_DEQUANTIZATIONS}, got {dequantization!r}"
            )
        if not 0.0 <= alpha < 0.5:
            raise ValueError(f"alpha must be in [0, 0.5), got {alpha}")
        self.dim = dim
        self.event_shape: tuple[int, ...] = (dim,)
        self.layers = nn.ModuleList(layers)
        # NICE's diagonal scaling layer z = exp(log_scale) * h (seed 003: element-wise map).
        self.log_scale = nn.Parameter(torch.zeros(dim)) if scaling else None
        self.prior = prior
        self.dequantization = dequantization
        self.levels = levels
        self.alpha = alpha
        self.log_prob_kind = "exact" if dequantization == "none" else "lower_bound"

    # -- the invertible map in flow space -----------------------------------------------
    def forward_transform(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(v) and log|det df/dv| per example."""
        logdet = v.new_zeros(v.shape[0])
        for layer in self.layers:
            v, ld = layer(v)
            logdet = logdet + ld
        if self.log_scale is not None:
            v = v * torch.exp(self.log_scale)
            logdet = logdet + self.log_scale.sum()
        return v, logdet

    def inverse_transform(self, z: Tensor) -> Tensor:
        """v = f^{-1}(z)."""
        if self.log_scale is not None:
            z = z * torch.exp(-self.log_scale)
        for layer in reversed(self.layers):
            z = layer.inverse(z)  # type: ignore[operator]
        return z

    # -- data space <-> flow space ---------------------------------------------------------
    def preprocess(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Data y -> flow input v and log|dv/dy| (logit transform, or identity)."""
        if self.dequantization != "logit":
            return y, y.new_zeros(y.shape[0])
        a = self.alpha
        s = a + (1 - 2 * a) * y
        log_s, log_1ms = torch.log(s), torch.log1p(-s)
        logdet = self.dim * math.log1p(-2 * a) - (log_s + log_1ms).sum(-1)
        return log_s - log_1ms, logdet

    def postprocess(self, v: Tensor) -> Tensor:
        """Flow space v -> data space y (inverse of ``preprocess``)."""
        if self.dequantization != "logit":
            return v
        return (torch.sigmoid(v) - self.alpha) / (1 - 2 * self.alpha)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) summed over dims: standard normal or standard logistic (NICE)."""
        if self.prior == "gaussian":
            return (-0.5 * z.pow(2) - _LOG_SQRT_2PI).sum(-1)
        return -(F.softplus(z) + F.softplus(-z)).sum(-1)

    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ prior, shape [n, D]."""
        if self.prior == "gaussian":
            return randn((n, self.dim), self, generator)
        u = rand((n, self.dim), self, generator)
        tiny = torch.finfo(u.dtype).tiny
        return torch.log(u + tiny) - torch.log1p(-u)  # logistic quantile function

    # -- densities ---------------------------------------------------------------------------
    def log_density(self, y: Tensor) -> Tensor:
        """Exact log density of continuous data y, shape [N]."""
        y = as_flat(y, self.dim)
        v, ld_pre = self.preprocess(y)
        z, ld_flow = self.forward_transform(v)
        return self.prior_log_prob(z) + ld_flow + ld_pre

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x in {0, 1/(L-1), ..., 1} -> y = (x_int + u) / L in (0, 1), u uniform."""
        x = as_flat(x, self.dim)
        k = torch.round(x * (self.levels - 1))
        u = rand(x.shape, self, generator)
        # Keep y strictly inside (0, 1) after rounding, so a logit with alpha = 0 is finite.
        eps = torch.finfo(u.dtype).eps
        return ((k + u) / self.levels).clamp(eps, 1 - eps)

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Exact log density (no dequantisation) or the dequantisation bound on log P(x)."""
        if self.dequantization == "none":
            return self.log_density(x)
        y = self.dequantize(x, generator)
        return self.log_density(y) - self.dim * math.log(self.levels)

    def bits_per_dim(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """-log_prob(x) / (D log 2), per example."""
        return -self.log_prob(x, generator) / (self.dim * math.log(2))

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Negative log-likelihood (or its dequantisation bound) averaged over the batch."""
        return -self.log_prob(x, generator).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ prior, y = postprocess(f^{-1}(z)); clipped to [0, 1] when dequantising.

        The clip only touches mass the bound never counted (logit with alpha > 0 can map
        slightly outside [0, 1]); without dequantisation the sample is returned as is.
        """
        y = self.postprocess(self.inverse_transform(self.prior_sample(n, generator)))
        return y.clamp(0.0, 1.0) if self.dequantization != "none" else y


class NICE(_Flow):
    """NICE (Dinh et al. 2014): additive couplings with alternating masks + diagonal scaling.

    ``n_couplings`` layers; layer i keeps ``mask`` (i even) or its complement (i odd), so
    every coordinate is transformed. Prior: standard logistic by default (as in NICE).
    """

    def __init__(
        self,
        dim: int = 64,
        n_couplings: int = 4,
        hidden: Sequence[int] = (128, 128),
        mask: str = "alternating",
        side: int | None = None,
        prior: str = "logistic",
        dequantization: str = "uniform",
        levels: int = 17,
        alpha: float = 0.05,
    ) -> None:
        base = make_mask(dim, mask, side)
        layers = [
            AdditiveCoupling(base if i % 2 == 0 else 1 - base, hidden) for i in range(n_couplings)
        ]
        super().__init__(dim, layers, prior, dequantization, levels, alpha, scaling=True)


class RealNVP(_Flow):
    """RealNVP (Dinh et al. 2016): affine couplings with alternating or checkerboard masks.

    ``mask="checkerboard"`` needs ``side`` (default 8: side * side == dim); ``"alternating"``
    (even/odd flat index) and ``"half"`` work for any dim. Consecutive layers use
    complementary masks. Gaussian prior and logit dequantisation by default.
    """

    def __init__(
        self,
        dim: int = 64,
        n_couplings: int = 6,
        hidden: Sequence[int] = (128, 128),
        mask: str = "checkerboard",
        side: int | None = 8,
        prior: str = "gaussian",
        dequantization: str = "logit",
        levels: int = 17,
        alpha: float = 0.05,
    ) -> None:
        base = make_mask(dim, mask, side if mask == "checkerboard" else None)
        layers = [
            AffineCoupling(base if i % 2 == 0 else 1 - base, hidden) for i in range(n_couplings)
        ]
        super().__init__(dim, layers, prior, dequantization, levels, alpha, scaling=False)
