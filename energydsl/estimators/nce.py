"""Noise-contrastive estimation (Gutmann and Hyvarinen 2012): logistic regression of the
data against nu N noise points, in log space (logsigmoid), so p_n / p_model is never
formed. The exact normaliser where the model has one in closed form, else the learnt
scalar log_z."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


def gaussian_noise(x: Tensor, ridge: float = 1e-3) -> torch.distributions.MultivariateNormal:
    """A Gaussian with the data's mean and empirical covariance (seed 000's NCE noise), a
    small ridge keeping it positive definite when pixels are constant."""
    import torch

    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(x.shape[0] - 1, 1)
    covariance = covariance + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.distributions.MultivariateNormal(mean, covariance)


class NoiseContrastive(Objective):
    """NCE with `noise` (any Distribution); by default fitted to the first batch seen."""

    name = "nce"

    def __init__(self, model: nn.Module, noise: torch.distributions.Distribution | None = None,
                 nu: float = 1.0) -> None:
        super().__init__(model)
        self.noise, self.nu = noise, nu

    def loss(self, x: Tensor) -> Tensor:
        if self.noise is None:
            self.noise = gaussian_noise(x.detach())
        return self.model.nce_loss(x, self.noise, self.nu)


def check(model, reference, v, add, generator) -> None:
    """Seed 000's formula (2) in log space against a standard Gaussian: the loss is
    log(1 + nu w(x)) averaged with its noise counterpart, w = p_n / p_model."""
    import math

    import torch

    batch, dim = v.shape
    nu = 2.0
    noise = torch.distributions.MultivariateNormal(
        torch.zeros(dim, dtype=v.dtype), torch.eye(dim, dtype=v.dtype))
    samples = torch.randn(int(nu * batch), dim, generator=generator, dtype=v.dtype)
    log_z = (model.log_z if hasattr(model, "log_z") else model.log_partition()).detach()

    def log_w(x: torch.Tensor) -> torch.Tensor:  # log p_n / p_model
        return noise.log_prob(x) + reference.free_energy(x) + log_z

    zero = torch.zeros((), dtype=v.dtype)
    expected = (torch.logaddexp(zero, math.log(nu) + log_w(v)).mean()
                + nu * torch.logaddexp(zero, -math.log(nu) - log_w(samples)).mean())
    add("nce_loss", model.nce_loss(v, noise, nu, noise_samples=samples), expected.detach())


ESTIMATOR = Estimator("nce", "noise-contrastive estimation (Gaussian noise fitted to the "
                      "data, --option nu)", NoiseContrastive, method="nce_loss",
                      template="nce_loss.py.j2", check=check, needs="nce_loss",
                      needs_normaliser=True)
