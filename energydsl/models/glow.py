"""Glow (Kingma and Dhariwal 2018) and its building blocks, on the RealNVP multi-scale
architecture (Dinh et al. 2016).

Flat [N, D] layers, usable in any ``_Flow`` layer list (``forward(v, context=None)`` ->
(y, log|det dy/dv| [N]), ``inverse(y, context=None)``):

- ``Permutation``: a fixed reordering of the D entries (reversed or random); log|det| = 0.
- ``LULinear``: y = W v with W = P L (U + diag(s)) (Glow's LU parametrisation): P a fixed
  permutation, L unit lower triangular, U strictly upper triangular, s = sign exp(log_s), so
  log|det W| = sum(log|s|) costs O(D) and the inverse is two triangular solves.

Image [N, C, H, W] layers (same interface): ``InvConv1x1`` (an ``LULinear`` over channels,
applied at every pixel: log|det| = H W sum(log|s|)), ``Squeeze`` (space-to-depth, a
permutation of the entries) and ``ChannelCoupling`` (an affine coupling on channels);
``flows.ActNorm`` works on images as well (per channel).

``Glow`` stacks them: at each scale a squeeze, K steps (ActNorm, InvConv1x1, coupling), then
half the channels leave for the prior (Gaussian), the rest go on to the next scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import as_images, positive, soft_clamp
from .flows import ActNorm, _Flow

__all__ = ["Permutation", "LULinear", "InvConv1x1", "Squeeze", "ChannelCoupling", "Glow"]


class Permutation(nn.Module):
    """y = v[:, index]: a fixed reordering of the entries (``"reverse"``, or ``"random"``
    drawn from ``seed``), so that the next layer's conditioning entries differ; log|det| = 0
    (a permutation matrix has determinant +-1). The index and its inverse are buffers (in
    the state dict, so a loaded model keeps its ordering)."""

    index: Tensor
    inverse_index: Tensor

    def __init__(self, dim: int, kind: str = "reverse", seed: int = 0) -> None:
        super().__init__()
        if kind == "reverse":
            index = torch.arange(dim - 1, -1, -1)
        elif kind == "random":
            index = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        else:
            raise ValueError(f"kind must be 'reverse' or 'random', got {kind!r}")
        self.register_buffer("index", index)
        self.register_buffer("inverse_index", torch.argsort(index))

    def forward(self, v: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return v.index_select(1, self.index), v.new_zeros(v.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return y.index_select(1, self.inverse_index)


class LULinear(nn.Module):
    """Invertible y = W v with W = P L (U + diag(s)) (Kingma and Dhariwal 2018, 3.2).

    P is fixed (a row index ``perm``: row i of W is row perm[i] of L (U + diag s)), L is
    unit lower triangular (``lower`` below the diagonal), U strictly upper (``upper`` above
    it), s = ``sign`` exp(``log_s``) with a fixed sign. Then det W = +-prod(s), so
    log|det W| = sum(log_s), and v = W^-1 y by two triangular solves: no matrix inverse
    nor determinant is ever formed. Initialised at a random rotation (the Q of a QR
    factorisation of a Gaussian matrix, as Glow does), factored once by ``torch.linalg.lu``.
    """

    perm: Tensor
    inverse_perm: Tensor
    sign: Tensor

    def __init__(self, dim: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(dim, dim))[0]
        p, lower, upper = torch.linalg.lu(rotation)  # rotation = p @ lower @ upper
        s = upper.diagonal()
        perm = p.argmax(1)  # p[i, perm[i]] = 1
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))
        self.register_buffer("sign", torch.sign(s))
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(torch.log(s.abs()))

    def factors(self) -> tuple[Tensor, Tensor]:
        """(L without its unit diagonal, U + diag(s)); only the triangles are read."""
        s = self.sign * torch.exp(self.log_s)
        return self.lower.tril(-1), self.upper.triu(1) + torch.diag(s)

    def weight(self) -> Tensor:
        """W = P L (U + diag s), [D, D]."""
        strict_lower, upper = self.factors()
        return (strict_lower @ upper + upper).index_select(0, self.perm)

    def log_abs_det(self) -> Tensor:
        """log|det W| = sum(log|s|), a scalar."""
        return self.log_s.sum()

    def forward(self, v: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.linear(v, self.weight()), self.log_abs_det().expand(v.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Rows v with v W^T = y: undo P, then solve against L^T and (U + diag s)^T."""
        strict_lower, upper = self.factors()
        b = y.index_select(-1, self.inverse_perm)  # rows of L (U + diag s) v
        a = torch.linalg.solve_triangular(
            strict_lower.T, b, upper=True, left=False, unitriangular=True
        )  # a = (U + diag s) v
        return torch.linalg.solve_triangular(upper.T, a, upper=False, left=False)


