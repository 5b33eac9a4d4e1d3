"""Stage 5, derive: F(v) -> score, Laplacian and the exact score-matching objective.

With log p~(v) = -F(v), per sample:
    score[p]  = d log p~ / dv[p]        = -dF/dv[p]
    laplacian = sum_p d score[p] / dv[p]
    sm        = sum_p 1/2 score[p]^2 + laplacian      (Hyvarinen 2005, constants kept)
All in index form over a fresh index p; `let`s are differentiated through by the chain
rule and stay named. Derived quantities become named definitions themselves, so the
objective reads `1/2 sum(p: score[p]^2) + laplacian` and the planner computes each once.
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import (
    canonicalise,
    diff,
    make_sum,
    normalise,
)
from energydsl.compiler.algebra import tidy as algebra_tidy
from energydsl.compiler.chain import DEEP, chain_form, nesting_depth
from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.flips import flip_definitions
from energydsl.compiler.ir import Definition, Derivation, FreeEnergyModel


def derive(model: FreeEnergyModel) -> Derivation:
    """Differentiate the free energy symbolically (no autograd, no expansion to scalars)."""
    symbolic = model.symbolic
    visible = symbolic.visible
    dim = symbolic.checked.visible.shape[0]
    p = symbolic.index(dim, "i")
    lookup = symbolic.definition_of


    def tidy(expr: sp.Expr) -> sp.Expr:
        return algebra_tidy(expr, symbolic)

    free_energy = canonicalise(normalise(model.free_energy), symbolic.index_pools,
                               symbolic.symmetric)
    definitions = {**symbolic.definitions, **model.definitions}
    chain = chain_form(model, free_energy, p, tidy) \
        if nesting_depth(model, free_energy) >= DEEP else None
    forward = chain is not None
    if chain is not None:
        score, laplacian = chain.score, chain.laplacian
        definitions.update(chain.definitions)
    else:
        score = tidy(-diff(free_energy, visible, (p,), lookup))
        laplacian = tidy(make_sum(diff(score, visible, (p,), lookup), [(p, 0, p.upper)]))

    score_base = sp.IndexedBase("score", shape=(symbolic.size(dim),), real=True)
    laplacian_symbol = sp.Symbol("laplacian", real=True)
    free_energy_symbol = sp.Symbol("free_energy", real=True)
    definitions["free_energy"] = Definition(free_energy_symbol, (), free_energy)
    definitions["score"] = Definition(score_base, (p,), score)
    definitions["laplacian"] = Definition(laplacian_symbol, (), laplacian)
    sm_objective = make_sum(score_base[p] ** 2, [(p, 0, p.upper)]) / 2 + laplacian_symbol
    definitions["sm_objective"] = Definition(sp.Symbol("sm_objective", real=True), (),
                                             sm_objective)
    domain = DOMAINS[symbolic.checked.visible.domain]
    if domain.discrete:  # binary or spin data: what one flipped entry changes
        definitions.update(flip_definitions(model, free_energy, p, domain.low_high, tidy))
    return Derivation(model, p, free_energy, score, laplacian, sm_objective, definitions,
                      forward, chain.jacobians if chain is not None else ())
