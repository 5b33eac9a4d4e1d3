"""Training objectives for any compiled energy model, by name, behind one interface.

Each objective is an object with `loss(x) -> scalar` (minimised by the optimiser) and
`after_step()` (called after each optimiser step; only fast-weights PCD uses it).

- sm, dsm, ssm, nce, cnce: the generated module's own methods (derived closed forms).
- mle: -mean log p(x) for models with an exact normaliser (Gaussians, small RBMs).
- cd, pcd, fpcd: contrastive divergence (Hinton 2002), persistent CD (Tieleman 2008) and
  fast-weights PCD (Tieleman and Hinton 2009). Their loss is the surrogate
  mean F(x) - mean F(x-) with the negatives x- drawn by MCMC and held fixed (no gradient
  through the sampler), so its gradient is the CD estimate of the negative log-likelihood
  gradient. The sampler is block Gibbs on the derived conditionals where the model has
  them, MALA on the derived score otherwise (see `energydsl.train.sampling`).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from energydsl.train.sampling import Sampler

OBJECTIVES = ("sm", "dsm", "ssm", "nce", "cnce", "cd", "pcd", "fpcd", "mle")


class Objective:
    """The interface: `loss(x)` and `after_step()`; `name` for logs."""

    name = "objective"

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def loss(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint must keep besides the model (persistent chains, ...)."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what state_dict() saved: the same keys, tensors (or None) only."""
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"expected the estimator state {sorted(expected)}, "
                             f"found {sorted(state)}")
        for key, value in state.items():
            values = value.values() if isinstance(value, dict) else [value]
            if not all(v is None or isinstance(v, Tensor) for v in values):
                raise ValueError(f"the estimator state '{key}' holds a non-tensor")
            setattr(self, key, value)

    def __call__(self, x: Tensor) -> Tensor:
        return self.loss(x)


class ScoreMatching(Objective):
    name = "sm"

    def loss(self, x: Tensor) -> Tensor:
        return self.model.sm_loss(x)


