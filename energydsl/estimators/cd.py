"""Contrastive divergence, CD-k (Hinton 2002): negatives start at the data and take k
sampler steps under the current model (block Gibbs on the derived conditionals where the
model has them, else MALA on the derived score, or single-entry flips for binary or spin
data; see energydsl.train.sampling). The
loss is the surrogate mean F(x) - mean F(x-) with the negatives held fixed (no gradient
through the sampler), so its gradient is the CD estimate of the negative log-likelihood
gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class ContrastiveDivergence(Objective):
    name = "cd"

    def __init__(self, model: nn.Module, k: int = 1, method: str = "auto",
                 step_size: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        from energydsl.train.sampling import Sampler

        super().__init__(model)
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k, self.generator = k, generator
        self.sampler = Sampler(self.model, method,  # type: ignore[arg-type]  # checked there
                               step_size=step_size, adapt=False)

    def negatives(self, x: Tensor) -> Tensor:
        return self.sampler(x.detach(), self.k, self.generator)

    def loss(self, x: Tensor) -> Tensor:
        negatives = self.negatives(x).detach()
        return self.model.free_energy(x).mean() - self.model.free_energy(negatives).mean()


ESTIMATOR = Estimator("cd", "contrastive divergence, CD-k (--option k)",
                      ContrastiveDivergence, data="any")
