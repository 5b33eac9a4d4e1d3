"""Normalizing flows (seed 003; seed 001, question 3): NICE, RealNVP, MAF and IAF.

An invertible f maps data v to latent z = f(v) with a simple prior p(z); by the change of
variables  log p(v) = log p(f(v)) + log|det df/dv|.  Coupling layers keep one part of v
fixed (``mask = 1``) and transform the other part using a network of the fixed part, so the
Jacobian is triangular and its log-determinant is a cheap sum (seed 003, 18.1.2.1). As in
the papers, the network takes only the fixed entries (gathered by index) and outputs values
for the transformed entries only (written back by index).

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

MAF and IAF replace the couplings by masked autoregressive affine layers
(``MaskedAffine``, conditioned by a ``MaskedNetwork``): every coordinate moves, each given
the ones before it in the layer's ordering, and consecutive layers reverse the ordering.
Every flow may be conditional (``context_dim > 0``): ``log_prob``, ``log_density``,
``loss``, ``sample`` and ``rsample`` then take ``context=`` ([N, C], or [C] shared by the
batch). A coupling's network then reads [x_keep, c] (the context is one more input, so
the Jacobian in x stays triangular and log|det| is unchanged in form); MAF/IAF's masked
networks take it unmasked. For each fixed c the map is a bijection of x, so p(x | c) is a
normalised density for every c.

``transform="spline"`` (MAF, IAF, RealNVP) swaps the affine maps for monotonic
rational-quadratic splines (``splines.rq_spline``; Durkan et al. 2019): ``MaskedSpline``
layers and ``SplineCoupling`` couplings.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import Conditional, as_flat, mlp, positive, rand, randn, soft_clamp
from .autoregressive import MaskedNetwork
from .splines import rq_spline, split_spline_params

__all__ = [
    "NICE",
    "RealNVP",
    "MAF",
    "IAF",
    "AdditiveCoupling",
    "AffineCoupling",
    "SplineCoupling",
    "MaskedAffine",
    "MaskedSpline",
    "make_mask",
]

_DEQUANTIZATIONS = ("none", "uniform", "logit")
_PRIORS = ("gaussian", "logistic")
_TRANSFORMS = ("affine", "spline")
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


def _reindex(module: _Coupling, _incompatible: object) -> None:
    """After load_state_dict: the index buffers follow the loaded mask."""
    module._index()


class _Coupling(nn.Module):
    """A coupling layer's split: the ``mask = 1`` entries condition, the others move.

    The network sees only the conditioning entries (gathered by index, ``keep``: as many as
    the mask has ones, D/2 for even D), and the context if any (``context_dim``
    more inputs), and outputs ``per_moved`` numbers for each moved entry (``move``), as in
    the papers: no zeroed inputs, no discarded outputs.
    ``couple``/``uncouple`` work on the split parts; ``forward``/``inverse`` split the full
    vector, couple, and put the parts back in place (``order``). The index buffers are
    derived from ``mask`` (not stored in the state dict; recomputed when one is loaded).
    """

    mask: Tensor
    keep: Tensor
    move: Tensor
    order: Tensor

    def __init__(self, mask: Tensor, hidden: Sequence[int], per_moved: int,
                 context_dim: int = 0) -> None:
        super().__init__()
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.context_dim = context_dim
        self.register_buffer("mask", mask.clone())
        for name in ("keep", "move", "order"):
            self.register_buffer(name, torch.empty(0, dtype=torch.long), persistent=False)
        self._index()
        self.net = mlp([self.keep.numel() + context_dim, *hidden,
                        per_moved * self.move.numel()])
        self.register_load_state_dict_post_hook(_reindex)

    def _index(self) -> None:
        kept = self.mask.detach().cpu() != 0
        keep, move = torch.nonzero(kept).flatten(), torch.nonzero(~kept).flatten()
        device = self.mask.device
        self.keep, self.move = keep.to(device), move.to(device)
        self.order = torch.argsort(torch.cat([keep, move])).to(device)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(conditioning entries [N, n_keep], moved entries [N, n_move])."""
        return x.index_select(-1, self.keep), x.index_select(-1, self.move)

    def merge(self, keep: Tensor, move: Tensor) -> Tensor:
        """The full [N, D] vector from its two parts (inverse of ``split``, exact copies)."""
        return torch.cat([keep, move], dim=-1).index_select(-1, self.order)

    def net_out(self, keep: Tensor, context: Tensor | None) -> Tensor:
        """The network's output from the conditioning entries and the context ([N, C])."""
        if (context is None) != (self.context_dim == 0):
            raise ValueError(f"this coupling takes a context of dimension {self.context_dim}"
                             if self.context_dim else "this coupling takes no context")
        return self.net(keep if context is None else torch.cat([keep, context], dim=-1))

    def couple(self, keep: Tensor, move: Tensor, context: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        """The moved entries transformed given the conditioning ones, and log|det J|."""
        raise NotImplementedError

    def uncouple(self, keep: Tensor, moved: Tensor, context: Tensor | None = None) -> Tensor:
        """Inverse of ``couple``: the moved entries' values before the transform."""
        raise NotImplementedError

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(y, log|det dy/dx|) given the context ([N, C], if the coupling takes one)."""
        keep, move = self.split(x)
        moved, logdet = self.couple(keep, move, context)
        return self.merge(keep, moved), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        keep, moved = self.split(y)
        return self.merge(keep, self.uncouple(keep, moved, context))


class AdditiveCoupling(_Coupling):
    """NICE coupling: y_move = x_move + m(x_keep), y_keep = x_keep; log|det J| = 0.

    m maps the n_keep conditioning entries (and the context, if any) to n_move shifts.
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int], context_dim: int = 0) -> None:
        super().__init__(mask, hidden, per_moved=1, context_dim=context_dim)

    def couple(self, keep: Tensor, move: Tensor, context: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        return move + self.net_out(keep, context), keep.new_zeros(keep.shape[0])

    def uncouple(self, keep: Tensor, moved: Tensor, context: Tensor | None = None) -> Tensor:
        return moved - self.net_out(keep, context)


class AffineCoupling(_Coupling):
    """RealNVP coupling: y_move = x_move * exp(s) + t, y_keep = x_keep, (s, t) = nets(x_keep).

    The network maps the n_keep conditioning entries (and the context, if any) to
    2 n_move outputs (raw log-scales and shifts); s = scale * tanh(raw) keeps exp(s)
    bounded (no float32 overflow), with one learned ``scale`` per moved entry;
    log|det J| = sum of s.
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int], context_dim: int = 0) -> None:
        super().__init__(mask, hidden, per_moved=2, context_dim=context_dim)
        self.scale = nn.Parameter(torch.ones(self.move.numel()))

    def _s_t(self, keep: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        raw, t = self.net_out(keep, context).chunk(2, dim=-1)
        return self.scale * torch.tanh(raw), t

    def couple(self, keep: Tensor, move: Tensor, context: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        s, t = self._s_t(keep, context)
        return move * torch.exp(s) + t, s.sum(-1)

    def uncouple(self, keep: Tensor, moved: Tensor, context: Tensor | None = None) -> Tensor:
        s, t = self._s_t(keep, context)
        return (moved - t) * torch.exp(-s)


class SplineCoupling(_Coupling):
    """Rational-quadratic spline coupling (Durkan et al. 2019, "RQ-NSF (C)"): y_move =
    spline(x_move; theta(x_keep)) on [-bound, bound] with ``bins`` bins, identity outside
    (``splines.rq_spline``), y_keep = x_keep; log|det J| = sum of the log-derivatives.

    The network maps the n_keep conditioning entries to 3 bins - 1 numbers per moved entry
    (bin widths, bin heights, interior derivatives).
    """

    def __init__(self, mask: Tensor, hidden: Sequence[int], bins: int = 8,
                 bound: float = 5.0, context_dim: int = 0) -> None:
        _check_spline(bins, bound)
        super().__init__(mask, hidden, per_moved=3 * bins - 1, context_dim=context_dim)
        self.bins, self.bound = bins, float(bound)

    def _spline(self, keep: Tensor, x: Tensor, inverse: bool,
                context: Tensor | None) -> tuple[Tensor, Tensor]:
        raw = self.net_out(keep, context).reshape(keep.shape[0], 3 * self.bins - 1, x.shape[-1])
        return rq_spline(x, *split_spline_params(raw, self.bins), inverse, self.bound)

    def couple(self, keep: Tensor, move: Tensor, context: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        moved, log_deriv = self._spline(keep, move, False, context)
        return moved, log_deriv.sum(-1)

    def uncouple(self, keep: Tensor, moved: Tensor, context: Tensor | None = None) -> Tensor:
        return self._spline(keep, moved, True, context)[0]


class _MaskedElementwise(nn.Module):
    """A masked autoregressive layer (MAF: Papamakarios et al. 2017; IAF: Kingma et al.
    2016) in the flow's direction data v -> latent z: z_i = tau(v_i; theta_i), an
    elementwise monotone map whose parameters theta_i (``params_per_dim`` numbers) a
    ``MaskedNetwork`` on the layer's ``order`` computes from the coordinates before i.
    Subclasses give tau (``elementwise``): affine (``MaskedAffine``) or a spline
    (``MaskedSpline``).

    - ``"maf"``: theta from v. The density direction (``forward``) is one pass;
      ``inverse`` (sampling) fills v one position at a time: D passes.
    - ``"iaf"``: theta from z. Sampling (``inverse``) is one pass, the density direction
      D passes.

    Either way log|det dz/dv| = sum_i log tau'(v_i; theta_i) (the Jacobian is triangular in
    the ordering). The D-pass solves iterate u <- tau^(+-1)(w; theta(u)) from u = 0: pass k
    makes the first k positions of the ordering exact, so D passes give the exact answer
    (and the last pass's log-derivatives, computed from the D - 1 exact positions they
    read, are exact too).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int],
        order: Sequence[int] | Tensor | None,
        kind: str,
        context_dim: int,
        seed: int,
        params_per_dim: int,
    ) -> None:
        super().__init__()
        if kind not in ("maf", "iaf"):
            raise ValueError(f"kind must be 'maf' or 'iaf', got {kind!r}")
        self.kind = kind
        self.dim = dim
        self.net = MaskedNetwork(dim, hidden, params_per_dim, order, context_dim, seed)

    def elementwise(self, raw: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """tau(x) (or tau^-1(x)) with parameters ``raw`` [N, P, D] from the network, and
        the log-derivative of the map applied, both [N, D]."""
        raise NotImplementedError

    def _fill(self, w: Tensor, inverse: bool, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """Solve u = tau^(+-1)(w; theta(u)) position by position: D passes."""
        u = torch.zeros_like(w)
        log_deriv = u
        for _ in range(self.dim):
            u, log_deriv = self.elementwise(self.net(u, context), w, inverse)
        return u, log_deriv

    def forward(self, v: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z and log|det dz/dv| per example."""
        if self.kind == "maf":
            z, log_deriv = self.elementwise(self.net(v, context), v, inverse=False)
        else:
            z, log_deriv = self._fill(v, False, context)
        return z, log_deriv.sum(-1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """v from z (the inverse of ``forward``)."""
        if self.kind == "iaf":
            return self.elementwise(self.net(z, context), z, inverse=True)[0]
        return self._fill(z, True, context)[0]


class MaskedAffine(_MaskedElementwise):
    """Masked autoregressive affine layer: z_i = (v_i - t_i) exp(-s_i), log tau' = -s_i.

    The network gives per coordinate a raw log-scale and a shift (P = 2). The log-scale is
    soft-clamped, s = c tanh(raw / c) with c = ``max_log_scale``: s ~ raw near 0, |s| < c
    always, so exp(+-s) stays within [e^-c, e^c] (no overflow in float32, and a smooth
    gradient, unlike a hard clamp).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int],
        order: Sequence[int] | Tensor | None = None,
        kind: str = "maf",
        context_dim: int = 0,
        max_log_scale: float = 3.0,
        seed: int = 0,
    ) -> None:
        max_log_scale = positive("max_log_scale", max_log_scale)
        super().__init__(dim, hidden, order, kind, context_dim, seed, params_per_dim=2)
        self.max_log_scale = max_log_scale

    def _scale_shift(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        raw_s, t = raw.unbind(1)
        return soft_clamp(raw_s, self.max_log_scale), t

    def log_scale_shift(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(s, t), each [N, D], from the conditioner's input u (v for MAF, z for IAF)."""
        return self._scale_shift(self.net(u, context))

    def elementwise(self, raw: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(raw)
        if inverse:
            return x * torch.exp(s) + t, s
        return (x - t) * torch.exp(-s), -s


class MaskedSpline(_MaskedElementwise):
    """Masked autoregressive rational-quadratic spline layer (Durkan et al. 2019, "RQ-NSF
    (AR)"): z_i = spline(v_i; theta_i) on [-bound, bound] with ``bins`` bins, identity
    outside (``splines.rq_spline``); the network gives 3 bins - 1 numbers per coordinate
    (bin widths, bin heights, interior derivatives). Both directions are closed-form.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int],
        order: Sequence[int] | Tensor | None = None,
        kind: str = "maf",
        context_dim: int = 0,
        bins: int = 8,
        bound: float = 5.0,
        seed: int = 0,
    ) -> None:
        _check_spline(bins, bound)
        super().__init__(dim, hidden, order, kind, context_dim, seed, 3 * bins - 1)
        self.bins, self.bound = bins, float(bound)

    def elementwise(self, raw: Tensor, x: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        return rq_spline(x, *split_spline_params(raw, self.bins), inverse, self.bound)


def _check_transform(transform: str) -> None:
    if transform not in _TRANSFORMS:
        raise ValueError(f"transform must be one of {_TRANSFORMS}, got {transform!r}")


def _check_spline(bins: int, bound: float) -> None:
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    positive("bound", bound)


def _check_alternation(flow: _Flow, _incompatible: object = None) -> None:
    """Whether the couplings alternate between one split and its complement (after
    construction, and after load_state_dict, which may replace the masks)."""
    layers = list(flow.layers)
    first = layers[0] if layers else None
    flow._alternating = isinstance(first, _Coupling) and all(
        isinstance(layer, _Coupling)
        and torch.equal(layer.keep, first.keep if i % 2 == 0 else first.move)
        for i, layer in enumerate(layers)
    )


class _Flow(Conditional, nn.Module):
    """Shared machinery: coupling stack, optional diagonal scaling, prior, dequantisation."""

    data_kind = "continuous"
    log_prob_kind: str
    log_prob_bound = "dequantisation bound"  # what log_prob is when dequantising

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
        self._alternating = False
        _check_alternation(self)
        self.register_load_state_dict_post_hook(_check_alternation)

    # -- the invertible map in flow space -----------------------------------------------

    def forward_transform(
        self, v: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """z = f(v) and log|det df/dv| per example (``context``: [N, C] or [C], if any)."""
        context = self._context(context, v.shape[0])
        logdet = v.new_zeros(v.shape[0])
        if self._alternating:
            # Split once, couple the two parts in turn, merge once: the same values as
            # layer by layer (splits and merges are exact copies), without a gather and a
            # scatter per layer.
            couplings = self._couplings()
            first = couplings[0]
            a, b = first.split(v)  # layer 0's conditioning and moved entries
            for i, layer in enumerate(couplings):
                if i % 2 == 0:
                    b, ld = layer.couple(a, b, context)
                else:
                    a, ld = layer.couple(b, a, context)
                logdet = logdet + ld
            v = first.merge(a, b)
        else:
            for module in self.layers:
                v, ld = module(v, context)
                logdet = logdet + ld
        if self.log_scale is not None:
            v = v * torch.exp(self.log_scale)
            logdet = logdet + self.log_scale.sum()
        return v, logdet

    def _couplings(self) -> list[_Coupling]:
        """The layers as couplings (only when ``_alternating`` says they are)."""
        return cast(list[_Coupling], list(self.layers))

    def inverse_transform(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """v = f^{-1}(z)."""
        context = self._context(context, z.shape[0])
        if self.log_scale is not None:
            z = z * torch.exp(-self.log_scale)
        if self._alternating:
            couplings = self._couplings()
            first = couplings[0]
            a, b = first.split(z)
            for i in reversed(range(len(couplings))):
                layer = couplings[i]
                if i % 2 == 0:
                    b = layer.uncouple(a, b, context)
                else:
                    a = layer.uncouple(b, a, context)
            return first.merge(a, b)
        for module in reversed(self.layers):
            z = module.inverse(z, context)  # type: ignore[operator]
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
    def log_density(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log density of continuous data y, shape [N]."""
        y = as_flat(y, self.dim)
        v, ld_pre = self.preprocess(y)
        z, ld_flow = self.forward_transform(v, context)
        return self.prior_log_prob(z) + ld_flow + ld_pre

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """x in {0, 1/(L-1), ..., 1} -> y = (x_int + u) / L in (0, 1), u uniform."""
        x = as_flat(x, self.dim)
        k = torch.round(x * (self.levels - 1))
        u = rand(x.shape, self, generator)
        # Keep y strictly inside (0, 1) after rounding, so a logit with alpha = 0 is finite.
        eps = torch.finfo(u.dtype).eps
        return ((k + u) / self.levels).clamp(eps, 1 - eps)

    def log_prob(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Exact log density (no dequantisation) or the dequantisation bound on log P(x)."""
        if self.dequantization == "none":
            return self.log_density(x, context)
        y = self.dequantize(x, generator)
        return self.log_density(y, context) - self.dim * math.log(self.levels)

    def bits_per_dim(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """-log_prob(x) / (D log 2), per example."""
        return -self.log_prob(x, generator, context) / (self.dim * math.log(2))

    def loss(
        self,
        x: Tensor,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Negative log-likelihood (or its dequantisation bound) averaged over the batch."""
        return -self.log_prob(x, generator, context).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """z ~ prior, y = postprocess(f^{-1}(z)); clipped to [0, 1] when dequantising.

        The clip only touches mass the bound never counted (logit with alpha > 0 can map
        slightly outside [0, 1]); without dequantisation the sample is returned as is.
        """
        y = self.rsample(n, generator, context)
        return y.clamp(0.0, 1.0) if self.dequantization != "none" else y

    has_rsample = True  # samples are a differentiable function of the parameters

    def rsample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Reparameterised draws y = postprocess(f^{-1}(z)), z ~ prior, differentiable in
        the parameters (for objectives on samples, e.g. a reverse KL); not clipped."""
        z = self.prior_sample(n, generator)
        return self.postprocess(self.inverse_transform(z, context))


class NICE(_Flow):
    """NICE (Dinh et al. 2014): additive couplings with alternating masks + diagonal scaling.

    ``n_couplings`` layers; layer i keeps ``mask`` (i even) or its complement (i odd), so
    every coordinate is transformed. Prior: standard logistic by default (as in NICE).
    ``context_dim > 0``: every coupling network also reads the context (p(x | c)).
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
        context_dim: int = 0,
    ) -> None:
        base = make_mask(dim, mask, side)
        layers = [
            AdditiveCoupling(base if i % 2 == 0 else 1 - base, hidden, context_dim)
            for i in range(n_couplings)
        ]
        super().__init__(dim, layers, prior, dequantization, levels, alpha, scaling=True)
        self.context_dim = context_dim


class RealNVP(_Flow):
    """RealNVP (Dinh et al. 2016): affine couplings with alternating or checkerboard masks.

    ``mask="checkerboard"`` needs ``side`` (default 8: side * side == dim); ``"alternating"``
    (even/odd flat index) and ``"half"`` work for any dim. Consecutive layers use
    complementary masks. Gaussian prior and logit dequantisation by default.
    ``mixing``: a layer before every coupling that mixes the coordinates, the options of
    Glow's comparison (Kingma and Dhariwal 2018): ``"reverse"`` or ``"random"``
    (``Permutation``), ``"lu"`` (a learnt ``LULinear``); ``"none"`` by default.
    ``context_dim > 0``: every coupling network also reads the context (p(x | c)).
    ``transform="spline"``: rational-quadratic spline couplings instead (``SplineCoupling``,
    Durkan et al. 2019's RQ-NSF (C)) with ``bins`` bins on [-bound, bound], identity
    outside; the default bound 5 covers the logit-space data (|v| <= logit(1 - alpha) =
    2.94 for alpha = 0.05) with room to spare, and all but 6e-7 of the normal base's
    mass per coordinate.
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
        mixing: str = "none",
        context_dim: int = 0,
        transform: str = "affine",
        bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        if mixing not in ("none", "reverse", "random", "lu"):
            raise ValueError(f"mixing must be 'none', 'reverse', 'random' or 'lu', got {mixing!r}")
        _check_transform(transform)
        _check_spline(bins, bound)  # checked even when unused: a wrong value is a mistake
        base = make_mask(dim, mask, side if mask == "checkerboard" else None)
        masks = [base if i % 2 == 0 else 1 - base for i in range(n_couplings)]
        layers: list[nn.Module] = [
            AffineCoupling(m, hidden, context_dim) if transform == "affine"
            else SplineCoupling(m, hidden, bins, bound, context_dim)
            for m in masks
        ]
        if mixing != "none":
            from .glow import LULinear, Permutation  # glow.py builds on this module

            layers = [
                part
                for i, layer in enumerate(layers)
                for part in (
                    LULinear(dim) if mixing == "lu" else Permutation(dim, mixing, seed=i),
                    layer,
                )
            ]
        super().__init__(dim, layers, prior, dequantization, levels, alpha, scaling=False)
        self.context_dim = context_dim


def _mirror_initialised(module: ActNorm, _incompatible: object) -> None:
    """After load_state_dict: the host-side flag follows the loaded buffer."""
    module._ready = bool(module.initialised)


class ActNorm(nn.Module):
    """Activation normalisation (Kingma and Dhariwal 2018): y = (v - b) exp(-s) per feature
    (axis 1: a dimension of flat [N, D] data, a channel of [N, C, H, W] images, shared by
    its H W positions), so log|det| = -(H W) sum(s) (H W = 1 for flat data). The first
    batch it sees in training mode sets b and s to that batch's mean and log standard
    deviation per feature (data-dependent initialisation), so every layer after it starts on
    unit-variance inputs; after that both are learnt."""

    initialised: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.zeros(dim))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._ready = False  # the buffer's value on the host: no device sync per forward
        self.register_load_state_dict_post_hook(_mirror_initialised)

    def _params(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(b, s) shaped to broadcast over v: [D] for flat data, [C, 1, 1] for images."""
        shape = (-1,) + (1,) * (v.dim() - 2)
        return self.shift.view(shape), self.log_scale.view(shape)

    def forward(self, v: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not self._ready and v.numel() > v.shape[1]:
            axes = [d for d in range(v.dim()) if d != 1]  # all but the feature axis
            with torch.no_grad():
                self.shift.copy_(v.mean(axes))
                self.log_scale.copy_(torch.log(v.std(axes) + 1e-6))
                self.initialised.fill_(True)
            self._ready = True
        shift, log_scale = self._params(v)
        positions = math.prod(v.shape[2:])  # H W for images, 1 for flat data
        return (v - shift) * torch.exp(-log_scale), (
            -positions * self.log_scale.sum()
        ).expand(v.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        shift, log_scale = self._params(y)
        return y * torch.exp(log_scale) + shift


class _MaskedAutoregressiveFlow(_Flow):
    """K masked layers of one kind, orderings reversed from layer to layer (the first in
    natural order), a standard normal base, and ``_Flow``'s dequantisation.

    ``transform="affine"``: ``MaskedAffine`` layers (log-scales bounded by
    ``max_log_scale``); ``"spline"``: ``MaskedSpline`` layers (Durkan et al. 2019's
    RQ-NSF (AR)), ``bins`` rational-quadratic bins on [-bound, bound] and the identity
    outside (``max_log_scale`` unused). The default bound 5 covers the logit-space data
    (|v| <= logit(1 - alpha) = 2.94 for alpha = 0.05) with room to spare, and all but 6e-7
    of the normal base's mass per coordinate; with ``dequantization="none"`` the data
    [0, 1] lie inside.
    """

    kind: str

    def __init__(
        self,
        dim: int = 64,
        n_layers: int = 5,
        hidden: Sequence[int] = (128, 128),
        context_dim: int = 0,
        max_log_scale: float = 3.0,
        dequantization: str = "logit",
        levels: int = 17,
        alpha: float = 0.05,
        seed: int = 0,
        actnorm: bool = False,
        transform: str = "affine",
        bins: int = 8,
        bound: float = 5.0,
        ordering: str = "reverse",
    ) -> None:
        """actnorm: an ActNorm layer before every masked layer (Glow's normalisation).
        ordering: "reverse" (natural, reversed, natural, ...) or "random" (layer i's
        ordering a permutation drawn from seed + i)."""
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        if ordering not in ("reverse", "random"):
            raise ValueError(f"ordering must be 'reverse' or 'random', got {ordering!r}")
        _check_transform(transform)
        _check_spline(bins, bound)  # checked even when unused: a wrong value is a mistake
        natural = torch.arange(dim)
        orders = [
            torch.randperm(dim, generator=torch.Generator().manual_seed(seed + i))
            if ordering == "random" else natural if i % 2 == 0 else natural.flip(0)
            for i in range(n_layers)
        ]
        layers: list[nn.Module] = [
            MaskedAffine(dim, hidden, order, self.kind, context_dim, max_log_scale, seed + i)
            if transform == "affine"
            else MaskedSpline(dim, hidden, order, self.kind, context_dim, bins, bound, seed + i)
            for i, order in enumerate(orders)
        ]
        if actnorm:
            layers = [part for layer in layers for part in (ActNorm(dim), layer)]
        super().__init__(dim, layers, "gaussian", dequantization, levels, alpha, scaling=False)
        self.context_dim = context_dim


class MAF(_MaskedAutoregressiveFlow):
    """Masked autoregressive flow (Papamakarios et al. 2017) with affine layers
    (``transform="spline"``: rational-quadratic spline layers, Durkan et al. 2019).

    ``log_prob`` takes one network pass per layer; ``sample`` D sequential passes per layer.
    ``context_dim > 0`` makes it conditional (p(x | context)). Logit dequantisation of
    ``levels`` grey levels by default, as RealNVP; ``dequantization="none"`` for an exact
    density of continuous data. Log-scales are soft-clamped to (-max_log_scale,
    max_log_scale) per layer (``MaskedAffine``); spline layers need none (``MaskedSpline``:
    softmax bins of at least 1e-3 of the interval, knot derivatives through a softplus,
    linear rather than exponential in the network's outputs).
    """

    kind = "maf"


class IAF(_MaskedAutoregressiveFlow):
    """Inverse autoregressive flow (Kingma et al. 2016) with affine (or, with
    ``transform="spline"``, rational-quadratic spline) layers.

    The mirror of MAF: ``sample`` takes one network pass per layer, ``log_prob`` of given
    data D sequential passes per layer (so training it by maximum likelihood, as here, is
    D times slower than MAF). Same arguments and conventions as ``MAF``.
    """

    kind = "iaf"
