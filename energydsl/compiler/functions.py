"""The functions of the language: one table every stage reads.

Each `Function` says all the compiler and the check know of one function: its name in
specs, its SymPy form (lowering), its torch code for tensors and for Python numbers (the
torch printer), the torch callable the independent reference evaluates it with, and the
facts the marginaliser uses to bound convergence conditions (increasing, with its
limits at -oo and +oo) and the normalisability analysis uses (bounded). Adding a function
is one entry here (and, when SymPy has no class for it, one class below with its
derivative in closed form); tests/compiler/test_functions.py checks every entry's parts
against each other and against SymPy's own numerics.

The functions SymPy lacks (softplus, sigmoid, log1p, logsigmoid, logcosh, relu) are in
energydsl.compiler.sympy_functions. abs and relu have kinks: their derivatives are the
almost-everywhere ones (sign, a step), as autograd's, and `show` says so (`kinked`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy as sp

from energydsl.compiler.sympy_functions import (
    log1p,
    logaddexp,
    logcosh,
    logsigmoid,
    logsumexp,
    relu,
    sigmoid,
    softplus,
)


def _torch(path: str) -> Callable[[Any], Any]:
    """The torch callable at `path` ('nn.functional.softplus'), imported when called:
    the compiler does not need torch."""
    def call(x: Any) -> Any:
        import torch

        function: Any = torch
        for part in path.split("."):
            function = getattr(function, part)
        return function(x)

    call.__name__ = f"torch.{path}"
    return call


@dataclass(frozen=True)
class Function:
    """One unary function of the language (see the module docstring)."""

    name: str
    build: Callable[[sp.Expr], sp.Expr]  # its SymPy form, applied to the argument
    sympy_class: type | None  # what `build` makes (None: a power, printed as one)
    tensor_code: str  # torch code for a tensor argument `{x}`
    scalar_code: str  # Python code for a number or constant `{x}` (uses `math`)
    reference: Callable[[Any], Any]  # the torch callable the check evaluates it with
    # strictly increasing: (its value at a number, as SymPy; its limit at -oo; at +oo), the
    # limits never attained
    increasing: tuple[Callable[[sp.Expr], sp.Expr], sp.Expr, sp.Expr] | None = None
    kinked: bool = False  # not differentiable everywhere: derivatives hold almost everywhere

    @property
    def bounded(self) -> bool:
        """Bounded over the reals (a function of v that cannot make F grow)."""
        return self.increasing is not None and all(
            limit.is_finite for limit in self.increasing[1:])


FUNCTIONS: dict[str, Function] = {f.name: f for f in (
    Function("exp", sp.exp, sp.exp, "torch.exp({x})", "math.exp({x})", _torch("exp"),
             (sp.exp, sp.S.Zero, sp.oo)),
    Function("log", sp.log, sp.log, "torch.log({x})", "math.log({x})", _torch("log")),
    Function("log1p", log1p, log1p, "torch.log1p({x})", "math.log1p({x})", _torch("log1p")),
    Function("sqrt", sp.sqrt, None, "torch.sqrt({x})", "math.sqrt({x})", _torch("sqrt")),
    Function("square", lambda x: x**2, None, "torch.square({x})", "({x}) ** 2",
             _torch("square")),
    Function("softplus", softplus, softplus, "torch.nn.functional.softplus({x})",
             "(max({x}, 0.0) + math.log1p(math.exp(-abs({x}))))",
             _torch("nn.functional.softplus"),
             (lambda x: sp.log(1 + sp.exp(x)), sp.S.Zero, sp.oo)),
    Function("sigmoid", sigmoid, sigmoid, "torch.sigmoid({x})",
             "(1.0 / (1.0 + math.exp(-({x}))))", _torch("sigmoid"),
             (lambda x: 1 / (1 + sp.exp(-x)), sp.S.Zero, sp.S.One)),
    Function("tanh", sp.tanh, sp.tanh, "torch.tanh({x})", "math.tanh({x})", _torch("tanh"),
             (sp.tanh, sp.S.NegativeOne, sp.S.One)),
    Function("abs", sp.Abs, sp.Abs, "torch.abs({x})", "abs({x})", _torch("abs"),
             kinked=True),
    Function("relu", relu, relu, "torch.relu({x})", "max({x}, 0.0)", _torch("relu"),
             kinked=True),  # not strictly increasing: it attains 0 (its sign facts say >= 0)
    Function("logsigmoid", logsigmoid, logsigmoid, "torch.nn.functional.logsigmoid({x})",
             "(-(max(-({x}), 0.0) + math.log1p(math.exp(-abs({x})))))",
             _torch("nn.functional.logsigmoid"),
             (lambda x: -sp.log(1 + sp.exp(-x)), sp.S.NegativeInfinity, sp.S.Zero)),
    Function("cosh", sp.cosh, sp.cosh, "torch.cosh({x})", "math.cosh({x})", _torch("cosh")),
    Function("sinh", sp.sinh, sp.sinh, "torch.sinh({x})", "math.sinh({x})", _torch("sinh"),
             (sp.sinh, sp.S.NegativeInfinity, sp.oo)),
    Function("logcosh", logcosh, logcosh,
             "(({x}) + torch.nn.functional.softplus(-2 * ({x})) - math.log(2))",
             "(abs({x}) + math.log1p(math.exp(-2 * abs({x}))) - math.log(2))",
             lambda x: _torch("log")(_torch("cosh")(x))),
    Function("erf", sp.erf, sp.erf, "torch.special.erf({x})", "math.erf({x})",
             _torch("special.erf"), (sp.erf, sp.S.NegativeOne, sp.S.One)),
    Function("sin", sp.sin, sp.sin, "torch.sin({x})", "math.sin({x})", _torch("sin")),
    Function("cos", sp.cos, sp.cos, "torch.cos({x})", "math.cos({x})", _torch("cos")),
)}

BY_CLASS: dict[type, Function] = {f.sympy_class: f for f in FUNCTIONS.values()
                                  if f.sympy_class is not None}
"""The function a SymPy class is (for printing and the facts of marginalisation)."""


def kinked_in(*exprs: sp.Expr) -> list[str]:
    """The kinked functions (abs, relu) the expressions use, by name."""
    return sorted({BY_CLASS[type(node)].name for expr in exprs
                   for node in sp.preorder_traversal(expr)
                   if type(node) in BY_CLASS and BY_CLASS[type(node)].kinked})


def exponent_of(term: sp.Expr) -> sp.Expr | None:
    """a when term = c exp(a) with c > 0 known (then a + log c): the exponent a term of
    a sum of exponentials contributes to its log, or None."""
    coefficient, exponentials = sp.S.One, []
    for factor in sp.Mul.make_args(term):
        if isinstance(factor, sp.exp):
            exponentials.append(factor.args[0])
        else:
            coefficient *= factor
    if not exponentials or coefficient.is_positive is not True:
        return None
    return sp.Add(*exponentials) + (sp.log(coefficient) if coefficient != 1 else 0)


def log_of_exponentials(arg: sp.Expr) -> sp.Expr | None:
    """log(exp(a) + exp(b)) -> logaddexp(a, b) (folded left over more terms) and
    log(sum(k: exp(e[k]))) -> logsumexp(k: e[k]): the stable forms of a mixture's log,
    or None when arg is not a sum of exponentials."""
    if isinstance(arg, sp.Sum):
        exponent = exponent_of(arg.function)
        return logsumexp(exponent, arg.limits) if exponent is not None else None
    if not isinstance(arg, sp.Add):
        return None
    exponents = [exponent_of(t) if not t.is_Number else sp.log(t) if t.is_positive else None
                 for t in arg.args]
    if any(e is None for e in exponents):
        return None
    result = exponents[0]
    for exponent in exponents[1:]:
        result = logaddexp(result, exponent)
    return result


def stable_form(node: sp.Expr) -> sp.Expr:
    """log(1 + exp(x)) -> softplus(x), log(1 + x) -> log1p(x), log(sigmoid(x)) ->
    logsigmoid(x), log(cosh(x)) -> logcosh(x), log(exp(a) + exp(b)) -> logaddexp(a, b),
    log(sum(k: exp(e[k]))) -> logsumexp(k: e[k]): forms that stay finite in float32. One
    node; its arguments are taken as they are."""
    if not isinstance(node, sp.log):
        return node
    (arg,) = node.args
    if isinstance(arg, sigmoid):
        return logsigmoid(arg.args[0])
    if isinstance(arg, sp.cosh):
        return logcosh(arg.args[0])
    if isinstance(arg, sp.Add):
        constant = sp.Add(*[t for t in arg.args if t.is_Number])
        rest = sp.Add(*[t for t in arg.args if not t.is_Number])
        if constant == 1:
            return softplus(rest.args[0]) if isinstance(rest, sp.exp) else log1p(rest)
    mixture = log_of_exponentials(arg)
    return mixture if mixture is not None else node


def stable_forms(expr: sp.Expr) -> sp.Expr:
    """stable_form at every node, innermost first."""

    def visit(node: sp.Expr) -> sp.Expr:
        if not node.args or isinstance(node, (sp.Indexed, sp.Idx)):
            return node
        return stable_form(node.func(*[visit(a) for a in node.args]))

    return visit(expr)
