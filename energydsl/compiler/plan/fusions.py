"""Fusions of a method's planned steps into runtime helpers with hand-written backward
passes (emit/templates/runtime/). Each leaves every value as it was and changes only
how its gradients are formed: in fewer passes over the per-sample matrices [N, a, h] of
deep models, which dominate their training steps. Each fusion is one function from the
method's steps (in order, dead code removed) to new steps, listed in FUSIONS."""

from __future__ import annotations

import ast
import re
from collections.abc import Callable

from energydsl.compiler.plan.program import Step

_SQUARE_SUM = re.compile(r"_square_sum\((\w+), (-?\d+)\)")


def scale_and_square(steps: list[Step]) -> list[Step]:
    """J = scale * T and S = _square_sum(T, d) -> J, S = _scale_and_square(T, scale, d).

    A deep model's layer: its Jacobian J_l = g_l' (J_(l-1) V_l^T) and the squares of
    T = J_(l-1) V_l^T that its Laplacian reads. Autograd forms T's gradient from J and
    from S separately and adds them; the helper forms g_J scale + 2 T g_S in two passes.
    The fused step goes where the first of the two was, when what it reads is ready
    there."""
    squares: dict[str, tuple[int, str]] = {}  # T -> (its squares step, the axis)
    for k, step in enumerate(steps):
        match = _SQUARE_SUM.fullmatch(step.code)
        if match:
            squares.setdefault(match.group(1), (k, match.group(2)))
    position = {step.name: k for k, step in enumerate(steps)}
    out: list[Step | None] = list(steps)
    for k, step in enumerate(steps):
        split = _scaled(step.code, squares)
        if split is None:
            continue
        t, scale = split
        s, dim = squares.pop(t)
        at = min(k, s)
        if any(position.get(dep, -1) >= at for dep in (*step.deps, t)):
            continue
        squared = steps[s]
        out[at] = Step(f"{step.name}, {squared.name}", f"_scale_and_square({t}, {scale}, {dim})",
                       f"{step.comment}\n{squared.comment}",
                       tuple(dict.fromkeys((*step.deps, t))), step.cost + squared.cost)
        out[max(k, s)] = None
    return [step for step in out if step is not None]


def _scaled(code: str, candidates: dict[str, tuple[int, str]]) -> tuple[str, str] | None:
    """(T, the product of the other factors) when code is a product with exactly one
    factor a plain name T among `candidates`, read nowhere else in code."""
    try:
        tree = ast.parse(code, mode="eval").body
    except SyntaxError:  # pragma: no cover - the planner emits Python expressions
        return None
    factors: list[ast.expr] = []

    def flatten(node: ast.expr) -> None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
            flatten(node.left)
            flatten(node.right)
        else:
            factors.append(node)

    flatten(tree)
    names = [f for f in factors if isinstance(f, ast.Name) and f.id in candidates]
    if len(factors) < 2 or len(names) != 1:
        return None
    t = names[0].id
    if len(re.findall(rf"(?<![\w.]){t}(?!\w)", code)) != 1:
        return None
    others = [f for f in factors if f is not names[0]]
    product = others[0]
    for factor in others[1:]:
        product = ast.BinOp(product, ast.Mult(), factor)
    return t, ast.unparse(product)  # parenthesised where precedence needs it


FUSIONS: tuple[Callable[[list[Step]], list[Step]], ...] = (scale_and_square,)


def fuse(steps: list[Step]) -> list[Step]:
    """The steps after every fusion in FUSIONS."""
    for fusion in FUSIONS:
        steps = fusion(steps)
    return steps
