"""Categorical units: a hidden vector z[K] that is one-hot (exactly one z[k] = 1).

The units are not independent: with e_k(z_k) the terms of E holding unit k, the state
"category k" has energy sum_j e_j(0) + (e_k(1) - e_k(0)), so
    log Z(v) = -sum_k e_k(0) + logsumexp(k: l[k]),  l[k] = e_k(0) - e_k(1),
P(z[k] = 1 | v) = softmax(l)[k] = exp(l[k] - logsumexp(j: l[j])) (its mean; its variance
p (1 - p)), and a draw picks one category. A mixture model is E(v, z) = sum(k: z[k] *
(energy of component k)).
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import fresh_like, make_sum, substitute_index
from energydsl.compiler.domains.base import Marginal
from energydsl.compiler.domains.discrete import Discrete
from energydsl.compiler.functions import logsumexp
from energydsl.compiler.sympy_functions import softmax_weight


class Categorical(Discrete):
    exclusive = True
    joint_note = "one-hot: one category per sample, from the softmax given {v}."

    def __init__(self, name: str) -> None:
        super().__init__(name, (0, 1))

    def log_partition(self, name: str, h: sp.Symbol, e: sp.Expr, show) -> Marginal:
        """The unit's log-weight l = e(0) - e(1) (and its share of the baseline, -e(0));
        `group_log_partition` combines the units."""
        super().log_partition(name, h, e, show)  # finite and real at 0 and 1
        off, on = e.subs(h, 0), e.subs(h, 1)
        return Marginal(sp.expand(off - on), True, {"baseline": -off})

    def group_log_partition(self, log_z: sp.Expr, coefficients: dict, index: sp.Idx
                            ) -> tuple[sp.Expr, dict]:
        """-sum_k e_k(0) + logsumexp(k: l[k]); the normaliser of the softmax is kept for
        the moments."""
        bound = fresh_like(index, {str(s) for s in log_z.free_symbols} | {str(index)})
        normaliser = logsumexp(substitute_index(log_z, index, bound),
                               [(bound, bound.lower, bound.upper)])
        baseline = make_sum(coefficients.get("baseline", 0), [(index, 0, index.upper)])
        return baseline + normaliser, {**coefficients, "log_normaliser": normaliser,
                                       "log_weight": log_z}

    def moments(self, h, e, coefficients):
        p = softmax_weight(coefficients["log_weight"], coefficients["log_normaliser"])
        return p, p * (1 - p), {"probability": p}

    def draw(self, params):
        probability = params["probability"]
        return [f"category = torch.multinomial({probability}, 1, generator=generator)",
                f"return torch.zeros_like({probability}).scatter_(-1, category, 1.0)"]

    def state_count(self, units: int) -> int:
        return units

    def states(self, units: int, dtype):
        """The K one-hot vectors, each of weight 1."""
        import torch

        from energydsl.compiler.domains.base import Quadrature

        return Quadrature(torch.eye(units, dtype=dtype), torch.zeros(units, dtype=dtype))

    def enumerated(self, flags: str) -> str:
        raise NotImplementedError("categorical units are enumerated by category, not by bit")

    example = "- {h} * {x}"
