"""Sliced score matching (Song et al. 2019): u^T (d score / dv) u + 1/2 (u^T score)^2
over random projections u, the Hessian-vector product by autograd; unbiased for sm_loss."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class SlicedScoreMatching(Objective):
    name = "ssm"

    def __init__(self, model: nn.Module, n_projections: int = 1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.n_projections, self.generator = n_projections, generator

    def loss(self, x: Tensor) -> Tensor:
        return self.model.ssm_loss(x, self.n_projections, generator=self.generator)


def check(model, reference, v, add, generator) -> None:
    """At fixed projections, against the full Hessian of the reference by autograd."""
    import torch

    from energydsl.check.autograd import gradient, reference_score

    projections = torch.randn(3, *v.shape, generator=generator, dtype=v.dtype)
    point, score = reference_score(reference, v)
    hessian = torch.stack([gradient(score[:, i].sum(), point).detach()
                           for i in range(v.shape[1])], dim=1)  # [N, D, D]
    curvature = torch.einsum("pni,nij,pnj->pn", projections, hessian, projections)
    along = torch.einsum("pni,ni->pn", projections, score)
    expected = (curvature + 0.5 * along.square()).mean()
    add("ssm_loss", model.ssm_loss(v, projections=projections), expected.detach())


ESTIMATOR = Estimator("ssm", "sliced score matching (--option n_projections)",
                      SlicedScoreMatching, method="ssm_loss", template="ssm_loss.py.j2",
                      check=check, needs="ssm_loss")
