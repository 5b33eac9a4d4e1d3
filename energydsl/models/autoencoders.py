"""Autoencoders (seed 004): linear undercomplete, deep MLP, convolutional, denoising, sparse.

An autoencoder is not a density model, so none of these classes has ``log_prob``
(``log_prob_kind = "none"``). ``loss(x)`` is the mean over the batch of the per-example
reconstruction error (summed over pixels), plus the model's regulariser. ``sample(n)``
decodes codes drawn from a diagonal Gaussian fitted (by running averages during training) to
the codes of the training data: a convenience for looking at what the decoder produces,
not a calibrated generative model.

``context_dim = C > 0`` makes the decoder conditional (a conditional autoencoder): it reads
[h, c], so the code only needs what the context does not say; ``loss``, ``decode``,
``reconstruct`` and ``sample`` then take ``context=`` ([N, C], or [C] for the whole batch).
The encoder does not read the context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._utils import as_flat, as_images, bernoulli_log_prob, checked_context, mlp, rand, randn

__all__ = ["LinearAE", "MLPAE", "ConvAE", "DenoisingAE", "SparseAE"]

_RECON = ("mse", "bce")


class _Autoencoder(nn.Module):
    """Shared training objective and code-moment bookkeeping of the autoencoder family.

    Subclasses set ``self.encoder``/``self.decoder`` and implement ``_prepare`` (the data
    layout the networks take). ``recon="mse"`` uses squared error on the raw decoder output;
    ``recon="bce"`` treats the decoder output as Bernoulli logits (BCE-with-logits).
    """

    data_kind = "continuous"
    log_prob_kind = "none"
    event_shape: tuple[int, ...]

    def __init__(self, code_dim: int, recon: str = "mse", code_momentum: float = 0.1,
                 context_dim: int = 0) -> None:
        super().__init__()
        if recon not in _RECON:
            raise ValueError(f"recon must be one of {_RECON}, got {recon!r}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.code_dim = code_dim
        self.context_dim = context_dim
        self.recon = recon
        self.code_momentum = code_momentum
        self.register_buffer("code_mean", torch.zeros(code_dim))
        self.register_buffer("code_var", torch.ones(code_dim))
        self.encoder: nn.Module
        self.decoder: nn.Module

    # -- layout hooks ------------------------------------------------------------------
    def _prepare(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Identity; the denoising AE overrides this."""
        return x

    def _penalty(self, h: Tensor) -> Tensor:
        """Per-example regulariser on the code; zero here, L1 for the sparse AE."""
        return h.new_zeros(h.shape[0])

    # -- public API --------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """Code h = f(x), shape [N, code_dim]."""
        return self.encoder(self._prepare(x))

    def _decoded(self, h: Tensor, context: Tensor | None) -> Tensor:
        """The decoder's raw output from the code and, if conditional, the context."""
        context = checked_context(type(self).__name__, self.context_dim, context, h.shape[0])
        return self.decoder(h if context is None else torch.cat([h, context], dim=-1))

    def decode(self, h: Tensor, context: Tensor | None = None) -> Tensor:
        """Reconstruction r = g(h) (or g(h, c)) in data space (sigmoid applied for
        ``recon="bce"``)."""
        out = self._decoded(h, context)
        return torch.sigmoid(out) if self.recon == "bce" else out

    def reconstruct(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """g(f(x)) without corruption, shaped like the model's data layout."""
        return self.decode(self.encode(x), context)

    def reconstruction_error(self, x: Tensor, raw: Tensor) -> Tensor:
        """Per-example error between x and the raw decoder output (sum over pixels)."""
        if self.recon == "bce":
            return -bernoulli_log_prob(raw, x)
        return (raw - x).pow(2).reshape(x.shape[0], -1).sum(1)

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             context: Tensor | None = None) -> Tensor:
        """Mean over the batch of reconstruction error + code penalty (lower is better)."""
        x = self._prepare(x)
        h = self.encoder(self._corrupt(x, generator))
        if self.training:
            self._track_code(h.detach())
        raw = self._decoded(h, context)
        return (self.reconstruction_error(x, raw) + self._penalty(h)).mean()

    def _codes(self, n: int, generator: torch.Generator | None) -> Tensor:
        """n codes from N(code_mean, diag(code_var)) (the training codes' moments)."""
        return self.code_mean + self.code_var.sqrt() * randn((n, self.code_dim), self, generator)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """Decode n codes drawn from the training codes' moments (given the context)."""
        return self.decode(self._codes(n, generator), context).reshape(n, *self.event_shape)

    @torch.no_grad()
    def _track_code(self, h: Tensor) -> None:
        m = self.code_momentum
        self.code_mean.lerp_(h.mean(0), m)
        self.code_var.lerp_(h.var(0, unbiased=False) if h.shape[0] > 1 else self.code_var, m)


