"""The interface every hidden-unit domain implements (see energydsl.compiler.domains)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sympy as sp

from energydsl.compiler.algebra import make_sum


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
    exclusive: bool = False  # the units are one-hot (categorical), not independent
    couples: bool = False  # units coupled to each other are integrated jointly (Gaussian)
    joint_note: str = "units are independent given {v}."  # sample_<h>'s docstring says

    @property
    def discrete(self) -> bool:
        return self.values is not None

    @property
    def low_high(self) -> tuple[int, int]:
        """The two values of a two-valued domain (binary, spin): data entries flip
        between them."""
        if self.values is None or len(self.values) != 2:
            raise ValueError(f"'{self.name}' units do not take two values")
        return self.values[0], self.values[1]

    def log_partition(self, name: str, h: sp.Symbol, e: sp.Expr, show) -> Marginal:
        raise NotImplementedError

    def group_log_partition(self, log_z: sp.Expr, coefficients: dict, index: sp.Idx
                            ) -> tuple[sp.Expr, dict]:
        """log of the sum/integral over the whole variable, from one generic unit's log z
        (free index `index`), and the coefficients `moments` will get: independent units
        multiply, so the logs add up."""
        return make_sum(log_z, [(index, 0, index.upper)]), coefficients

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

    def state_count(self, units: int) -> int:
        """How many joint states (or quadrature nodes) `states` has for `units` units."""
        return len(self.quadrature(None).nodes) ** units

    def states(self, units: int, dtype) -> Quadrature:
        """Every joint state of `units` units ([S, units] nodes, [S] log-weights), over
        which `check` sums or integrates: the grid of the per-unit quadrature."""
        import torch

        quad = self.quadrature(dtype)
        if units == 0:
            return Quadrature(torch.zeros(1, 0, dtype=dtype), torch.zeros(1, dtype=dtype))
        grids = torch.meshgrid(*[quad.nodes] * units, indexing="ij")
        weights = torch.meshgrid(*[quad.log_weights] * units, indexing="ij")
        return Quadrature(torch.stack([g.reshape(-1) for g in grids], dim=1),
                          sum(w.reshape(-1) for w in weights))

    # an example for the conformance test and the docs: one unit's energy, coupled to x
    example: str = "- {h} * {x}"  # spec text, {h} a unit, {x} a real expression
