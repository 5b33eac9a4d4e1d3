"""`energydsl check`: the generated module against an independent reference.

The reference is the spec's own energy evaluated by `reference.Interpreter`, its
hidden units enumerated or integrated numerically, differentiated by autograd in
float64 (one backward pass per dimension for the Laplacian). Small sizes keep the
enumeration cheap; parameters are drawn at a scale where the nonlinearities matter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from energydsl.check.autograd import gradient
from energydsl.check.joint import check_energy, check_enumerated_log_partition
from energydsl.check.reference import Reference, check_sizes
from energydsl.compiler.domains import DOMAINS, Domain
from energydsl.compiler.ir import Compiled
from energydsl.compiler.loading import load_module
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
        return "\n".join(lines)




def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach(), reference.detach()
    if value.shape != reference.shape:
        return float("inf")
    scale = 1.0 + reference.abs().max().item()
    return (value - reference).abs().max().item() / scale


def instantiate(compiled: Compiled, sizes: dict[str, int], seed: int,
                scale: float = 0.5) -> torch.nn.Module:
    """The generated model in float64 with parameters ~ N(0, scale^2)."""
    checked = compiled.derivation.model.symbolic.checked
    module = load_module(compiled.source)
    cls = getattr(module, checked.name)
    kwargs = {name: sizes[name] for name, dim in checked.dims.items() if dim.derived_from is None}
    model = cls(**kwargs, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(scale * torch.randn(parameter.shape, generator=generator,
                                                dtype=torch.float64))
    return model


def check_compiled(compiled: Compiled, overrides: dict[str, int] | None = None, seed: int = 0,
                   batch: int = 4, tolerance: float = 1e-7) -> CheckReport:
    """Compare every derived method of the generated module with the reference."""
    checked = compiled.derivation.model.symbolic.checked
    sizes = check_sizes(checked, overrides or {})
    model = instantiate(compiled, sizes, seed)
    scalars = {name: const.default for name, const in checked.consts.items()}
    params = {name: getattr(model, name) for name in checked.params}
    reference = Reference(checked, sizes, scalars, params)
    generator = torch.Generator().manual_seed(seed + 1)
    dim = sizes[checked.visible.shape[0]]
    v = torch.randn(batch, dim, generator=generator, dtype=torch.float64).requires_grad_(True)
    report = CheckReport(checked.name, sizes)

    def add(quantity: str, value: torch.Tensor, ref: torch.Tensor) -> None:
        report.rows.append(CheckRow(quantity, _relative_error(value, ref), tolerance))

    free_energy_ref = reference.free_energy(v)
    score_ref = -gradient(free_energy_ref.sum(), v)
    laplacian_ref = torch.stack([gradient(score_ref[:, i].sum(), v)[:, i]
                                 for i in range(dim)], dim=1).sum(dim=1)
    add("free_energy", model.free_energy(v), free_energy_ref)
    add("score", model.score(v), score_ref)
    add("laplacian", model.laplacian(v), laplacian_ref)
    add("reconstruct", model.reconstruct(v), v + score_ref)

    x = v.detach()
    if checked.hidden:
        _check_hidden(model, reference, x, add, report, seed)
    if hasattr(model, "energy"):
        check_energy(model, reference, x, add, seed)
    if compiled.conditionals.visible is not None:
        _check_visible(model, reference, x, add, seed)
    if hasattr(model, "_log_hidden_weights"):
        check_enumerated_log_partition(model, reference, x, add)
    if compiled.conditionals.gaussian_precision is not None:
        # NCE uses the exact normaliser: check it where the precision is positive definite
        _check_gaussian(model, reference, x, add, then=lambda usable: _check_estimators(
            model, reference, x, add, seed, usable))
    else:
        _check_estimators(model, reference, x, add, seed, True)
    return report


def _check_estimators(model, reference: Reference, v: torch.Tensor, add, seed: int,
                      normaliser: bool) -> None:
    """Every registered estimator's method against the reference (those that need a
    normaliser only where the model's is usable), each with noise of its own seed."""
    for number, estimator in enumerate(all_estimators()):
        if estimator.check is None or (estimator.needs_normaliser and not normaliser):
            continue
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


