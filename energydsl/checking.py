"""`energydsl check`: the generated module against an independent reference.

The reference is the spec's own energy evaluated by `reference.Interpreter`, its
hidden units enumerated or integrated numerically, differentiated by autograd in
float64 (one backward pass per dimension for the Laplacian). Small sizes keep the
enumeration cheap; parameters are drawn at a scale where the nonlinearities matter.
"""

from __future__ import annotations

import hashlib
import sys
import types
from dataclasses import dataclass, field

import torch

from .driver import Compiled
from .reference import check_sizes, reference_free_energy


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


def load_module(source: str, name: str = "energydsl_generated") -> types.ModuleType:
    """Execute generated source as a fresh module, registered in sys.modules under a
    name unique to the source (torch.compile looks modules up there)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    qualified = f"_energydsl_generated.{name}_{digest}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    module = types.ModuleType(qualified)
    exec(compile(source, f"<generated {name}>", "exec"), module.__dict__)  # noqa: S102
    sys.modules[qualified] = module
    return module


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
    """Compare free energy, score, Laplacian, SM loss and its parameter gradients."""
    checked = compiled.derivation.model.symbolic.checked
    sizes = check_sizes(checked, overrides or {})
    model = instantiate(compiled, sizes, seed)
    scalars = {name: const.default for name, const in checked.consts.items()}
    params = {name: getattr(model, name) for name in checked.params}
    generator = torch.Generator().manual_seed(seed + 1)
    dim = sizes[checked.visible.shape[0]]
    v = torch.randn(batch, dim, generator=generator, dtype=torch.float64).requires_grad_(True)

    def reference(x: torch.Tensor) -> torch.Tensor:
        return reference_free_energy(checked, sizes, scalars, params, x)

    report = CheckReport(checked.name, sizes)
    free_energy_ref = reference(v)
    score_ref = -torch.autograd.grad(free_energy_ref.sum(), v, create_graph=True)[0]
    laplacian_ref = torch.stack([
        torch.autograd.grad(score_ref[:, i].sum(), v, create_graph=True)[0][:, i]
        for i in range(dim)], dim=1).sum(dim=1)
    sm_ref = (0.5 * score_ref.square().sum(dim=1) + laplacian_ref).mean()

    def add(quantity: str, value: torch.Tensor, ref: torch.Tensor) -> None:
        report.rows.append(CheckRow(quantity, _relative_error(value, ref), tolerance))

    add("free_energy", model.free_energy(v), free_energy_ref)
    add("score", model.score(v), score_ref)
    add("laplacian", model.laplacian(v), laplacian_ref)
    sm = model.sm_loss(v)
    add("sm_loss", sm, sm_ref)
    names = list(params)
    grads = torch.autograd.grad(sm, [params[n] for n in names], allow_unused=True)
    grads_ref = torch.autograd.grad(sm_ref, [params[n] for n in names], allow_unused=True)
    for name, grad, grad_ref in zip(names, grads, grads_ref, strict=True):
        grad = torch.zeros_like(params[name]) if grad is None else grad
        grad_ref = torch.zeros_like(params[name]) if grad_ref is None else grad_ref
        add(f"d sm_loss / d {name}", grad, grad_ref)
    return report
