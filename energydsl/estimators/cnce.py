"""Conditional NCE (Ceylan and Gutmann 2018): pairs (x, x + s eps); the symmetric noise
and the normaliser cancel, leaving softplus(F(x) - F(y))."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class ConditionalNCE(Objective):
    name = "cnce"

    def __init__(self, model: nn.Module, noise_std: float = 0.1, k: int = 1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.noise_std, self.k, self.generator = noise_std, k, generator

    def loss(self, x: Tensor) -> Tensor:
        return self.model.cnce_loss(x, self.noise_std, self.k, generator=self.generator)


def check(model, reference, v, add, generator) -> None:
    """2 mean log(1 + exp(F(x) - F(y))) at fixed noise, F by the reference."""
    import torch

    noise_std = 0.3
    noise = torch.randn(2, *v.shape, generator=generator, dtype=v.dtype)
    contrast = v[None] + noise_std * noise
    difference = reference.free_energy(v)[None] - reference.free_energy(
        contrast.reshape(-1, v.shape[1])).reshape(2, v.shape[0])
    expected = 2 * torch.logaddexp(torch.zeros((), dtype=v.dtype), difference).mean()
    add("cnce_loss", model.cnce_loss(v, noise_std, noise=noise), expected.detach())


ESTIMATOR = Estimator("cnce", "conditional NCE (--option noise_std, k)", ConditionalNCE,
                      method="cnce_loss", template="cnce_loss.py.j2", check=check,
                      needs="cnce_loss")
