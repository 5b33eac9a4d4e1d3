"""Estimators: one registry, read by the emitter, the training loop, the CLI and `check`.

Each estimator is one module here, named as the estimator, whose `ESTIMATOR` says:
- the training objective (`objective`: a class with `loss(x)`, `after_step()`, state);
- the method it trains through: a method the generated module carries (`method`), emitted
  from its Jinja partial in templates/ (`template`; None where the compiler plans the
  method itself, as `sm_loss`), or an existing one (`needs`: free_energy, log_prob);
- how `check` verifies that method against the independent reference (`check`).
Adding an estimator is one module here (and its partial) and its name in NAMES;
tests/estimators/test_registry.py, the registry's conformance test, checks every part.
Nothing here imports torch until it is used, so the CLI lists the names at once and the
compiler reads the methods' names without torch.
"""

from __future__ import annotations

import importlib

from energydsl.estimators.base import Estimator, Objective

NAMES = ("sm", "dsm", "ssm", "nce", "cnce", "cd", "pcd", "fpcd", "mle", "rm", "pl")
"""Every estimator, in the order the CLI and the generated module list them."""


def get(name: str) -> Estimator:
    """The estimator registered as `name` (ValueError naming the valid ones)."""
    if name not in NAMES:
        raise ValueError(f"unknown objective {name!r}; choose one of {', '.join(NAMES)}")
    return importlib.import_module(f"energydsl.estimators.{name}").ESTIMATOR


def all_estimators() -> list[Estimator]:
    return [get(name) for name in NAMES]


def default_objective(model) -> str:
    """The objective a run uses when none is named: exact score matching on real data,
    the exact pseudo-likelihood on binary or spin data (which has no score); both are
    deterministic and need no sampler."""
    from energydsl.compiler.domains import visible_domain

    return "pl" if visible_domain(model).discrete else "sm"


def make_objective(model, name: str, **options) -> Objective:
    """The training objective `name` for `model`, with its options."""
    return get(name).make(model, **options)


__all__ = ["NAMES", "Estimator", "Objective", "all_estimators", "default_objective", "get",
           "make_objective"]
