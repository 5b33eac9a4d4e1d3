"""Keys under which the planner remembers values: equal keys, equal values.

A value's key is its expression with the free indices renamed in a canonical axis order
and the bound ones after their depth of nesting, so `sum(i: W[i, j] v[i])` and
`sum(k: W[k, l] v[k])` share one key (and one step); a pairwise contraction's key is its
operands and letters up to renaming, so a product computed for one method is reused,
transposed if need be, by the next.
"""

from __future__ import annotations

import functools
from typing import Any

import sympy as sp

from energydsl.compiler.algebra import REDUCTIONS

LETTERS = "abcdefghijklmopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
"""einsum letters for axes (`n` is kept for the batch)."""

Key = tuple[Any, ...]


@functools.lru_cache(maxsize=8192)  # SymPy's free_symbols walks the tree every time
def free_indices(expr: sp.Basic) -> frozenset[sp.Idx]:
    return frozenset(s for s in expr.free_symbols if isinstance(s, sp.Idx))


def all_indices(expr: sp.Basic) -> set:
    """Free and bound indices of expr."""
    found = set(free_indices(expr))
    for node in sp.preorder_traversal(expr):
        if isinstance(node, REDUCTIONS):
            found.update(limit[0] for limit in node.limits)
    return found


def axis_order(expr: sp.Basic, indices: set | frozenset) -> tuple:
    """A canonical axis order: by where each index subscripts tensors, then by name."""
    signature: dict = {i: [] for i in indices}
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Indexed):
            for axis, index in enumerate(node.indices):
                if index in signature:
                    signature[index].append((str(node.base.label), axis))
    return tuple(sorted(indices, key=lambda i: (sorted(signature[i]), str(i))))


def value_key(expr: sp.Expr) -> tuple[Key, dict]:
    """expr's key, and the renaming of its free indices to the placeholders _F0, _F1..."""
    free = axis_order(expr, free_indices(expr))
    to_placeholder = {index: sp.Idx(f"_F{k}", (index.lower, index.upper))
                      for k, index in enumerate(free)}

    def rename(node: sp.Basic, names: dict, depth: int):
        """One pass building tuples, not SymPy objects (whose construction dominates
        otherwise): free indices to placeholders, a sum's k-th index at nesting depth
        d to (d, k), the arguments of + and * in one order whatever the names."""
        if isinstance(node, sp.Idx):
            return names.get(node, node)
        if isinstance(node, sp.Indexed):
            return ("[]", node.base, tuple(rename(i, names, depth) for i in node.indices))
        if isinstance(node, REDUCTIONS):
            inner, limits = dict(names), []
            for k, (index, lo, hi) in enumerate(node.limits):
                inner[index] = ("bound", depth, k, lo, hi)
                limits.append(inner[index])
            kind = "sum" if isinstance(node, sp.Sum) else "logsumexp"
            return (kind, rename(node.function, inner, depth + 1), tuple(limits))
        if not node.args:
            return node
        args = [rename(a, names, depth) for a in node.args]
        if isinstance(node, (sp.Add, sp.Mul)):
            args.sort(key=hash)
        return (node.func, tuple(args))

    return rename(expr, to_placeholder, 0), to_placeholder


def pair_key(codes: list[str], inputs: str, out_letters: str) -> tuple[Key, dict[str, str]]:
    """A pairwise contraction of the operands `codes` (axes `inputs`, einsum letters) up to
    the order of its operands, the names of its letters and its output's axis order
    (equal keys, equal values up to a transpose), and the renaming of letters to
    canonical ones."""
    terms = sorted(zip(codes, inputs.split(","), strict=True))
    canonical: dict[str, str] = {}
    for c in "".join(letters for _, letters in terms) + out_letters:
        canonical.setdefault(c, LETTERS[len(canonical)])
    key = (tuple((code, "".join(canonical[c] for c in letters)) for code, letters in terms),
           "".join(sorted(canonical[c] for c in out_letters)))
    return key, canonical
