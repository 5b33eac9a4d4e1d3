"""Units taking two values a < b: binary {0, 1} and spin {-1, +1}.

With p = P(h = b | v) = sigmoid(e(a) - e(b)): log z = -e(a) + softplus(e(a) - e(b))
(stable in float32), E[h] = a + (b - a) p, var[h] = (b - a)^2 p (1 - p), and a draw is
a + (b - a) Bernoulli(p).
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import REDUCTIONS
from energydsl.compiler.domains.base import Domain, Marginal, Quadrature, UnitFailure
from energydsl.compiler.functions import sigmoid, softplus
from energydsl.compiler.lower import UNDEFINED


def _affine(code: str, low: int, high: int) -> str:
    """Code of low + (high - low) * code, written as a person would."""
    scale = f"{high - low} * " if high - low != 1 else ""
    offset = f" + {low}" if low > 0 else f" - {-low}" if low < 0 else ""
    return f"{scale}{code}{offset}"


def factored(expr: sp.Expr) -> sp.Expr:
    """sp.factor with sums and tensor entries held as opaque symbols (small and fast):
    p - p^2 -> p (1 - p)."""
    held: dict[sp.Expr, sp.Dummy] = {}

    def hold(node: sp.Expr) -> sp.Expr:
        if isinstance(node, (sp.Indexed, *REDUCTIONS)):
            return held.setdefault(node, sp.Dummy("x", real=True))
        if not node.args:
            return node
        return node.func(*[hold(a) for a in node.args])

    return sp.factor(hold(expr)).xreplace({d: a for a, d in held.items()})


class Discrete(Domain):
    values: tuple[int, int]

    def __init__(self, name: str, values: tuple[int, int]) -> None:
        self.name = name
        self.values = values

    def log_partition(self, name: str, h: sp.Symbol, e: sp.Expr, show) -> Marginal:
        low, high = self.values
        for value in (low, high):
            at = e.subs(h, value)
            if at.has(*UNDEFINED, sp.I) or at.is_extended_real is False:
                raise UnitFailure(
                    f"the energy is not finite and real at {name} = {value}, a value of the "
                    f"{self.name} unit: its terms in {name} are {show(e)} (a division by "
                    "zero, or log or sqrt outside its domain)")
        first, second = e.subs(h, low), e.subs(h, high)
        return Marginal(-first + softplus(sp.expand(first - second)))

    def moments(self, h, e, coefficients):
        low, high = self.values
        p = sigmoid(sp.expand(e.subs(h, low) - e.subs(h, high)))
        return (low + (high - low) * p, factored((high - low) ** 2 * (p - p**2)),
                {"probability": p})

    def draw(self, params):
        low, high = self.values
        draw = f"torch.bernoulli({params['probability']}, generator=generator)"
        return [f"return {_affine(draw, low, high)}"]

    def enumerated(self, flags: str) -> str:
        return _affine(flags, *self.values)

    def quadrature(self, dtype) -> Quadrature:
        import torch

        nodes = torch.tensor(self.values, dtype=dtype)
        return Quadrature(nodes, torch.zeros_like(nodes))
