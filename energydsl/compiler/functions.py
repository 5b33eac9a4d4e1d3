"""SymPy functions the language adds: softplus, sigmoid and log1p.

Their derivatives are stated in closed form (softplus' = sigmoid, sigmoid' =
sigmoid (1 - sigmoid)) so that derived expressions reuse the forward values instead of
re-forming exponentials that overflow in float32.
"""

from __future__ import annotations

import sympy as sp


def _latex_call(name: str, argument: str, exp: str | None) -> str:
    """f(x), or f^{n}(x) when SymPy's LaTeX printer asks for a power (f(x)^n)."""
    power = "" if exp is None else f"^{{{exp}}}"
    return rf"{name}{power}\left({argument}\right)"


class softplus(sp.Function):  # noqa: N801 - printed as written in specs
    """softplus(x) = log(1 + exp(x)), evaluated stably by the printer."""

    nargs = 1

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.log(2)
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real

    def _latex(self, printer, exp=None):
        return _latex_call(r"\operatorname{softplus}", printer._print(self.args[0]), exp)


class sigmoid(sp.Function):  # noqa: N801
    """sigmoid(x) = 1 / (1 + exp(-x))."""

    nargs = 1

    def fdiff(self, argindex=1):
        return self * (1 - self)

    @classmethod
    def eval(cls, x):
        if x.is_zero:
            return sp.Rational(1, 2)
        return None

    def _eval_is_real(self):
        return self.args[0].is_real

    def _eval_is_positive(self):
        return self.args[0].is_real

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

    def _latex(self, printer, exp=None):
        return _latex_call(r"\log", "1 + " + printer._print(self.args[0]), exp)


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
