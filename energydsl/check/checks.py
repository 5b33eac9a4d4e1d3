"""`energydsl check`: the generated module against an independent reference.

The reference is the spec's own energy evaluated by `reference.Interpreter`, its
hidden units enumerated or integrated numerically, differentiated by autograd in
float64 (one backward pass per dimension for the Laplacian). Small sizes keep the
enumeration cheap; parameters are drawn at a scale where the nonlinearities matter.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from energydsl.check.autograd import gradient
from energydsl.check.discrete import check_discrete_log_partition, check_discrete_visible, data
from energydsl.check.gaussian import (
    check_enumerated_log_partition,
    check_gaussian,
    check_visible,
)
from energydsl.check.joint import check_energy
from energydsl.check.reference import Reference, check_sizes
from energydsl.compiler.domains import DOMAINS, Domain
from energydsl.compiler.ir import Compiled
from energydsl.compiler.loading import load_module
from energydsl.errors import UsageError, shorten
from energydsl.estimators import all_estimators


@dataclass(frozen=True)
class CheckRow:
    quantity: str
    error: float  # max |generated - reference| / (1 + max |reference|)
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.error <= self.tolerance  # NaN fails


@dataclass
class CheckReport:
    model: str
    sizes: dict[str, int]
    rows: list[CheckRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was not checked, and why

    @property
    def ok(self) -> bool:
        return all(row.ok for row in self.rows)

    def table(self) -> str:
        width = max(len(row.quantity) for row in self.rows)
        lines = [f"  {'quantity'.ljust(width)}  {'rel. error':>10}  {'tolerance':>9}  result"]
        for row in self.rows:
            verdict = "ok" if row.ok else "MISMATCH"
            lines.append(f"  {row.quantity.ljust(width)}  {row.error:10.2e}  "
                         f"{row.tolerance:9.0e}  {verdict}")
        lines += [f"  not checked: {note}" for note in self.notes]
        return "\n".join(lines)




def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach(), reference.detach()
    if value.shape != reference.shape:
        return float("inf")
    scale = 1.0 + reference.abs().max().item()
    return (value - reference).abs().max().item() / scale


def instantiate(compiled: Compiled, sizes: dict[str, int], seed: int,
                scale: float = 0.5) -> torch.nn.Module:
    """The generated model in float64 with parameters ~ N(0, scale^2); its vector
    constants keep the spec's values (a listed one cycled or cut to the check's size)."""
    checked = compiled.derivation.model.symbolic.checked
    module = load_module(compiled.source)
    cls = getattr(module, checked.name)
    kwargs: dict[str, object] = {name: sizes[name] for name, dim in checked.dims.items()
                                 if dim.derived_from is None}
    for const in checked.vector_consts.values():
        if isinstance(const.value, tuple):
            count = sizes[const.shape[0]]
            kwargs[const.name] = [const.value[k % len(const.value)] for k in range(count)]
    model = cls(**kwargs, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator,
                                                dtype=torch.float64))
    return model


def check_compiled(compiled: Compiled, overrides: dict[str, int] | None = None, seed: int = 0,
                   batch: int = 4, tolerance: float = 1e-7,
                   progress: Callable[[str], None] | None = None) -> CheckReport:
    """Compare every derived method of the generated module with the reference;
    `progress` is told the name of each group of checks as it starts."""
    checked = compiled.derivation.model.symbolic.checked
    sizes = check_sizes(checked, overrides or {})
    model = instantiate(compiled, sizes, seed)
    scalars = {name: const.default for name, const in checked.consts.items()}
    params = {name: getattr(model, name) for name in checked.params}
    constants = {name: getattr(model, name) for name in checked.vector_consts}
    reference = Reference(checked, sizes, scalars, params, constants)
    generator = torch.Generator().manual_seed(seed + 1)
    dim = sizes[checked.visible.shape[0]]
    discrete = DOMAINS[checked.visible.domain].discrete
    v = data(checked, dim, batch, generator) if discrete else \
        torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    v.requires_grad_(True)
    report = CheckReport(checked.name, sizes)

    def add(quantity: str, value: torch.Tensor, ref: torch.Tensor) -> None:
        report.rows.append(CheckRow(quantity, _relative_error(value, ref), tolerance))

    def guarded(group: str, work: Callable[[], None]) -> None:
        """A method that raises on valid input is a mismatch, reported as a row."""
        if progress is not None:
            progress(group)
        try:
            work()
        except UsageError:  # the sizes asked for cannot be checked: the user's to change
            raise
        except Exception as exc:  # noqa: BLE001 - the module's failure, not the check's
            report.rows.append(CheckRow(f"{group}: {type(exc).__name__}: "
                                        f"{shorten(str(exc), 70)}", math.inf, tolerance))

    x = v.detach()
    if discrete:  # binary or spin data: no derivatives (flip gains: the estimators' rows)
        guarded("free energy", lambda: add("free_energy", model.free_energy(x),
                                           reference.free_energy(x)))
    else:
        guarded("free energy, score, Laplacian",
                lambda: _check_core(model, reference, v, add))
    if checked.hidden:
        guarded("hidden conditionals",
                lambda: _check_hidden(model, reference, x, add, report, seed))
    if hasattr(model, "energy"):
        guarded("energy", lambda: check_energy(model, reference, x, add, seed))
    if compiled.conditionals.visible is not None:
        guarded("visible conditional",
                lambda: check_visible(model, reference, x, add, report.notes.append, seed))
    if compiled.conditionals.visible_probability is not None:
        guarded("visible conditional",
                lambda: check_discrete_visible(model, reference, x, add, seed))
    if discrete:
        guarded("enumerated normaliser",
                lambda: check_discrete_log_partition(model, reference, x, add))
    elif hasattr(model, "_log_hidden_weights"):
        guarded("enumerated normaliser", lambda: check_enumerated_log_partition(
            model, reference, x, add, report.notes.append))
    if compiled.conditionals.gaussian_precision is not None:
        # NCE uses the exact normaliser: check it where the precision is positive definite
        guarded("Gaussian normaliser", lambda: check_gaussian(
            model, reference, x, add, report.notes.append,
            then=lambda usable: _check_estimators(model, reference, x, add, seed, usable,
                                                 progress)))
    else:
        guarded("estimators", lambda: _check_estimators(model, reference, x, add, seed, True,
                                                         progress))
    return report


def _check_core(model, reference: Reference, v: torch.Tensor, add) -> None:
    """F, its score and Laplacian (autograd, one backward pass per dimension)."""
    dim = v.shape[1]
    free_energy_ref = reference.free_energy(v)
    score_ref = -gradient(free_energy_ref.sum(), v)
    laplacian_ref = torch.stack([gradient(score_ref[:, i].sum(), v)[:, i]
                                 for i in range(dim)], dim=1).sum(dim=1)
    add("free_energy", model.free_energy(v), free_energy_ref)
    add("score", model.score(v), score_ref)
    add("laplacian", model.laplacian(v), laplacian_ref)
    add("reconstruct", model.reconstruct(v), v + score_ref)


def _check_estimators(model, reference: Reference, v: torch.Tensor, add, seed: int,
                      normaliser: bool, progress: Callable[[str], None] | None = None) -> None:
    """Every registered estimator's method against the reference (those that need a
    normaliser only where the model's is usable), each with noise of its own seed."""
    domain = reference.model.visible.domain
    for number, estimator in enumerate(all_estimators()):
        if estimator.check is None or (estimator.needs_normaliser and not normaliser) \
                or not estimator.applies_to(domain):
            continue
        if progress is not None:
            progress(f"estimator {estimator.name}")
        generator = torch.Generator().manual_seed(seed + 5 + number)
        estimator.check(model, reference, v.detach(), add, generator)


