"""Denoising score matching (Vincent 2011): 1/2 |score(v~) - (v - v~) / s^2|^2 with
v~ = v + s eps, eps ~ N(0, I); it needs the derived score only, no second derivatives."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class DenoisingScoreMatching(Objective):
    name = "dsm"

    def __init__(self, model: nn.Module, noise_std: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.noise_std, self.generator = noise_std, generator

    def loss(self, x: Tensor) -> Tensor:
        return self.model.dsm_loss(x, self.noise_std, generator=self.generator)


def check(model, reference, v, add, generator) -> None:
    """Vincent's formula at fixed noise, with the score by autograd of the reference."""
    import torch

    from energydsl.check.autograd import reference_score

    noise_std = 0.3
    noise = torch.randn(v.shape, generator=generator, dtype=v.dtype)
    _, score = reference_score(reference, v + noise_std * noise)
    expected = 0.5 * (score + noise / noise_std).square().sum(dim=1).mean()
    add("dsm_loss", model.dsm_loss(v, noise_std, noise=noise), expected)


ESTIMATOR = Estimator("dsm", "denoising score matching (Gaussian noise, --option noise_std)",
                      DenoisingScoreMatching, method="dsm_loss", template="dsm_loss.py.j2",
                      check=check, needs="dsm_loss")