def _check_visible(model, reference: Reference, v: torch.Tensor, add, seed: int) -> None:
    """E[v | h]: E is quadratic in v, so the mean is one Newton step from 0 (autograd)."""
    checked = reference.model
    generator = torch.Generator().manual_seed(seed + 2)
    hidden = {name: getattr(model, f"sample_{name}")(v, generator=generator)
              if _domain(reference, name).takes_generator
              else getattr(model, f"mean_{name}")(v) for name in checked.hidden}
    dim = v.shape[1]
    means = []
    for n in range(v.shape[0]):
        row = {name: state[n:n + 1] for name, state in hidden.items()}

        def energy(x: torch.Tensor, row=row) -> torch.Tensor:
            return reference.energy(x[None, :], row, paired=True)[0]

        zero = torch.zeros(dim, dtype=v.dtype)
        hessian = torch.autograd.functional.hessian(energy, zero)
        gradient = torch.autograd.functional.jacobian(energy, zero)
        means.append(-torch.linalg.solve(hessian, gradient))
    name = checked.visible.name
    args = [hidden[h] for h in checked.hidden]
    add(f"mean_{name}", getattr(model, f"mean_{name}")(*args), torch.stack(means))


def _check_gaussian(model, reference: Reference, v: torch.Tensor, add, then) -> None:
    """log Z of a quadratic F from its autograd Hessian and gradient at 0. Where the
    random parameters make the precision indefinite, the module must refuse; the values
    are then checked, and `then(True)` run, at parameters shrunk until the model is
    normalisable; `then(False)` (no NCE) when no shrinking makes it so."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    try:
        for _ in range(8):
            definiteness = _definiteness(reference, v.shape[1], v.dtype)
            if definiteness == "positive":
                _gaussian_rows(model, reference, v, add)
                then(True)
                return
            if definiteness == "indefinite":  # singular to rounding may go either way
                try:
                    model.log_partition()
                    refused = False
                except ValueError:
                    refused = True
                add("log_partition refuses an indefinite precision",
                    torch.tensor(0.0 if refused else 1.0), torch.tensor(0.0))
            if not params:
                break
            with torch.no_grad():
                for p in params:
                    p.mul_(0.5)
        # singular at every scale (F = (sum v)^2, or no parameters to shrink): no
        # normaliser to check, nor NCE, which needs it
        then(False)
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)


def _definiteness(reference: Reference, dim: int, dtype: torch.dtype) -> str:
    """'positive' (well enough conditioned that log det agrees to the check's tolerance),
    'indefinite' (the module must refuse), or 'singular': the least eigenvalue of the
    autograd Hessian within rounding of zero, or so small that log det is inaccurate,
    where a Cholesky factorisation may succeed or fail and neither is wrong."""
    zero = torch.zeros(dim, dtype=dtype)
    hessian = torch.autograd.functional.hessian(
        lambda x: reference.free_energy(x[None, :])[0], zero)
    values = torch.linalg.eigvalsh(hessian)
    eps, largest, least = torch.finfo(dtype).eps, float(values.abs().max()), float(values.min())
    if least > dim * math.sqrt(eps) * largest:
        return "positive"
    return "indefinite" if least < -dim * eps * largest else "singular"


def _gaussian_rows(model, reference: Reference, v: torch.Tensor, add) -> None:
    dim = v.shape[1]
    zero = torch.zeros(dim, dtype=v.dtype)

    def free_energy(x: torch.Tensor) -> torch.Tensor:
        return reference.free_energy(x[None, :])[0]

    hessian = torch.autograd.functional.hessian(free_energy, zero)
    linear = -torch.autograd.functional.jacobian(free_energy, zero)
    _, logdet = torch.linalg.slogdet(hessian)
    log_z = (-free_energy(zero) + 0.5 * linear @ torch.linalg.solve(hessian, linear)
             + 0.5 * dim * math.log(2 * math.pi) - 0.5 * logdet)
    add("log_partition", model.log_partition(), log_z)
    add("log_prob", model.log_prob(v), -reference.free_energy(v) - log_z)


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