def _check_hidden(model, reference: Reference, v: torch.Tensor, add, report, seed: int) -> None:
    """E[h | v] and the score-matching terms, from the posterior over every hidden state."""
    states, posterior = reference.posterior(v)
    for name, state in states.items():
        add(f"mean_{name}", getattr(model, f"mean_{name}")(v), posterior @ state)
        sampler = getattr(model, f"sample_{name}")
        report.rows.append(_sampler_row(
            f"sample_{name}", lambda x, g, sampler=sampler: sampler(x, generator=g), v,
            posterior @ state, posterior @ state.square() - (posterior @ state).square(),
            seed, global_rng=not _domain(reference, name).takes_generator))
    if not hasattr(model, "sm_terms"):
        return
    count = posterior.shape[1]
    pairs = v.repeat_interleave(count, dim=0).requires_grad_(True)
    hidden = {name: state.repeat(v.shape[0], 1) for name, state in states.items()}
    energy = reference.energy(pairs, hidden, paired=True)
    first = gradient(energy.sum(), pairs)
    second = torch.stack([gradient(first[:, i].sum(), pairs).detach()[:, i]
                          for i in range(v.shape[1])], dim=1)
    first = first.detach().reshape(v.shape[0], count, -1)
    second = second.reshape(v.shape[0], count, -1)
    mean = torch.einsum("nc,ncd->nd", posterior, first)
    variance = torch.einsum("nc,ncd->nd", posterior, first.square()) - mean.square()
    expected = {
        "squared_error": (0.5 * mean.square().sum(dim=1)).mean(),
        "variance": variance.sum(dim=1).mean(),
        "curvature": -torch.einsum("nc,ncd->n", posterior, second).mean(),
    }
    terms = model.sm_terms(v)
    for key, value in expected.items():
        add(f"sm_terms[{key}]", terms[key], value)


def _domain(reference: Reference, name: str) -> Domain:
    return DOMAINS[reference.model.hidden[name].domain]


def _sampler_row(quantity: str, draw, v: torch.Tensor, mean: torch.Tensor,
                 variance: torch.Tensor, seed: int, global_rng: bool = False,
                 draws: int = 4000) -> CheckRow:
    """Largest z-score of the mean of `draws` draws against the exact mean (|z| <= 5)."""
    generator = torch.Generator().manual_seed(seed + 3)
    torch.manual_seed(seed + 3)
    samples = draw(v.repeat(draws, 1), None if global_rng else generator).detach()
    average = samples.reshape(draws, *mean.shape).mean(dim=0)
    error = (average - mean.detach()) / (variance.detach().clamp_min(1e-12) / draws).sqrt()
    return CheckRow(f"{quantity} (z, {draws} draws)", error.abs().max().item(), 5.0)
