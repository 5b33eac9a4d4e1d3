"""Pseudo-likelihood (Besag 1975), for binary or spin data: the batch mean of
    -sum_i log P(v_i | the other entries) = sum_i softplus(-flip_gain_i),
exact over all D entries (scikit-learn's BernoulliRBM.score_samples estimates the same
sum from one random entry per sample, times D). `check` compares it with F evaluated at
each of the D flipped inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    from torch import Tensor


class PseudoLikelihood(Objective):
    name = "pl"

    def loss(self, x: Tensor) -> Tensor:
        return self.model.pl_loss(x)


def check(model, reference, v, add, generator) -> None:
    import torch

    from energydsl.estimators.rm import flipped_gains

    gains = flipped_gains(reference, v)
    # P(v_i | rest) = p(v) / (p(v) + p(v flipped at i)), written out
    probability = 1 / (1 + torch.exp(-gains))
    add("pl_loss", model.pl_loss(v), -torch.log(probability).sum(dim=1).mean())


ESTIMATOR = Estimator("pl", "pseudo-likelihood, exact over every entry (binary or spin data)",
                      PseudoLikelihood, method="pl_loss", check=check, needs="pl_loss",
                      data="discrete")
