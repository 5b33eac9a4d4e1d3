"""Formulas as text: in the spec's own notation (`dsl_str`) and in LaTeX (`latex`).

Used by `show`, by error messages and by the docstrings of generated modules, so a
user reads derived formulas in the language they wrote the model in.
"""

from __future__ import annotations

import sympy as sp
from sympy.printing.latex import LatexPrinter
from sympy.printing.precedence import PRECEDENCE
from sympy.printing.str import StrPrinter


class DslPrinter(StrPrinter):
    """sum(i, j: ...), W[i, j], x^2: the syntax of .edsl files."""

    def _print_Sum(self, expr: sp.Sum) -> str:
        indices = ", ".join(self._print(limit[0]) for limit in expr.limits)
        return f"sum({indices}: {self._print(expr.function)})"

    def _print_softmax_weight(self, expr) -> str:
        return self._print(sp.exp(sp.Add(expr.args[0], -expr.args[1], evaluate=False)))

    def _print_LogSumExp(self, expr) -> str:
        indices = ", ".join(self._print(limit[0]) for limit in expr.limits)
        return f"logsumexp({indices}: {self._print(expr.function)})"

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        indices = ", ".join(self._print(i) for i in expr.indices)
        return f"{self._print(expr.base.label)}[{indices}]"

    def _print_Idx(self, expr: sp.Idx) -> str:
        return self._print(expr.label)

    def _print_KroneckerDelta(self, expr) -> str:
        return f"delta({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        text = super()._print_Pow(expr, rational)
        return text.replace("**", "^")

    def _print_Relational(self, expr) -> str:
        return f"{self._print(expr.lhs)} {expr.rel_op} {self._print(expr.rhs)}"

    def _print_Dummy(self, expr) -> str:
        return expr.name

    def _print_Abs(self, expr) -> str:
        return f"abs({self._print(expr.args[0])})"

    def _print_Exp1(self, expr) -> str:
        return "exp(1)"

    def _print_JacobianSquares(self, expr) -> str:
        steps = ", ".join(f"{step.args[0]} {self._print(step.args[1].label)}"
                          for step in expr.args[1:])
        return f"jacobian_squares(R({self._print(expr.args[0].label)}); {steps})"

    def _print_RowSpaceFactor(self, expr) -> str:
        matrix, row, column = expr.args
        return f"R({self._print(matrix.label)})[{self._print(row)}, {self._print(column)}]"


class DslLatexPrinter(LatexPrinter):
    """LaTeX with index notation W_{i j} and sums over named indices."""

    def _print_Sum(self, expr: sp.Sum) -> str:
        indices = ", ".join(self._print(limit[0]) for limit in expr.limits)
        body = self._print(expr.function)
        if isinstance(expr.function, sp.Add):
            body = rf"\left({body}\right)"
        return rf"\sum_{{{indices}}} {body}"

    def _print_Indexed(self, expr: sp.Indexed) -> str:
        indices = " ".join(self._print(i) for i in expr.indices)
        base = self._print(expr.base.label)
        if "_" in base or "^" in base:  # V1 -> V_{1}: grouped, so V_{1}_{h i} cannot occur
            base = f"{{{base}}}"
        return f"{base}_{{{indices}}}"

    def _print_Idx(self, expr: sp.Idx) -> str:
        return self._print(expr.label)

    def _print_Symbol(self, expr: sp.Symbol, style: str = "plain") -> str:
        """The compiler's own names (_slope_u1) without their leading underscore, which
        LaTeX would read as a subscript of nothing."""
        if expr.name.startswith("_") and expr.name.strip("_"):
            expr = sp.Symbol(expr.name.lstrip("_"))
        return super()._print_Symbol(expr, style)


def dsl_str(expr: sp.Basic) -> str:
    return DslPrinter().doprint(expr)


def latex(expr: sp.Basic) -> str:
    return DslLatexPrinter({"fold_short_frac": False}).doprint(expr)


__all__ = ["PRECEDENCE", "dsl_str", "latex"]
