"""Rewrites of a method's planned steps, the last stage before they are written out:
values computed twice read once (`reuse_values`), and steps fused into runtime helpers
with hand-written backward passes (emit/templates/runtime/), which form gradients in
fewer passes over the per-sample matrices [N, a, h] of deep models. Each leaves every
value as it was. Each is one function from the method's steps (in order, dead code
removed) to new steps, listed in FUSIONS."""

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
        s, dim = squares[t]
        at = min(k, s)
        if any(position.get(dep, -1) >= at for dep in (*step.deps, t)):
            continue
        del squares[t]
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


_RANDOM = {"rand", "randn", "rand_like", "randn_like", "randint", "bernoulli", "multinomial",
           "normal", "poisson", "uniform_", "normal_", "exponential_", "bernoulli_"}


def reuse_values(steps: list[Step]) -> list[Step]:
    """y = ... f(a) ..., with x = f(a) computed before -> y = ... x ...

    The planner plans each definition's elementwise body as one expression, so a factor
    another step computed already is formed again inside it: g * (1 - g) * (2 * g - 1)
    after _t7 = g * (1 - g). Reading the earlier value saves the operations forward and
    their backward. Steps are single assignments, so equal code is an equal value, except
    for random draws, which are never merged."""
    computed: dict[str, str] = {}
    out = []
    for step in steps:
        reader = _Reuse(computed)
        body = reader.visit(ast.parse(step.code, mode="eval").body)
        if reader.used:
            step = Step(step.name, ast.unparse(body), step.comment,
                        tuple(dict.fromkeys((*step.deps, *reader.used))), step.cost)
        if "," not in step.name and not _draws(body):
            computed.setdefault(ast.unparse(body), step.name)
        out.append(step)
    return out


class _Reuse(ast.NodeTransformer):
    """Replaces the largest subexpressions already computed under a name by the name."""

    def __init__(self, computed: dict[str, str]) -> None:
        self.computed = computed
        self.used: list[str] = []

    def visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, (ast.BinOp, ast.UnaryOp, ast.Call, ast.Subscript)) \
                and not _draws(node):
            name = self.computed.get(ast.unparse(node))
            if name is not None:
                self.used.append(name)
                return ast.copy_location(ast.Name(name, ast.Load()), node)
        return self.generic_visit(node)


def _draws(node: ast.AST) -> bool:
    """Whether node makes a random draw (a call to a sampler, or with a generator)."""
    for call in ast.walk(node):
        if isinstance(call, ast.Call):
            function = call.func
            name = function.attr if isinstance(function, ast.Attribute) else getattr(
                function, "id", "")
            if name in _RANDOM or any(k.arg == "generator" for k in call.keywords):
                return True
    return False


FUSIONS: tuple[Callable[[list[Step]], list[Step]], ...] = (reuse_values, scale_and_square)


def fuse(steps: list[Step]) -> list[Step]:
    """The steps after every fusion in FUSIONS."""
    for fusion in FUSIONS:
        steps = fusion(steps)
    return steps
