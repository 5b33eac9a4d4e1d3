"""Fast-weights PCD (Tieleman and Hinton 2009): the chains sample from the model with
parameters theta + theta_fast, where theta_fast follows the same gradient at a larger
learning rate and decays (by `fast_decay` per step) so the chains keep moving."""

from __future__ import annotations

from typing import TYPE_CHECKING

from energydsl.estimators.base import Estimator
from energydsl.estimators.pcd import PersistentCD

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn


class FastPCD(PersistentCD):
    name = "fpcd"

    def __init__(self, model: nn.Module, k: int = 1, n_chains: int | None = None,
                 fast_lr: float = 1e-2, fast_decay: float = 0.95, method: str = "auto",
                 step_size: float | None = None, init: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        import torch

        super().__init__(model, k, n_chains, method, step_size, init, generator)
        if not (fast_lr > 0 and 0 <= fast_decay < 1):
            raise ValueError(f"need fast_lr > 0 and 0 <= fast_decay < 1, "
                             f"got {fast_lr!r}, {fast_decay!r}")
        self.fast_lr, self.fast_decay = fast_lr, fast_decay
        self.fast = {name: torch.zeros_like(p) for name, p in model.named_parameters()}

    def negatives(self, x: Tensor) -> Tensor:
        import torch

        parameters = dict(self.model.named_parameters())
        saved = {name: p.detach().clone() for name, p in parameters.items()}
        try:
            with torch.no_grad():
                for name, p in parameters.items():
                    p.add_(self.fast[name])
            return super().negatives(x)
        finally:
            with torch.no_grad():
                for name, p in parameters.items():
                    p.copy_(saved[name])

    def state_dict(self) -> dict[str, object]:
        return {"states": self.states, "fast": self.fast}

    def after_step(self) -> None:
        """theta_fast <- decay theta_fast - fast_lr grad (the gradient the optimiser used)."""
        import torch

        with torch.no_grad():
            for name, p in self.model.named_parameters():
                self.fast[name].mul_(self.fast_decay)
                if p.grad is not None:
                    self.fast[name].sub_(self.fast_lr * p.grad)


ESTIMATOR = Estimator("fpcd", "fast-weights PCD (--option k, n_chains, fast_lr, fast_decay)",
                      FastPCD, data="any")
