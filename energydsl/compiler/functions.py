"""The functions of the language: one table every stage reads.

Each `Function` says all the compiler and the check know of one function: its name in
specs, its SymPy form (lowering), its torch code for tensors and for Python numbers (the
torch printer), the torch callable the independent reference evaluates it with, and the
facts the marginaliser uses to bound convergence conditions (increasing, with its
limits at -oo and +oo) and the normalisability analysis uses (bounded). Adding a function
is one entry here (and, when SymPy has no class for it, one class below with its
derivative in closed form); tests/compiler/test_functions.py checks every entry's parts
against each other and against SymPy's own numerics.

softplus, sigmoid and log1p are SymPy functions of their own, their derivatives stated
in closed form (softplus' = sigmoid, sigmoid' = sigmoid (1 - sigmoid)) so that derived
expressions reuse the forward values instead of re-forming exponentials that overflow in
float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sympy as sp


def _latex_call(name: str, argument: str, exp: str | None) -> str:
    """f(x), or f^{n}(x) when SymPy's LaTeX printer asks for a power (f(x)^n)."""
    power = "" if exp is None else f"^{{{exp}}}"
    return rf"{name}{power}\left({argument}\right)"


class _PositiveOfReal(sp.Function):
    """A function of one argument, positive wherever that argument is real."""

    nargs = 1

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real


class softplus(_PositiveOfReal):  # noqa: N801 - printed as written in specs
    """softplus(x) = log(1 + exp(x)), evaluated stably by the printer."""

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.log(2)
        return None

    def _eval_evalf(self, prec):
        return sp.log(1 + sp.exp(self.args[0]))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\operatorname{softplus}", printer._print(self.args[0]), exp)


class sigmoid(_PositiveOfReal):  # noqa: N801
    """sigmoid(x) = 1 / (1 + exp(-x))."""

    def fdiff(self, argindex=1):
        return self * (1 - self)

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.Rational(1, 2)
        return None

    def _eval_evalf(self, prec):
        return (1 / (1 + sp.exp(-self.args[0])))._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\sigma", printer._print(self.args[0]), exp)


class log1p(sp.Function):  # noqa: N801
    """log1p(x) = log(1 + x), accurate for small x."""

    nargs = 1

    def fdiff(self, argindex=1):
        return 1 / (1 + self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.S.Zero
        return None

    def _eval_is_real(self):
        arg = self.args[0]
        if (1 + arg).is_positive:
            return True
        return None

    def _eval_is_extended_real(self):
        """False where 1 + x is never positive: log1p(-2 - x^2) is complex (or -inf)."""
        one_plus = 1 + self.args[0]
        if one_plus.is_positive:
            return True
        if one_plus.is_nonpositive:
            return False
        return None

    def _eval_evalf(self, prec):
        return sp.log(1 + self.args[0])._eval_evalf(prec)

    def _latex(self, printer, exp=None):
        return _latex_call(r"\log", "1 + " + printer._print(self.args[0]), exp)


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
    # increasing: (its value at a number, as SymPy; its limit at -oo; at +oo)
    increasing: tuple[Callable[[sp.Expr], sp.Expr], sp.Expr, sp.Expr] | None = None

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
    Function("abs", sp.Abs, sp.Abs, "torch.abs({x})", "abs({x})", _torch("abs")),
)}

BY_CLASS: dict[type, Function] = {f.sympy_class: f for f in FUNCTIONS.values()
                                  if f.sympy_class is not None}
"""The function a SymPy class is (for printing and the facts of marginalisation)."""


def rewrite_log_one_plus(expr: sp.Expr) -> sp.Expr:
    """log(1 + exp(x)) -> softplus(x), log(1 + x) -> log1p(x): the stable forms."""

    def visit(node: sp.Expr) -> sp.Expr:
        if not node.args or isinstance(node, (sp.Indexed, sp.Idx)):
            return node
        node = node.func(*[visit(a) for a in node.args])
        if isinstance(node, sp.log) and isinstance(node.args[0], sp.Add):
            terms = node.args[0].args
            constant = sp.Add(*[t for t in terms if t.is_Number])
            rest = sp.Add(*[t for t in terms if not t.is_Number])
            if constant == 1:
                if isinstance(rest, sp.exp):
                    return softplus(rest.args[0])
                return log1p(rest)
        return node

    return visit(expr)