class InvConv1x1(LULinear):
    """Invertible 1x1 convolution on [N, C, H, W] (Glow): the same LU-parametrised C x C
    matrix W applied to the channel vector of every pixel, so the Jacobian is block
    diagonal with H W copies of W and log|det| = H W sum(log|s|)."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = F.conv2d(x, self.weight()[:, :, None, None])
        return y, (x.shape[2] * x.shape[3] * self.log_abs_det()).expand(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """The flat inverse on each pixel's channel vector (channels last and back)."""
        return super().inverse(y.movedim(1, -1)).movedim(-1, 1)


class Squeeze(nn.Module):
    """Space-to-depth (RealNVP's squeeze): [N, C, H, W] -> [N, 4C, H/2, W/2], each 2x2
    patch becoming 4 channels (``F.pixel_unshuffle``); a permutation of the entries, so
    log|det| = 0 and the inverse (``F.pixel_shuffle``) is exact."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(f"squeeze needs an even height and width, got {tuple(x.shape)}")
        return F.pixel_unshuffle(x, 2), x.new_zeros(x.shape[0])

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return F.pixel_shuffle(y, 2)


class ChannelCoupling(nn.Module):
    """Affine coupling on channels (RealNVP's channel-wise mask, Glow's coupling).

    The first C_a = C // 2 channels x_a pass unchanged and condition a small conv net
    (3x3, 1x1, 3x3) that gives a raw log-scale and a shift (s, t) for each of the other
    channels: y_b = x_b exp(s) + t, so log|det| = sum of s over channels and pixels. The
    log-scale is soft-clamped, s = c tanh(raw / c) with c = ``max_log_scale`` (bounded
    exp(s), smooth gradient; as ``MaskedAffine``). The last conv starts at zero (Glow), so
    the coupling starts as the identity. ``context_dim = C > 0``: the net also reads the
    context as C constant feature maps beside x_a (p(x | c); the Jacobian stays triangular,
    the context being fixed).
    """

    def __init__(self, channels: int, hidden: int = 64, max_log_scale: float = 3.0,
                 context_dim: int = 0) -> None:
        super().__init__()
        if channels < 2:
            raise ValueError(f"a channel coupling needs >= 2 channels, got {channels}")
        self.kept = channels // 2
        self.max_log_scale = positive("max_log_scale", max_log_scale)
        last = nn.Conv2d(hidden, 2 * (channels - self.kept), 3, padding=1)
        for p in last.parameters():
            nn.init.zeros_(p)
        self.net = nn.Sequential(
            nn.Conv2d(self.kept + context_dim, hidden, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1), nn.ReLU(), last,
        )  # fmt: skip

    def _s_t(self, kept: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is not None:  # [N, C] -> C constant maps
            maps = context[:, :, None, None].expand(-1, -1, *kept.shape[2:])
            kept = torch.cat([kept, maps.to(kept.dtype)], 1)
        raw, t = self.net(kept).chunk(2, dim=1)
        return soft_clamp(raw, self.max_log_scale), t

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        kept, moved = x[:, : self.kept], x[:, self.kept :]
        s, t = self._s_t(kept, context)
        return torch.cat([kept, moved * torch.exp(s) + t], 1), s.sum((1, 2, 3))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        kept, moved = y[:, : self.kept], y[:, self.kept :]
        s, t = self._s_t(kept, context)
        return torch.cat([kept, (moved - t) * torch.exp(-s)], 1)


class GlowLevel(nn.Module):
    """One scale of Glow as a flat layer: it reads the first C S S entries of the state
    (the part still active at this scale, as a [N, C, S, S] image), squeezes it, runs K
    steps of (ActNorm, InvConv1x1, ChannelCoupling) and writes it back flattened; the
    entries after it (factored out at earlier scales) pass through. Flattening is channel
    first, so the first half of the 4C output channels is the first half of the entries:
    the next (smaller) level reads exactly those, and the other half stays factored out."""

    def __init__(self, channels: int, side: int, steps: int, hidden: int,
                 max_log_scale: float, context_dim: int = 0) -> None:
        super().__init__()
        self.in_shape = (channels, side, side)
        self.squeeze = Squeeze()
        self.steps = nn.ModuleList(
            layer
            for _ in range(steps)
            for layer in (ActNorm(4 * channels), InvConv1x1(4 * channels),
                          ChannelCoupling(4 * channels, hidden, max_log_scale, context_dim))
        )  # fmt: skip

    def forward(self, v: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = math.prod(self.in_shape)
        x, logdet = self.squeeze(v[:, :n].reshape(-1, *self.in_shape))
        for layer in self.steps:
            x, ld = layer(x, context)
            logdet = logdet + ld
        return torch.cat([x.flatten(1), v[:, n:]], 1), logdet

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        c, side, _ = self.in_shape
        n = math.prod(self.in_shape)
        x = y[:, :n].reshape(-1, 4 * c, side // 2, side // 2)
        for layer in reversed(self.steps):
            x = layer.inverse(x, context)  # type: ignore[operator]
        return torch.cat([self.squeeze.inverse(x).flatten(1), y[:, n:]], 1)


class Glow(_Flow):
    """Glow (Kingma and Dhariwal 2018) with RealNVP's multi-scale architecture (Dinh et al.
    2016) for [N, channels, side, side] images (flat [N, D] accepted).

    ``levels_of_scale`` levels (``GlowLevel``), each a squeeze and ``steps_per_level`` steps
    of (ActNorm, InvConv1x1, ChannelCoupling with ``hidden`` conv channels); after every
    level but the last, half of the channels are factored out: they skip the later levels
    and go straight to the prior. With the defaults an 8x8 digit becomes 4 x 4x4, 2 x 4x4
    factored out, then 16 x 2x2. The latent z is the flat state (active part first, the
    factored-out parts after it), with a standard normal prior on all of it (RealNVP's;
    Glow's learned prior on the factored halves is left out), so ``_Flow`` runs the levels
    as its layer list and provides dequantisation ("logit" with 17 levels by default, as
    RealNVP), log_prob, log_density, loss, bits_per_dim, sample and rsample.
    ``context_dim = C > 0``: every coupling net reads the context (p(x | c)); the methods
    then take ``context=``.
    """

    def __init__(
        self,
        side: int = 8,
        channels: int = 1,
        levels_of_scale: int = 2,
        steps_per_level: int = 4,
        hidden: int = 64,
        max_log_scale: float = 3.0,
        prior: str = "gaussian",
        dequantization: str = "logit",
        levels: int = 17,
        alpha: float = 0.05,
        context_dim: int = 0,
    ) -> None:
        if levels_of_scale < 1 or steps_per_level < 1:
            raise ValueError("levels_of_scale and steps_per_level must be >= 1, got "
                             f"{levels_of_scale} and {steps_per_level}")
        if side % 2**levels_of_scale:
            raise ValueError(f"side {side} cannot be halved {levels_of_scale} times")
        blocks: list[nn.Module] = []
        c, s = channels, side
        for _ in range(levels_of_scale):
            blocks.append(GlowLevel(c, s, steps_per_level, hidden, max_log_scale, context_dim))
            c, s = 2 * c, s // 2  # 4C channels after the squeeze, half of them go on
        super().__init__(channels * side * side, blocks, prior, dequantization, levels, alpha,
                         scaling=False)
        self.side, self.channels = side, channels
        self.context_dim = context_dim
        self.event_shape = (channels, side, side)

    def _images(self, x: Tensor) -> Tensor:
        """[N, D] or [N, C, side, side] -> [N, D] (rejecting other shapes)."""
        return as_images(x, self.side, self.channels).flatten(1)

    def log_density(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return super().log_density(self._images(y), context)

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return super().dequantize(self._images(x), generator)

    def rsample(self, n: int, generator: torch.Generator | None = None,
                context: Tensor | None = None) -> Tensor:
        """Reparameterised draws [n, channels, side, side] (see ``_Flow.rsample``)."""
        return super().rsample(n, generator, context).reshape(n, *self.event_shape)
