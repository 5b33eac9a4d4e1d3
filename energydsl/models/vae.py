"""Variational autoencoders (seed 001, question 1): MLP and convolutional encoder/decoder.

Generative model p(z) = N(0, I), p(x|z) Bernoulli(logits = g(z)) or N(mean = g(z), diag std^2);
approximate posterior q(z|x) = N(mu(x), diag std(x)^2), sampled with the reparameterisation
z = mu + std * eps so gradients reach the encoder (seed 001, 1.11).

- ``elbo(x)``: E_q[log p(x|z)] - KL(q(z|x) || p(z)), one reparameterised sample and the
  closed-form Gaussian KL (seed 001, 1.5/1.10). ``loss(x) = -mean(elbo(x))``.
- ``iw_log_prob(x, k)``: the importance-weighted estimate
  log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x) (seed 001, 1.4, with q as proposal).
  Its expectation is a lower bound on log p(x) that is at least the ELBO, grows with k and
  tends to log p(x). ``log_prob(x)`` returns it with ``n_importance`` samples, so it is a
  stochastic *lower bound*, not the exact likelihood (``log_prob_kind = "lower_bound"``).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Normal

from ._utils import (
    Conditional,
    as_flat,
    as_images,
    bernoulli_log_prob,
    randn,
    sample_bernoulli,
)

__all__ = ["VAE", "BetaVAE", "ConvVAE", "gaussian_kl"]

_LIKELIHOODS = ("bernoulli", "gaussian")
# Floor on the encoder's standard deviation: keeps log std finite in float32.
_MIN_ENCODER_STD = 1e-4


def gaussian_kl(mu: Tensor, std: Tensor) -> Tensor:
    """KL(N(mu, diag std^2) || N(0, I)) per example, summed over the last dim.

    Closed form (seed 001, 1.5): 1/2 sum(std^2 + mu^2 - 1) - sum(log std).
    """
    return 0.5 * (std.pow(2) + mu.pow(2) - 1).sum(-1) - torch.log(std).sum(-1)


class VAE(Conditional, nn.Module):
    """MLP VAE as in seed 001 (1.12): D -> hidden (ReLU) -> (mu, std); z -> hidden (tanh) -> D.

    ``likelihood="bernoulli"`` (binary data, BCE-with-logits) or ``"gaussian"`` (continuous
    data; per-pixel learned std, floored at ``min_std`` so always-constant pixels cannot
    make the density unbounded). Data are flat [N, D].
    """

    data_kind = "binary"
    log_prob_kind = "lower_bound"
    log_prob_bound = "IW bound"  # which bound log_prob is (distribution.likelihood_kind)

    def __init__(
        self,
        dim: int = 64,
        hidden: int = 128,
        z_dim: int = 8,
        likelihood: str = "bernoulli",
        min_std: float = 1e-2,
        n_importance: int = 16,
        *,
        beta: float = 1.0,
        context_dim: int = 0,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        """MLP encoder and decoder; a subclass passes its own (`encoder` maps x to the
        2 z_dim Gaussian parameters, `decoder` z to the likelihood's parameters) and its
        `event_shape`. context_dim > 0: a conditional VAE (Sohn et al. 2015), q(z | x, c)
        and p(x | z, c) with the context c concatenated to the networks' inputs,
        p(z) = N(0, I); every method then takes `context` ([N, C], or [C] for the whole
        batch). Networks given with a context take those concatenated inputs (a subclass
        places the context elsewhere by overriding `_encoder_out` and `_decoder_out`)."""
        super().__init__()
        if not (isinstance(beta, (int, float)) and beta > 0):
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        self.beta = float(beta)  # the KL term's weight in `loss` (1: the ELBO)
        self.context_dim = context_dim
        self.dim = dim
        self.event_shape: tuple[int, ...] = event_shape or (dim,)
        self._init_common(z_dim, likelihood, min_std, n_importance)
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.encoder = encoder or nn.Sequential(
            nn.Linear(dim + context_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * z_dim)
        )
        self.decoder = decoder or nn.Sequential(
            nn.Linear(z_dim + context_dim, hidden), nn.Tanh(), nn.Linear(hidden, dim)
        )

    def _init_common(self, z_dim: int, likelihood: str, min_std: float, n_importance: int) -> None:
        if likelihood not in _LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {likelihood!r}")
        self.z_dim = z_dim
        self.likelihood = likelihood
        self.min_std = min_std
        self.n_importance = n_importance
        self.data_kind = "binary" if likelihood == "bernoulli" else "continuous"
        if likelihood == "gaussian":
            # softplus(0.5413) = 1: decoder std starts at about 1.
            self.decoder_std_raw = nn.Parameter(torch.full(self.event_shape, 0.5413))

    # -- layout -------------------------------------------------------------------------
    def _prepare(self, x: Tensor) -> Tensor:
        return as_flat(x, self.dim)

    def _encoder_out(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The encoder's 2 z_dim outputs from the prepared x and the context [N, C]."""
        return self.encoder(x if context is None else torch.cat([x, context], dim=-1))

    def _decoder_out(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Raw decoder output with any leading dims: [..., z_dim] -> [..., *event_shape]
        (the context, [N, C], broadcast over z's leading sample dims)."""
        if context is not None:
            z = torch.cat([z, context.expand(*z.shape[:-1], context.shape[-1])], dim=-1)
        return self.decoder(z)

    # -- distributions ------------------------------------------------------------------
    def encode(self, x: Tensor, context: Tensor | None = None) -> Normal:
        """q(z|x) (or q(z|x, c)) as a torch Normal with batch shape [N, z_dim]."""
        x = self._prepare(x)
        context = self._context(context, x.shape[0])
        mu, raw = self._encoder_out(x, context).chunk(2, dim=-1)
        return Normal(mu, F.softplus(raw) + _MIN_ENCODER_STD)

    def decoder_std(self) -> Tensor:
        """Per-pixel std of the Gaussian decoder."""
        return F.softplus(self.decoder_std_raw) + self.min_std

    def decode(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """Decoder mean: sigmoid(logits) for Bernoulli, the mean for Gaussian."""
        out = self._decoder_out(z, self._context(context, z.shape[-2] if z.dim() > 1 else 1))
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def log_likelihood(self, x: Tensor, z: Tensor, context: Tensor | None = None) -> Tensor:
        """log p(x|z) summed over pixels; z may have leading sample dims ([K, N, z_dim])."""
        x = self._prepare(x)
        out = self._decoder_out(z, self._context(context, x.shape[0]))
        if self.likelihood == "bernoulli":
            return bernoulli_log_prob(out, x)
        lp = Normal(out, self.decoder_std()).log_prob(x)
        return lp.reshape(*out.shape[: out.dim() - (x.dim() - 1)], -1).sum(-1)

    @staticmethod
    def reparameterize(
        mu: Tensor, std: Tensor, n: int | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mu + std * eps, eps ~ N(0, I); ``n`` adds a leading sample dimension."""
        shape = mu.shape if n is None else (n, *mu.shape)
        eps = torch.randn(shape, generator=generator, dtype=mu.dtype, device=mu.device)
        return mu + std * eps

    # -- objectives ---------------------------------------------------------------------
    def elbo(self, x: Tensor, generator: torch.Generator | None = None,
             context: Tensor | None = None, beta: float = 1.0) -> Tensor:
        """Per-example ELBO [N]: one-sample reconstruction term minus closed-form KL (the
        KL weighted by `beta`: beta-VAE's objective; 1 is the ELBO itself)."""
        x = self._prepare(x)
        q = self.encode(x, context)
        z = self.reparameterize(q.loc, q.scale, generator=generator)
        return self.log_likelihood(x, z, context) - beta * gaussian_kl(q.loc, q.scale)

    def log_weights(
        self, x: Tensor, k: int, generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """log p(x, z_i) - log q(z_i|x) for k reparameterised z_i ~ q(z|x); shape [k, N].

        Their mean is a k-sample ELBO estimate, their log-mean-exp the IW estimate.
        """
        x = self._prepare(x)
        q = self.encode(x, context)
        z = self.reparameterize(q.loc, q.scale, n=k, generator=generator)
        prior = Normal(torch.zeros_like(z), torch.ones_like(z))
        return (
            self.log_likelihood(x, z, context) + prior.log_prob(z).sum(-1)
            - q.log_prob(z).sum(-1)
        )

    def iw_log_prob(
        self, x: Tensor, k: int | None = None, generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> Tensor:
        """Importance-weighted estimate of log p(x) with k samples (logsumexp, stable)."""
        k = self.n_importance if k is None else k
        lw = self.log_weights(x, k, generator, context)
        return torch.logsumexp(lw, dim=0) - math.log(k)

    def log_prob(self, x: Tensor, generator: torch.Generator | None = None,
                 context: Tensor | None = None) -> Tensor:
        """Stochastic lower bound on log p(x): ``iw_log_prob`` with ``n_importance`` samples."""
        return self.iw_log_prob(x, generator=generator, context=context)

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             context: Tensor | None = None) -> Tensor:
        """The negative ELBO averaged over the batch (nats per example), its KL term
        weighted by `beta` (Higgins et al. 2017; beta = 1: the ELBO itself). `log_prob`
        estimates log p(x) whatever beta trained the model."""
        return -self.elbo(x, generator, context, self.beta).mean()

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, mean: bool = False,
        context: Tensor | None = None,
    ) -> Tensor:
        """Ancestral sampling: z ~ p(z), then x ~ p(x|z) (or its mean); p(x|z, c) with
        a context ([C] for every sample, or [n, C])."""
        z = randn((n, self.z_dim), self, generator)
        out = self._decoder_out(z, self._context(context, n))
        if self.likelihood == "bernoulli":
            x = torch.sigmoid(out) if mean else sample_bernoulli(out, generator)
        else:
            x = out if mean else out + self.decoder_std() * randn(out.shape, self, generator)
        return x.reshape(n, *self.event_shape)


class ConvVAE(VAE):
    """Convolutional VAE for [N, 1, side, side] images (side divisible by 4).

    Encoder: two stride-2 convolutions then a linear layer to (mu, std); decoder: a linear
    layer then two stride-2 transposed convolutions. Accepts flat [N, side*side] data.
    ``context_dim = C``: conditional (Sohn et al. 2015), the context concatenated to the
    convolutional features before the encoder's linear layer and to z before the decoder's.
    """

    def __init__(
        self,
        side: int = 8,
        channels: int = 32,
        z_dim: int = 8,
        likelihood: str = "bernoulli",
        min_std: float = 1e-2,
        n_importance: int = 16,
        context_dim: int = 0,
    ) -> None:
        if side % 4:
            raise ValueError(f"side must be divisible by 4, got {side}")
        s4, c2 = side // 4, 2 * channels
        extra = max(context_dim, 0)
        encoder = nn.Sequential(
            nn.Conv2d(1, channels, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, c2, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(c2 * s4 * s4 + extra, 2 * z_dim),
        )
        decoder = nn.Sequential(
            nn.Linear(z_dim + extra, c2 * s4 * s4),
            nn.ReLU(),
            nn.Unflatten(1, (c2, s4, s4)),
            nn.ConvTranspose2d(c2, channels, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1),
        )
        super().__init__(side * side, z_dim=z_dim, likelihood=likelihood, min_std=min_std,
                         n_importance=n_importance, context_dim=context_dim, encoder=encoder,
                         decoder=decoder, event_shape=(1, side, side))
        self.side = side

    def _prepare(self, x: Tensor) -> Tensor:
        return as_images(x, self.side)

    def _encoder_out(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None:
            return self.encoder(x)
        encoder = cast(nn.Sequential, self.encoder)  # ConvVAE builds its own
        features = encoder[:-1](x)  # the convolutions, flattened
        return encoder[-1](torch.cat([features, context], dim=-1))

    def _decoder_out(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]
        if context is not None:
            z = torch.cat([z, context.expand(*lead, context.shape[-1])], dim=-1)
        out = self.decoder(z.reshape(-1, z.shape[-1]))
        return out.reshape(*lead, *self.event_shape)


class BetaVAE(VAE):
    """The MLP VAE trained with the KL term weighted by beta (Higgins et al. 2017):
    beta > 1 trades reconstruction for a latent code closer to the prior."""

    def __init__(
        self,
        dim: int = 64,
        hidden: int = 128,
        z_dim: int = 8,
        beta: float = 4.0,
        likelihood: str = "bernoulli",
        min_std: float = 1e-2,
        n_importance: int = 16,
        context_dim: int = 0,
    ) -> None:
        super().__init__(dim, hidden, z_dim, likelihood, min_std, n_importance, beta=beta,
                         context_dim=context_dim)
