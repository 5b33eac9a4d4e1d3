"""Bounds on what a spec may ask of the compiler, measured before SymPy sees it.

Derivatives through deep compositions of nonlinear functions, long chains of definitions
or many nested indices grow quickly (the Laplacian differentiates twice through
everything); these limits are far beyond the models the language is for, and a clear,
positioned error beats a compile that never ends.
"""

from __future__ import annotations

from dataclasses import dataclass

from energydsl.compiler import syntax as ast
from energydsl.errors import error

MAX_FUNCTION_NESTING = 4  # nested function calls and powers with a variable exponent
#                            (x^y = exp(y log x)) in one expression, counted through the
#                            `let`s it reads that involve a hidden variable (through a let
#                            of the visible variable alone, derivatives propagate forward
#                            one definition at a time: compiler/chain.py)
MAX_DEFINITION_DEPTH = 32  # `let`s defined in terms of `let`s
MAX_EXPANDED_SIZE = 5000  # nodes of an expression with every `let` substituted
MAX_INDICES = 10  # indices in scope at once (sum bindings and a `let`'s own)


@dataclass(frozen=True)
class Cost:
    """An expression with its `let`s substituted: the deepest nesting of function calls,
    the number of nodes, the longest chain of definitions and the variables it reads."""

    calls: int
    size: int
    depth: int
    variables: frozenset[str]


def expanded_cost(expr: ast.Expr, costs: dict[str, Cost], variables) -> Cost:
    """What differentiating `expr` costs, with every `let` it uses substituted (from the
    costs recorded per `let`, so a shared definition is measured once): fail where
    it exceeds a limit."""
    if isinstance(expr, ast.Number):
        return Cost(0, 1, 0, frozenset())
    if isinstance(expr, (ast.Name, ast.Indexed)):
        name = expr.name if isinstance(expr, ast.Name) else expr.base.name
        if name in costs:
            cost = costs[name]
            if cost.variables and all(variables[v].role == "visible" for v in cost.variables):
                # a let of the visible variable alone: derivatives propagate forward
                # through it one definition at a time (compiler/chain.py), so the
                # functions nested inside it do not nest further here
                return Cost(0, cost.size, cost.depth, cost.variables)
            return cost
        return Cost(0, 1, 0, frozenset({name} & set(variables)))
    if isinstance(expr, ast.Call):
        inner = expanded_cost(expr.args[0], costs, variables)
        cost = Cost(inner.calls + 1, inner.size + 1, inner.depth, inner.variables)
    elif isinstance(expr, ast.Unary):
        inner = expanded_cost(expr.operand, costs, variables)
        cost = Cost(inner.calls, inner.size + 1, inner.depth, inner.variables)
    elif isinstance(expr, ast.Binary):
        left = expanded_cost(expr.left, costs, variables)
        right = expanded_cost(expr.right, costs, variables)
        # x^y with y a function of the variables is exp(y log x): a nested function
        calls = max(left.calls, right.calls) + (expr.op == "^" and bool(right.variables))
        cost = Cost(calls, left.size + right.size + 1,
                    max(left.depth, right.depth), left.variables | right.variables)
    elif isinstance(expr, ast.SumExpr):
        inner = expanded_cost(expr.body, costs, variables)
        cost = Cost(inner.calls, inner.size + 1, inner.depth, inner.variables)
    else:  # pragma: no cover - the parser builds nothing else
        raise TypeError(f"unexpected node {expr!r}")
    if cost.calls > MAX_FUNCTION_NESTING:
        raise error(f"functions nested more than {MAX_FUNCTION_NESTING} deep (counting "
                    "powers with a variable exponent, and through 'let' definitions that "
                    "read a hidden variable): the derivatives of so deep a composition grow "
                    "too large; name inner parts with 'let' (derivatives propagate through "
                    "lets of the visible variable one at a time)",
                    expr.func.span if isinstance(expr, ast.Call) else expr.span)
    if cost.size > MAX_EXPANDED_SIZE:
        raise error(f"this expression is too large with its definitions substituted "
                    f"(more than {MAX_EXPANDED_SIZE} terms and factors): the compiler "
                    "differentiates through every 'let'", expr.span)
    return cost
