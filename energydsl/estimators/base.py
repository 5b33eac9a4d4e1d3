"""What an estimator is (see energydsl.estimators) and the interface of its objective."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor, nn


class Objective:
    """A training objective: `loss(x)` is minimised, `after_step()` runs after each
    optimiser step (only fast-weights PCD uses it), `state_dict()` is what a checkpoint
    keeps besides the model (persistent chains, fast weights)."""

    name = "objective"

    def __init__(self, model: nn.Module) -> None:
        self.model: Any = model  # a compiled module: its methods are generated

    def loss(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after each optimiser step."""

    def state_dict(self) -> dict[str, object]:
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Restore what state_dict() saved: the same keys, tensors (or None) only."""
        import torch

        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(f"expected the estimator state {sorted(expected)}, "
                             f"found {sorted(state)}")
        for key, value in state.items():
            values = value.values() if isinstance(value, dict) else [value]
            if not all(v is None or isinstance(v, torch.Tensor) for v in values):
                raise ValueError(f"the estimator state '{key}' holds a non-tensor")
            setattr(self, key, value)

    def __call__(self, x: Tensor) -> Tensor:
        return self.loss(x)


# check(model, reference, v, add, generator): compare the module's method with the
# reference at v, calling add(quantity, value, expected) for each row
Check = Callable[..., None]


@dataclass(frozen=True)
class Estimator:
    """One estimator (see energydsl.estimators)."""

    name: str
    summary: str  # one line, for --help and the docs
    objective: type[Objective]
    method: str | None = None  # the generated module's method it trains through
    template: str | None = None  # the partial in templates/ that emits `method`
    check: Check | None = None  # verifies `method` against the reference
    needs: str = "free_energy"  # the model method it cannot do without
    needs_normaliser: bool = False  # its check needs a usable log Z (Gaussian models)
    data: str = "continuous"  # the data it applies to: continuous, discrete or any

    def applies_to(self, visible_domain: str) -> bool:
        """Whether it applies to data of this domain (real, binary, spin)."""
        from energydsl.compiler.domains import DOMAINS

        discrete = DOMAINS[visible_domain].discrete
        return self.data == "any" or (self.data == "discrete") == discrete

    def options(self) -> dict[str, type]:
        """The options that take a number (what `--option NAME=X` may set), each with its
        type (int or float), read from the objective's constructor."""
        found: dict[str, type] = {}
        for parameter in inspect.signature(self.objective.__init__).parameters.values():
            annotation = str(parameter.annotation)
            if parameter.default is parameter.empty or "Tensor" in annotation:
                continue
            if annotation.startswith("int"):
                found[parameter.name] = int
            elif annotation.startswith("float"):
                found[parameter.name] = float
        return found

    def make(self, model: Any, **options: Any) -> Objective:
        """The objective for `model` (a TypeError if the model lacks what it needs)."""
        from energydsl.compiler.domains import visible_domain

        domain = visible_domain(model).name
        if hasattr(model, "free_energy") and not self.applies_to(domain):
            from energydsl.estimators import all_estimators

            usable = [e.name for e in all_estimators() if e.applies_to(domain)]
            kind = "continuous" if self.data == "continuous" else "discrete (binary or spin)"
            raise TypeError(f"objective {self.name!r} applies to {kind} data, and "
                            f"{type(model).__name__}'s are {domain}; use one of "
                            f"{', '.join(usable)}")
        if not hasattr(model, self.needs):
            raise TypeError(f"{type(model).__name__} has no {self.needs}: objective "
                            f"{self.name!r} applies to compiled energy models")
        return self.objective(model, **options)
