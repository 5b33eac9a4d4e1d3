"""Sums over a pair of indices of a summand symmetric in them, over each pair once.

    sum(a, b: X[.., a, b] Y[.., a, b]) = sum({a, b}: w_ab X_ab Y_ab),   w = 2 - delta(a, b)

for X and Y both symmetric in (a, b) (a and b over one range): one matrix product over
the (size // 2 + 1) * size entries of `_circulant_layout` instead of size^2, half the
multiply-adds forward and backward. Each operand enters as rows [R, entries]:
- an outer square v[.., a] v[.., b], optionally times a symmetric M[a, b] or M[.., a, b],
  straight from v by strided views (`_circulant_pairs`): no [.., a, b] tensor is formed
  and nothing is gathered or, backward, scattered;
- any other operand is formed and its layout's entries gathered (`index_select`).
The weights go to the operand without the batch, in a step of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import sympy as sp

from energydsl.compiler.notation import dsl_str
from energydsl.compiler.plan.keys import free_indices
from energydsl.compiler.plan.program import BATCH, Operand
from energydsl.compiler.plan.torch_steps import ShapeCode, block_size

if TYPE_CHECKING:
    from energydsl.compiler.plan.planner import Planner

MIN_PAIR_RANGE = 8  # below this the layout's gathers cost more than the halved product
Side = tuple[Operand, str]  # an operand and the letters of its axes other than the pair
Rows = Callable[[Operand, str, bool], str]  # (operand, its other letters, weighted) -> code


def pair_sides(picked: list[Operand], inputs: str, out_letters: str, pair: str,
               reorder: bool) -> tuple[Side, Side] | None:
    """The two operands of sum over `pair` with their other letters, the one whose letters
    come first in the result first. With `reorder` (the result's axis order is free) the
    batched operand is first: [N, entries] x [entries, K] runs 7% faster here than its
    transpose, forward and backward. None unless the pair's letters are the last two of
    both operands, and each operand keeps an axis of its own."""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    sides = []
    for operand, letters in zip(picked, terms, strict=True):
        if letters[-2:] not in (pair, pair[::-1]):
            return None
        sides.append((operand, letters[:-2]))
    (x, free_x), (y, free_y) = sides
    if not free_x or not free_y or set(free_x) & set(free_y) or \
            set(free_x + free_y) & set(pair):
        return None
    if reorder:
        if BATCH in y.indices and BATCH not in x.indices:
            sides.reverse()
    elif out_letters == free_y + free_x:
        sides.reverse()
    elif out_letters != free_x + free_y:
        return None
    return sides[0], sides[1]


def pairs_product_code(sides: tuple[Side, Side], rows: Rows, letter_index: dict,
                       shape_code: ShapeCode) -> tuple[str, str]:
    """The code of the product over the layout's entries, and its result's letters."""
    (x, free_x), (y, free_y) = sides
    weigh_y = BATCH in x.indices and BATCH not in y.indices
    code = f"({rows(x, free_x, not weigh_y)}) @ ({rows(y, free_y, weigh_y)}).T"
    out_letters = free_x + free_y
    if len(free_x) > 1 or len(free_y) > 1:
        dims = ", ".join(block_size(c, letter_index, shape_code)[0] for c in out_letters)
        code = f"({code}).reshape({dims})"
    return code, out_letters


def gathered_rows(code: str, count: str, size: str, layout: str) -> str:
    """A formed [.., size, size] operand's entries in the layout, as rows [count, entries]."""
    return f"{code}.reshape({count}, {size} * {size}).index_select(1, {layout}[0])"


def outer_square(formula: sp.Expr, a: sp.Basic, b: sp.Basic
                 ) -> tuple[sp.Expr, sp.Expr | None] | None:
    """(v, M) when formula = v[a] v[b] M[a, b] with every factor reading a or b (M None
    when there is none); else None."""
    factors = sp.Mul.make_args(formula)
    only_a, only_b, both = [], [], []
    for factor in factors:
        reads = free_indices(factor)
        if a in reads and b in reads:
            both.append(factor)
        elif a in reads:
            only_a.append(factor)
        elif b in reads:
            only_b.append(factor)
        else:
            return None
    vector = sp.Mul(*only_a)
    if not only_a or sp.Mul(*only_b) != vector.xreplace({a: b}):
        return None
    return vector, (sp.Mul(*both) if both else None)


def symmetric_pairwise(planner: Planner, picked_pairs: list, inputs: str, out_letters: str,
                       letter_index: dict, comment: str, name: str | None,
                       reorder: bool) -> Operand | None:
    """One pairwise step over the layout when it applies (module docstring); None when not.
    `reorder`: the result's axis order is the planner's to choose."""
    terms = inputs.split(",")
    if len(picked_pairs) != 2:
        return None
    summed = [c for c in terms[0] if c in terms[1] and c not in out_letters]
    if len(summed) != 2:
        return None
    a, b = (letter_index[c] for c in summed)
    if BATCH in (a, b) or (a.lower, a.upper) != (b.lower, b.upper) \
            or planner.size(a) < MIN_PAIR_RANGE:
        return None
    a, b = sorted((a, b), key=str)
    swap = {a: b, b: a}
    if any(canonical(planner, formula.xreplace(swap)) != canonical(planner, formula)
           for _, formula in picked_pairs):
        return None
    picked = [op for op, _ in picked_pairs]
    sides = pair_sides(picked, inputs, out_letters, "".join(summed), reorder)
    if sides is None:
        return None
    size = planner.shape_code(a)
    key = f"circulant {size}"
    if key not in planner.identities:
        planner.identities[key] = planner.emit_step(
            f"_circulant_layout({size}, {planner.like})",
            f"the pairs {{{a}, {b}}} of {dsl_str(a.upper - a.lower + 1)} values, circulant: "
            f"row s holds ({a}, {a} + s mod {size})")
    layout = planner.identities[key]
    formulas = {id(op): formula for op, formula in picked_pairs}
    parts = {}  # each side's rows, and the shared matrix's entries it multiplies by
    for operand, free in sides:
        kept = tuple(letter_index[c] for c in free)
        count = block_size(free, letter_index, planner.shape_code)[0]
        code, scale = _square_rows(planner, formulas[id(operand)], a, b, kept, count, size,
                                   layout)
        parts[id(operand)] = (code or gathered_rows(operand.code, count, size, layout), scale)
    # the [entries] factors (the weights, any shared matrix's entries) multiply the side
    # without the batch, whichever side they came with: [K, E] products, not [N, E]
    scales = [scale for _, scale in parts.values() if scale is not None]

    def rows(operand: Operand, free: str, weighted: bool) -> str:
        code = parts[id(operand)][0]
        if not weighted:
            return code
        weights = " * ".join([*scales, f"{layout}[1]"])
        return planner.emit_step(f"{code} * ({weights})",
                                 f"{dsl_str(formulas[id(operand)])} over the pairs "
                                 f"{{{a}, {b}}}, 2x off the diagonal")

    code, result_letters = pairs_product_code(sides, rows, letter_index, planner.shape_code)
    cost = planner.volume({i for op in picked for i in op.indices}) / 2
    return Operand(planner.emit_step(code, comment, name, cost),
                   tuple(letter_index[c] for c in result_letters))


def canonical(planner: Planner, expr: sp.Expr) -> sp.Expr:
    """expr with each reference q[.., a, .., b, ..] to a let symmetric in those two
    positions, or L[a, b] to a parameter declared `where symmetric`, written with its
    arguments there in sorted order, so that a summand read through lets compares equal
    to its swap when it is symmetric:

        let q[h, k] = t[h] t[k] (M[h, k] + M[k, h])   =>   q[k, h] -> q[h, k]
    """
    def sort_arguments(node: sp.Basic) -> sp.Basic:
        definition = planner.definitions.get(str(node.base.label))
        if node.base in planner.symbolic.symmetric and len(node.indices) == 2:
            symmetries: tuple[tuple[int, int], ...] = ((0, 1),)
        elif definition is not None and definition.base == node.base:
            symmetries = let_symmetries(planner, str(node.base.label))
        else:
            return node
        arguments = list(node.indices)
        for p, q in symmetries:
            if str(arguments[q]) < str(arguments[p]):
                arguments[p], arguments[q] = arguments[q], arguments[p]
        return node.base[tuple(arguments)]

    return expr.replace(lambda node: isinstance(node, sp.Indexed), sort_arguments)


def let_symmetries(planner: Planner, name: str) -> tuple[tuple[int, int], ...]:
    """The pairs of positions (p, q) in which the let `name`'s body is symmetric: its
    body with the formal indices p and q swapped is the same expression (lets it reads
    compared through `canonical`). Swapping two formal indices cannot capture a summed
    one: a body's summed indices are never its formal ones."""
    if name not in planner.let_symmetry:
        definition = planner.definitions[name]
        formal = definition.indices
        body = canonical(planner, definition.body)
        planner.let_symmetry[name] = tuple(
            (p, q) for p in range(len(formal)) for q in range(p + 1, len(formal))
            if (formal[p].lower, formal[p].upper) == (formal[q].lower, formal[q].upper)
            and canonical(planner, definition.body.xreplace(
                {formal[p]: formal[q], formal[q]: formal[p]})) == body)
    return planner.let_symmetry[name]


def _square_rows(planner: Planner, formula: sp.Expr, a: sp.Basic, b: sp.Basic,
                 kept: tuple, count: str, size: str, layout: str
                 ) -> tuple[str | None, str | None]:
    """(rows of v's pairs, M's entries or None) for formula = v[.., a] v[.., b] M with v
    reading exactly the operand's other axes and M none of them or all; (None, None)
    otherwise."""
    square = outer_square(formula, a, b)
    if square is None:
        return None, None
    vector, matrix = square
    v = planner.operand(vector)
    if not v.is_tensor or set(v.indices) != set(kept) | {a}:
        return None, None
    aligned = planner.align(v, kept + (a,))
    if len(kept) > 1:
        aligned = f"{aligned}.reshape({count}, {size})"
    pairs = f"_circulant_pairs({aligned})"
    if matrix is None:
        return pairs, None
    m = planner.operand(matrix)
    if not m.is_tensor:
        return None, None
    own = set(m.indices) - {a, b}
    pair = (a, b) if m.indices.index(a) < m.indices.index(b) else (b, a)  # M is symmetric
    if not own:
        return pairs, f"{planner.align(m, pair)}.reshape(-1).index_select(0, {layout}[0])"
    if own == set(kept):
        entries = gathered_rows(planner.align(m, kept + pair), count, size, layout)
        return f"{pairs} * {entries}", None
    return None, None