class DenoisingScoreMatching(Objective):
    name = "dsm"

    def __init__(self, model: nn.Module, noise_std: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.noise_std, self.generator = noise_std, generator

    def loss(self, x: Tensor) -> Tensor:
        return self.model.dsm_loss(x, self.noise_std, generator=self.generator)


class SlicedScoreMatching(Objective):
    name = "ssm"

    def __init__(self, model: nn.Module, n_projections: int = 1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.n_projections, self.generator = n_projections, generator

    def loss(self, x: Tensor) -> Tensor:
        return self.model.ssm_loss(x, self.n_projections, generator=self.generator)


def gaussian_noise(x: Tensor, ridge: float = 1e-3) -> torch.distributions.MultivariateNormal:
    """A Gaussian with the data's mean and empirical covariance (seed 000's NCE noise), a
    small ridge keeping it positive definite when pixels are constant."""
    mean = x.mean(dim=0)
    centred = x - mean
    covariance = centred.T @ centred / max(x.shape[0] - 1, 1)
    covariance = covariance + ridge * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    return torch.distributions.MultivariateNormal(mean, covariance)


class NoiseContrastive(Objective):
    """NCE with `noise` (any Distribution); by default fitted to the first batch seen."""

    name = "nce"

    def __init__(self, model: nn.Module, noise: torch.distributions.Distribution | None = None,
                 nu: float = 1.0) -> None:
        super().__init__(model)
        self.noise, self.nu = noise, nu

    def loss(self, x: Tensor) -> Tensor:
        if self.noise is None:
            self.noise = gaussian_noise(x.detach())
        return self.model.nce_loss(x, self.noise, self.nu)


class ConditionalNCE(Objective):
    name = "cnce"

    def __init__(self, model: nn.Module, noise_std: float = 0.1, k: int = 1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        self.noise_std, self.k, self.generator = noise_std, k, generator

    def loss(self, x: Tensor) -> Tensor:
        return self.model.cnce_loss(x, self.noise_std, self.k, generator=self.generator)


class MaximumLikelihood(Objective):
    name = "mle"

    def __init__(self, model: nn.Module) -> None:
        if not hasattr(model, "log_prob"):
            raise TypeError(f"{type(model).__name__} has no exact log_prob: maximum "
                            "likelihood needs a normalised model (use cd/pcd or nce)")
        super().__init__(model)

    def loss(self, x: Tensor) -> Tensor:
        return -self.model.log_prob(x).mean()


class ContrastiveDivergence(Objective):
    """CD-k: negatives start at the data and take k sampler steps under the current model."""

    name = "cd"

    def __init__(self, model: nn.Module, k: int = 1, method: str = "auto",
                 step_size: float | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model)
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be a positive integer, got {k!r}")
        self.k, self.generator = k, generator
        self.sampler = Sampler(model, method, step_size=step_size, adapt=False)

    def negatives(self, x: Tensor) -> Tensor:
        return self.sampler(x.detach(), self.k, self.generator)

    def loss(self, x: Tensor) -> Tensor:
        negatives = self.negatives(x).detach()
        return self.model.free_energy(x).mean() - self.model.free_energy(negatives).mean()


class PersistentCD(ContrastiveDivergence):
    """PCD: the negatives are persistent chains carried from one update to the next,
    started from N(0, I) (or `init`); `n_chains` defaults to the batch size."""

    name = "pcd"

    def __init__(self, model: nn.Module, k: int = 1, n_chains: int | None = None,
                 method: str = "auto", step_size: float | None = None,
                 init: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model, k, method, step_size, generator)
        self.n_chains = n_chains
        self.states = None if init is None else init.detach().clone()

    def _start(self, x: Tensor) -> Tensor:
        if self.states is None:
            count = self.n_chains or x.shape[0]
            self.states = torch.randn((count, x.shape[1]), generator=self.generator,
                                      dtype=x.dtype, device=x.device)
        return self.states

    def negatives(self, x: Tensor) -> Tensor:
        self.states = self.sampler(self._start(x), self.k, self.generator)
        return self.states

    def state_dict(self) -> dict[str, object]:
        return {"states": self.states}


class FastPCD(PersistentCD):
    """Fast-weights PCD (Tieleman and Hinton 2009): the chains sample from the model with
    parameters theta + theta_fast, where theta_fast follows the same gradient at a larger
    learning rate and decays (by 19/20 per step) so the chains keep moving."""

    name = "fpcd"

    def __init__(self, model: nn.Module, k: int = 1, n_chains: int | None = None,
                 fast_lr: float = 1e-2, fast_decay: float = 0.95, method: str = "auto",
                 step_size: float | None = None, init: Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__(model, k, n_chains, method, step_size, init, generator)
        if not (fast_lr > 0 and 0 <= fast_decay < 1):
            raise ValueError(f"need fast_lr > 0 and 0 <= fast_decay < 1, "
                             f"got {fast_lr!r}, {fast_decay!r}")
        self.fast_lr, self.fast_decay = fast_lr, fast_decay
        self.fast = {name: torch.zeros_like(p) for name, p in model.named_parameters()}

    def negatives(self, x: Tensor) -> Tensor:
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
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                self.fast[name].mul_(self.fast_decay)
                if p.grad is not None:
                    self.fast[name].sub_(self.fast_lr * p.grad)


CLASSES: dict[str, type[Objective]] = {
    "sm": ScoreMatching, "dsm": DenoisingScoreMatching, "ssm": SlicedScoreMatching,
    "nce": NoiseContrastive, "cnce": ConditionalNCE, "cd": ContrastiveDivergence,
    "pcd": PersistentCD, "fpcd": FastPCD, "mle": MaximumLikelihood,
}


def numeric_options(name: str) -> dict[str, type]:
    """The options of objective `name` that take a number (what `--option NAME=X` may
    set), each with its type (int or float), read from the constructor's signature."""
    found: dict[str, type] = {}
    for parameter in inspect.signature(CLASSES[name].__init__).parameters.values():
        annotation = str(parameter.annotation)
        if parameter.default is parameter.empty or "Tensor" in annotation:
            continue
        if annotation.startswith("int"):
            found[parameter.name] = int
        elif annotation.startswith("float"):
            found[parameter.name] = float
    return found


def make_objective(model: nn.Module, name: str, **options: object) -> Objective:
    """The objective `name` (one of OBJECTIVES) for `model`, with its options."""
    if name not in CLASSES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    needed = {"sm": "sm_loss", "dsm": "dsm_loss", "ssm": "ssm_loss", "nce": "nce_loss",
              "cnce": "cnce_loss"}.get(name, "free_energy")
    if not hasattr(model, needed):
        raise TypeError(f"{type(model).__name__} has no {needed}: objective {name!r} "
                        "applies to compiled energy models")
    return CLASSES[name](model, **options)