class LinearAE(_Autoencoder):
    """Linear undercomplete AE h = W_e x + b_e, r = W_d h + b_d with MSE loss.

    Seed 004: at the optimum, the columns of W_d span the same subspace as the top
    ``code_dim`` principal components of the data (but need not be orthogonal).
    """

    def __init__(self, dim: int = 64, code_dim: int = 8, context_dim: int = 0) -> None:
        super().__init__(code_dim, recon="mse", context_dim=context_dim)
        self.dim = dim
        self.event_shape = (dim,)
        self.encoder = nn.Linear(dim, code_dim)
        self.decoder = nn.Linear(code_dim + context_dim, dim)

    def _prepare(self, x: Tensor) -> Tensor:
        return as_flat(x, self.dim)


class MLPAE(_Autoencoder):
    """Deep MLP autoencoder: D -> hidden... -> code -> reversed(hidden)... -> D."""

    def __init__(
        self,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        code_dim: int = 8,
        recon: str = "mse",
        code_activation: str | None = None,
        context_dim: int = 0,
    ) -> None:
        super().__init__(code_dim, recon=recon, context_dim=context_dim)
        self.dim = dim
        self.event_shape = (dim,)
        hidden = list(hidden)
        encoder = mlp([dim, *hidden, code_dim])
        if code_activation == "relu":
            encoder.append(nn.ReLU())
        elif code_activation is not None:
            raise ValueError(f"code_activation must be None or 'relu', got {code_activation!r}")
        self.code_activation = code_activation
        self.encoder = encoder
        self.decoder = mlp([code_dim + context_dim, *reversed(hidden), dim])

    def _prepare(self, x: Tensor) -> Tensor:
        return as_flat(x, self.dim)

    def _codes(self, n: int, generator: torch.Generator | None) -> Tensor:
        """As the base class, but a ReLU code stays non-negative."""
        z = super()._codes(n, generator)
        return z.clamp_min(0) if self.code_activation == "relu" else z


class DenoisingAE(MLPAE):
    """Denoising AE: reconstruct the clean x from a corrupted copy (seed 004).

    ``noise="gaussian"`` adds N(0, noise_level^2) to every pixel; ``noise="mask"`` zeroes
    each pixel with probability ``noise_level``. The loss always corrupts (it is the
    denoising objective); ``reconstruct`` does not.
    """

    def __init__(
        self,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        code_dim: int = 8,
        recon: str = "mse",
        noise: str = "gaussian",
        noise_level: float = 0.2,
        context_dim: int = 0,
    ) -> None:
        super().__init__(dim=dim, hidden=hidden, code_dim=code_dim, recon=recon,
                         context_dim=context_dim)
        if noise not in ("gaussian", "mask"):
            raise ValueError(f"noise must be 'gaussian' or 'mask', got {noise!r}")
        self.noise = noise
        self.noise_level = noise_level

    def _corrupt(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.noise == "gaussian":
            return x + self.noise_level * randn(x.shape, self, generator)
        keep = rand(x.shape, self, generator) >= self.noise_level
        return x * keep.to(x.dtype)


class SparseAE(MLPAE):
    """Sparse AE: ReLU code with an L1 penalty ``sparsity * sum_j |h_j|`` added to the loss."""

    def __init__(
        self,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        code_dim: int = 32,
        recon: str = "mse",
        sparsity: float = 1e-2,
        context_dim: int = 0,
    ) -> None:
        super().__init__(dim=dim, hidden=hidden, code_dim=code_dim, recon=recon,
                         code_activation="relu", context_dim=context_dim)
        self.sparsity = sparsity

    def _penalty(self, h: Tensor) -> Tensor:
        return self.sparsity * h.abs().sum(1)


class ConvAE(_Autoencoder):
    """Convolutional AE for [N, 1, side, side] images (side divisible by 4).

    Two stride-2 convolutions down to side/4, a linear code, and two stride-2 transposed
    convolutions back up. Accepts flat [N, side*side] data too.
    """

    def __init__(
        self, side: int = 8, channels: int = 16, code_dim: int = 8, recon: str = "mse",
        context_dim: int = 0,
    ) -> None:
        super().__init__(code_dim, recon=recon, context_dim=context_dim)
        if side % 4:
            raise ValueError(f"side must be divisible by 4, got {side}")
        self.side = side
        self.event_shape = (1, side, side)
        s4, c2 = side // 4, 2 * channels
        self.encoder = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, c2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * s4 * s4, code_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(code_dim + context_dim, c2 * s4 * s4),
            nn.ReLU(),
            nn.Unflatten(1, (c2, s4, s4)),
            nn.ConvTranspose2d(c2, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
        )

    def _prepare(self, x: Tensor) -> Tensor:
        return as_images(x, self.side)

