"""Score matching (Hyvarinen 2005), exact: sm_loss, derived and planned by the compiler.

The batch mean of sum_i 1/2 score_i^2 + d score_i / dv_i, constants included. `check`
compares it, and its gradient with respect to every parameter, with autograd on the
spec's own energy (one backward pass per dimension for the Laplacian).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    from torch import Tensor


class ScoreMatching(Objective):
    name = "sm"

    def loss(self, x: Tensor) -> Tensor:
        return self.model.sm_loss(x)


def check(model, reference, v, add, generator) -> None:
    import torch

    from energydsl.check.autograd import gradient, reference_score

    point, score = reference_score(reference, v)
    laplacian = torch.stack([gradient(score[:, i].sum(), point)[:, i]
                             for i in range(v.shape[1])], dim=1).sum(dim=1)
    expected = (0.5 * score.square().sum(dim=1) + laplacian).mean()
    value = model.sm_loss(point)
    add("sm_loss", value, expected)
    params = dict(model.named_parameters())
    names = [n for n, p in params.items() if p.requires_grad and n != "log_z"]
    grads = _gradients(value, [params[n] for n in names])
    expected_grads = _gradients(expected, [params[n] for n in names])
    for name, grad, grad_ref in zip(names, grads, expected_grads, strict=True):
        zeros = torch.zeros_like(params[name])
        add(f"d sm_loss / d {name}", zeros if grad is None else grad,
            zeros if grad_ref is None else grad_ref)


def _gradients(loss, params):
    """d loss / d each parameter; None for those it does not depend on (all of them when
    the loss involves no parameter, e.g. a constant that cancels in the score)."""
    import torch

    if not params or not loss.requires_grad:
        return [None for _ in params]
    return torch.autograd.grad(loss, params, allow_unused=True)


ESTIMATOR = Estimator("sm", "exact score matching (the derived closed form)", ScoreMatching,
                      method="sm_loss", check=check, needs="sm_loss")
