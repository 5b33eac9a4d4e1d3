"""Maximum likelihood: -mean log p(x), for models with an exact normaliser (Gaussians,
RBMs with few enough hidden states to enumerate)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    from torch import Tensor, nn


class MaximumLikelihood(Objective):
    name = "mle"

    def __init__(self, model: nn.Module) -> None:
        if not hasattr(model, "log_prob"):
            raise TypeError(f"{type(model).__name__} has no exact log_prob: maximum "
                            "likelihood needs a normalised model (use cd/pcd or nce)")
        super().__init__(model)

    def loss(self, x: Tensor) -> Tensor:
        return -self.model.log_prob(x).mean()


ESTIMATOR = Estimator("mle", "maximum likelihood (models with an exact normaliser)",
                      MaximumLikelihood, data="any")
