"""What the stages ask of `let` definitions: does an expression depend on a variable
through them, and what is it with them written out.

`lookup` is a SymbolicModel's `definition_of` (or, before there is one, any function from
a base to its Definition or None).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from energydsl.compiler.algebra import normalise, substitute_index
from energydsl.compiler.ir import Definition, SymbolicModel

Lookup = Callable[[sp.Basic], "Definition | None"]


def depends_on(expr: sp.Basic, base: sp.Basic, lookup: Lookup) -> bool:
    """Whether expr depends on `base`, directly or through let definitions."""
    seen: set[sp.Basic] = set()
    pending = [expr]
    while pending:
        for node in sp.preorder_traversal(pending.pop()):
            if isinstance(node, sp.Indexed) and node.base == base:
                return True
            if isinstance(node, (sp.Indexed, sp.Symbol)):
                head = node.base if isinstance(node, sp.Indexed) else node
                definition = lookup(head)
                if definition is not None and head not in seen:
                    seen.add(head)
                    pending.append(definition.body)
            elif node == base:
                return True
    return False


def inline(expr: sp.Expr, base: sp.Basic | None, lookup: Lookup) -> sp.Expr:
    """expr with every let that depends on `base` (every let, for None) replaced by its
    body."""

    def visit(node: sp.Expr) -> sp.Expr:
        if isinstance(node, (sp.Indexed, sp.Symbol)):
            head = node.base if isinstance(node, sp.Indexed) else node
            definition = lookup(head)
            if definition is None or (base is not None
                                      and not depends_on(definition.body, base, lookup)):
                return node
            body = definition.body
            if isinstance(node, sp.Indexed):
                for formal, actual in zip(definition.indices, node.indices, strict=True):
                    body = substitute_index(body, formal, actual)
            return visit(body)
        if not node.args or isinstance(node, sp.Idx):
            return node
        return node.func(*[visit(a) for a in node.args])

    return visit(expr)


def quadratic(gradient: sp.Expr, hessian: sp.Expr, base: sp.Basic, lookup) -> bool:
    """Whether a function with this gradient and Hessian in `base` is quadratic in it:
    the Hessian is nonzero and free of `base`, and the gradient is affine, with no
    function of `base` in it (lets written out). The Hessian alone does not say so:
    abs and relu have second derivatives zero almost everywhere, so
    |x|^2 / 2 + relu(u^T x) has the constant Hessian I and is no Gaussian."""
    if hessian == 0 or depends_on(hessian, base, lookup):
        return False
    return not any(isinstance(node, sp.Function) and depends_on(node, base, lookup)
                   for node in sp.preorder_traversal(inline(gradient, base, lookup)))


def at_zero(expr: sp.Expr, model: SymbolicModel, base: sp.Basic | None = None) -> sp.Expr:
    """expr at v = 0, or at `base` = 0 (lets that depend on it written out first)."""
    variable = model.visible if base is None else base
    written_out = inline(expr, variable, model.definition_of)
    return normalise(written_out.replace(
        lambda node: isinstance(node, sp.Indexed) and node.base == variable,
        lambda node: sp.S.Zero))
