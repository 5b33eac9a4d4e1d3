"""The interface every hidden-unit domain implements (see energydsl.compiler.domains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp


class UnitFailure(Exception):
    """A unit energy the domain cannot marginalise: the message says why, in the spec's
    notation; the marginaliser positions it at the unit's use."""


@dataclass(frozen=True)
class Quadrature:
    """Nodes and log-weights (torch tensors) over which `check` sums or integrates one
    unit: sum_k exp(log_weight_k) f(node_k) approximates the sum or integral of f."""

    nodes: Any
    log_weights: Any


@dataclass(frozen=True)
class Marginal:
    """What marginalising one unit gives: log z(v) = log sum/int exp(-e(h; v)) over the
    domain, the condition on constants under which it converges (True: always), and the
    coefficients of e the conditionals need (`Domain.moments`)."""

    log_partition: sp.Expr
    condition: Any = True
    coefficients: dict[str, sp.Expr] | None = None


class Domain:
    """One domain of hidden units. `show(expr)` renders an expression of the unit's
    energy in the spec's notation, for messages."""

    name: str
    assumptions: dict[str, bool] = {"real": True}  # of the symbol standing for a unit
    values: tuple[int, ...] | None = None  # the values of a discrete unit
    takes_generator: bool = True  # its sampler accepts a torch.Generator

    @property
    def discrete(self) -> bool:
        return self.values is not None

    def log_partition(self, name: str, h: sp.Symbol, e: sp.Expr, show) -> Marginal:
        raise NotImplementedError

    def moments(self, h: sp.Symbol, e: sp.Expr, coefficients: dict
                ) -> tuple[sp.Expr, sp.Expr, dict[str, sp.Expr]]:
        """E[h | v], var[h | v] and the sampler's parameters, from the unit energy."""
        raise NotImplementedError

    def draw(self, params: dict[str, str]) -> list[str]:
        """Lines of a generated method drawing the units, given the code of the sampler's
        parameters (`generator` in scope); the last line returns the draw."""
        raise NotImplementedError

    def enumerated(self, flags: str) -> str:
        """Code of the units' values from `flags`, a tensor of 0/1 bits (discrete only)."""
        raise NotImplementedError(f"'{self.name}' units are not enumerable")

    def quadrature(self, dtype) -> Quadrature:
        raise NotImplementedError

    # an example for the conformance test and the docs: one unit's energy, coupled to x
    example: str = "- {h} * {x}"  # spec text, {h} a unit, {x} a real expression
