"""Ratio matching (Hyvarinen 2007, "Some extensions of score matching"), for binary or
spin data, where score matching does not apply: the batch mean of
    sum_i g(p(v) / p(v with entry i flipped))^2,  g(u) = 1 / (1 + u),
which is sum_i sigmoid(-flip_gain_i)^2 with flip_gain_i = F(v flipped at i) - F(v); the
compiler derives every flip gain in one pass (energydsl.compiler.flips). `check`
compares flip_gain and rm_loss with F evaluated at each of the D flipped inputs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator, Objective

if TYPE_CHECKING:
    from torch import Tensor


class RatioMatching(Objective):
    name = "rm"

    def loss(self, x: Tensor) -> Tensor:
        return self.model.rm_loss(x)


def flipped_gains(reference, v):
    """F(v flipped at i) - F(v) for every i, by brute force: D evaluations of the
    reference free energy (what the compiler's one-pass form must equal)."""
    import torch

    from energydsl.compiler.domains import DOMAINS

    low, high = DOMAINS[reference.model.visible.domain].low_high
    base = reference.free_energy(v)
    gains = []
    for i in range(v.shape[1]):
        flipped = v.clone()
        flipped[:, i] = low + high - v[:, i]
        gains.append(reference.free_energy(flipped) - base)
    return torch.stack(gains, dim=1)


def check(model, reference, v, add, generator) -> None:
    import torch

    gains = flipped_gains(reference, v)
    add("flip_gain", model.flip_gain(v), gains.detach())
    add("rm_loss", model.rm_loss(v), torch.sigmoid(-gains).square().sum(dim=1).mean())


ESTIMATOR = Estimator("rm", "ratio matching (binary or spin data)", RatioMatching,
                      method="rm_loss", check=check, needs="rm_loss", data="discrete")
