"""The planner's rewrites of a sum of products, each an identity stated in its docstring.

They change how a value is computed, never what: every one is exact. Which of two
equivalent forms is planned is decided by the cost model (`Planner.cost_of`), and where
an alternative is weighed against steps planned already, `Planner.weighing` says which
of those come for free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp

from energydsl.compiler.algebra import make_sum, substitute_index
from energydsl.compiler.notation import dsl_str
from energydsl.compiler.plan.keys import LETTERS, all_indices, free_indices, pair_key
from energydsl.compiler.plan.program import BATCH, Operand
from energydsl.compiler.plan.torch_steps import natural_order

if TYPE_CHECKING:
    from energydsl.compiler.plan.planner import Planner

Pair = tuple[Operand, sp.Expr]  # an operand and the formula it computes


def group_elementwise(planner: Planner, factors: list) -> list:
    """Factors over the same axes multiply elementwise (one step, not an einsum
    operand each): sigmoid(a) (1 - sigmoid(a)) W^2 -> [sigmoid(a) (1 - sigmoid(a))] W^2."""
    groups: dict[tuple, list] = {}
    for factor in factors:
        groups.setdefault(tuple(sorted(map(str, planner.indices_of(factor)))), []).append(factor)
    return [sp.Mul(*group) if len(group) > 1 else group[0] for group in groups.values()]


def nest_private_indices(planner: Planner, factors: list, output: tuple) -> list:
    """sum_{k,j} A_j B_kj = sum_j A_j (sum_k B_kj): an index that only one factor
    carries is summed inside that factor first, so the reduction is shared (column
    norms, V V^T) and never repeated per contraction."""
    changed = True
    while changed:
        changed = False
        for k, factor in enumerate(factors):
            others = set().union(*(planner.indices_of(f) for j, f in enumerate(factors)
                                   if j != k)) if len(factors) > 1 else set()
            private = [i for i in planner.indices_of(factor)
                       if i != BATCH and i not in others and i not in output]
            if private and len(factors) > 1:
                factors = factors[:k] + [sp.Sum(factor, *[(i, i.lower, i.upper)
                                                         for i in private])] + factors[k + 1:]
                changed = True
                break
    return factors


def size_of_missing_axes(summed: list, carried: set, nested: set) -> sp.Expr:
    """sum_j f = (size of j) f when no factor's value depends on j: the product of the
    sizes of the summed indices that no operand carries (those nested into a factor's
    own sum are summed there)."""
    scale = sp.S.One
    for index in dict.fromkeys(summed):
        if index not in carried and index not in nested:
            scale = scale * (index.upper - index.lower + 1)
    return scale


def split_scalars(planner: Planner, factors) -> tuple[list, list]:
    """The factors that are plain numbers or constants (no tensor, no index), and the rest."""
    scalars = [f for f in factors if not planner.has_tensor(f) and not free_indices(f)]
    rest = [f for f in factors if f not in scalars or free_indices(f)]
    return scalars, rest


def mergeable(factor: sp.Expr) -> list[sp.Sum] | None:
    """A nested sum, or a squared one as two copies, that could join the outer product."""
    if isinstance(factor, sp.Sum):
        return [factor]
    if isinstance(factor, sp.Pow) and factor.exp == 2 and isinstance(factor.base, sp.Sum):
        return [factor.base, factor.base]
    return None


def merge_nested_sums(planner: Planner, expr: sp.Sum) -> tuple[list, list, list]:
    """sum_k a_k (sum_h b_kh c_h) = sum_{k,h} a_k b_kh c_h, where cheaper: the factors of
    a sum of products with nested sums merged in (their bound indices renamed apart),
    as (scalars, factors, summed indices). A nest is tried merged one level and all
    levels deep: (sum_k s_k sum_h c_kh V_hj)^2 only pays off once both levels join
    (then V V^T appears)."""
    scalars, factors = split_scalars(planner, sp.Mul.make_args(expr.function))
    summed = [limit[0] for limit in expr.limits]
    changed = True
    while changed:
        changed = False
        for k, factor in enumerate(factors):
            inner = mergeable(factor)
            if inner is None:
                continue
            merged = _merged_factors(planner, inner, factors, summed)
            if merged is None:
                continue
            options = [merged]
            deep = _merge_deep(planner, *merged, factors, summed)
            if deep[1] != merged[1]:
                options.append(deep)
            current = best = planner.cost_of(factors, expr) + planner.nested_cost(factor)
            for new_scalars, new_factors, new_summed in options:
                candidate = factors[:k] + new_factors + factors[k + 1:]
                nests = {planner.value_key(f)[0]: f for f in new_factors if mergeable(f)}
                cost = planner.cost_of(candidate, expr) + sum(
                    planner.nested_cost(f) for f in nests.values())  # copies count once
                if cost < best:
                    best, choice = cost, (new_scalars, candidate, new_summed)
            if best < current:
                new_scalars, factors, new_summed = choice
                scalars, summed = scalars + new_scalars, summed + new_summed
                changed = True
                break
    return scalars, factors, summed


def _merge_deep(planner: Planner, scalars: list, factors: list, summed: list, context: list,
                context_summed: list) -> tuple[list, list, list]:
    """`factors` with every nested sum among them merged in too (no cost check)."""
    changed = True
    while changed:
        changed = False
        for k, factor in enumerate(factors):
            inner = mergeable(factor)
            merged = None if inner is None else _merged_factors(
                planner, inner, context + factors, context_summed + summed)
            if merged is not None:
                scalars = scalars + merged[0]
                factors = factors[:k] + merged[1] + factors[k + 1:]
                summed = summed + merged[2]
                changed = True
                break
    return scalars, factors, summed


def _merged_factors(planner: Planner, inner: list[sp.Sum], context: list, summed: list
                    ) -> tuple[list, list, list] | None:
    """The factors of a product of sums, with bound indices renamed apart."""
    taken = {str(i) for f in context for i in all_indices(f)} | {str(i) for i in summed}
    scalars, factors, new_summed = [], [], []
    for term in inner:
        body, limits = term.function, []
        for index, lo, hi in term.limits:
            fresh = index
            if str(index) in taken:
                base = str(index.label).rstrip("0123456789")
                k = 1
                while f"{base}{k}" in taken:
                    k += 1
                fresh = sp.Idx(f"{base}{k}", (lo, hi))
                body = substitute_index(body, index, fresh)
            taken.add(str(fresh))
            limits.append(fresh)
        if isinstance(body, sp.Add):
            return None
        s, f = split_scalars(planner, sp.Mul.make_args(body))
        scalars += s
        factors += f
        new_summed += limits
    return scalars, factors, new_summed


def square_terms(planner: Planner, expr: sp.Expr) -> list[sp.Expr] | None:
    """For sum_p D[p]^2 with D a definition whose body is a sum of terms T_m (the
    score in the SM objective): the terms T_m[p]; else None."""
    if not (isinstance(expr, sp.Sum) and len(expr.limits) == 1):
        return None
    body = expr.function
    if not (isinstance(body, sp.Pow) and body.exp == 2 and isinstance(body.base, sp.Indexed)):
        return None
    label = str(body.base.base.label)
    definition = planner.definitions.get(label)
    if definition is None or definition.base != body.base.base \
            or not isinstance(definition.body, sp.Add):
        return None
    terms = []
    for term in definition.body.args:
        for formal, actual in zip(definition.indices, body.base.indices, strict=True):
            term = substitute_index(term, formal, actual)
        terms.append(term)
    return terms


def square_of_sum(planner: Planner, expr: sp.Sum, given: set[str]) -> Operand:
    """sum_p (sum_m T_m[p])^2 = sum_{m <= m'} c_mm' sum_p T_m[p] T_m'[p] (c = 1 on the
    diagonal, 2 off it), planned in whichever of the two forms costs less beside the
    steps in `given`: the inner sum formed ([N, D] for the score) and squared, or
    expanded, each product of two sums one contraction for opt_einsum to order:
    |W s - v|^2 = s^T (W^T W) s - 2 a.s + |v|^2 never forms the [N, D] score (Swersky
    et al.'s and the GUIDE's reorder)."""
    key, to_placeholder = planner.value_key(expr)
    if key in planner.squares:  # decided before (another method's body)
        return planner.squares[key].relabel({p: i for i, p in to_placeholder.items()})
    terms = square_terms(planner, expr)
    assert terms is not None
    (index, lower, upper), = expr.limits
    formed = planner.operand(expr)
    pieces = [make_sum((1 if a == b else 2) * terms[a] * terms[b], [(index, lower, upper)])
              for a in range(len(terms)) for b in range(a, len(terms))]
    with planner.weighing(given):
        expanded = planner.operand(sp.Add(*pieces))
    if not expanded.is_tensor or set(expanded.indices) != set(formed.indices):
        planner.squares[key] = formed.relabel(to_placeholder)
        return formed
    cheaper = planner.program.cost([expanded.code], given) < planner.program.cost(
        [formed.code], given)
    chosen = expanded if cheaper else formed
    planner.squares[key] = chosen.relabel(to_placeholder)
    return chosen


def reuse_pairs(planner: Planner, current: list[Pair], output: tuple) -> list[Pair]:
    """sum_{k,j} v_k W_kj s_j = sum_j a_j s_j with a_j = sum_k v_k W_kj planned already:
    contract first any two operands whose product (summed over the indices no other
    operand needs) is computed and free, which opt_einsum cannot know costs nothing."""
    letters: dict = {}
    for op, _ in current:
        for index in op.indices:
            letters.setdefault(index, LETTERS[len(letters)])
    found = True
    while found and len(current) > 2:
        found = False
        for a in range(len(current)):
            for b in range(a + 1, len(current)):
                (x, fx), (y, fy) = current[a], current[b]
                others = set(output).union(*(op.indices for k, (op, _) in
                                             enumerate(current) if k not in (a, b)))
                kept = [i for i in dict.fromkeys(x.indices + y.indices) if i in others]
                if len(kept) == len(set(x.indices + y.indices)):
                    continue  # an outer product: reusing it saves little, costs layout
                inputs = ",".join("".join(letters[i] for i in op.indices) for op in (x, y))
                out_letters = natural_order(inputs, "".join(letters[i] for i in kept))
                known = planner.pairs.get(pair_key([x.code, y.code], inputs, out_letters)[0])
                if known is None or not planner.is_free_step(known[0]):
                    continue  # not computed, or not free where alternatives are weighed
                removed = set(x.indices + y.indices) - set(kept) - {BATCH}
                formula = make_sum(fx * fy, [(i, i.lower, i.upper)
                                             for i in sorted(removed, key=str)])
                by_letter = {letters[i]: i for i in letters}
                result = planner.pairwise([x, y], inputs, out_letters,
                                          tuple(by_letter[c] for c in out_letters),
                                          dsl_str(formula), None)
                current = [c for k, c in enumerate(current) if k not in (a, b)]
                current.append((result, formula))
                found = True
                break
            if found:
                break
    return current
