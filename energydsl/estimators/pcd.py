"""Persistent contrastive divergence (Tieleman 2008): the negatives are persistent chains
carried from one update to the next, started from N(0, I) for real data, uniformly random
entries for binary or spin data (or `init`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator
from energydsl.estimators.cd import ContrastiveDivergence

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class PersistentCD(ContrastiveDivergence):
    """`n_chains` defaults to the batch size."""

    name = "pcd"

    def __init__(self, model: nn.Module, k: int = 1, n_chains: int | None = None,
                 method: str = "auto", step_size: float | None = None,
                 init: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model, k, method, step_size, generator)
        self.n_chains = n_chains
        self.states = None if init is None else init.detach().clone()

    def _start(self, x: Tensor) -> Tensor:
        from energydsl.train.sampling import initial_chains

        if self.states is None:
            count = self.n_chains or x.shape[0]
            self.states = initial_chains(self.model, count, self.generator).to(x)
        return self.states

    def negatives(self, x: Tensor) -> Tensor:
        self.states = self.sampler(self._start(x), self.k, self.generator)
        return self.states

    def state_dict(self) -> dict[str, object]:
        return {"states": self.states}


ESTIMATOR = Estimator("pcd", "persistent contrastive divergence (--option k, n_chains)",
                      PersistentCD, data="any")
