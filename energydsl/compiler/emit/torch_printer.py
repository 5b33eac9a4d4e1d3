"""SymPy -> PyTorch source: the only place expressions become code text.

The planner hands over elementwise expressions whose tensor leaves are placeholder
symbols (named by their aligned code, e.g. `a[:, None]`); this printer writes torch
calls for tensors and `math` calls for Python scalars (dimensions, constants), using
the stable forms: softplus, logsigmoid, log1p, rsqrt.
"""

from __future__ import annotations

import math

import sympy as sp
from sympy.printing.precedence import PRECEDENCE, precedence
from sympy.printing.pycode import PythonCodePrinter

from energydsl.compiler.functions import BY_CLASS, logaddexp, sigmoid, softplus
from energydsl.compiler.sympy_functions import softmax_weight


class TorchPrinter(PythonCodePrinter):
    """Prints elementwise expressions; `tensors` are the placeholder symbols of tensors."""

    def __init__(self, tensors: set[sp.Symbol], scalar_names: dict[sp.Symbol, str]):
        super().__init__({"fully_qualified_modules": True, "standard": "python3"})
        self.tensors = tensors
        self.scalar_names = scalar_names

    # -- helpers
    def _is_tensor(self, expr: sp.Basic) -> bool:
        return bool(expr.free_symbols & self.tensors)

    def _call(self, torch_name: str, math_name: str, arg: sp.Expr) -> str:
        name = torch_name if self._is_tensor(arg) else math_name
        return f"{name}({self._print(arg)})"

    # -- leaves
    def _print_Symbol(self, expr: sp.Symbol) -> str:
        if expr in self.scalar_names:
            return self.scalar_names[expr]
        return expr.name

    def _print_Pi(self, expr) -> str:
        return "math.pi"

    def _print_Exp1(self, expr) -> str:
        return "math.e"

    def _print_Rational(self, expr: sp.Rational) -> str:
        value = float(expr)
        text = repr(value)
        if sp.Rational(text) == expr and len(text) <= 12:
            return text
        return f"{expr.p} / {expr.q}"

    def _print_Integer(self, expr: sp.Integer) -> str:
        """Beyond 2^53 a float: torch takes no Python int past 64 bits, and float64
        holds no more digits anyway (the checker refused numbers no float64 holds)."""
        value = int(expr)
        return str(value) if abs(value) <= 2**53 else repr(float(value))

    def _print_Float(self, expr: sp.Float) -> str:
        return repr(float(expr))

    # -- functions: the language's from the table (energydsl.compiler.functions), below
    def _print(self, expr, **kwargs) -> str:
        """Every function printed is one this printer knows: the base printer would write
        `math.sinh(x)` for a tensor x, code that fails only when it runs."""
        if isinstance(expr, sp.Function) and type(expr) not in _PRINTED:
            raise NotImplementedError(
                f"no torch code for {type(expr).__name__}, which a derivation produced: add "
                "it to FUNCTIONS in energydsl/compiler/functions.py")
        return super()._print(expr, **kwargs)

    def _print_table_function(self, expr: sp.Function) -> str:
        function = BY_CLASS[type(expr)]
        arg = expr.args[0]
        code = function.tensor_code if self._is_tensor(arg) else function.scalar_code
        return code.format(x=self._print(arg))

    def _print_log(self, expr) -> str:
        arg = expr.args[0]
        if isinstance(arg, sigmoid):  # log sigmoid(x) = -softplus(-x), stable
            if self._is_tensor(arg):
                return f"torch.nn.functional.logsigmoid({self._print(arg.args[0])})"
            return self._print(-softplus(-arg.args[0]))
        return self._print_table_function(expr)

    def _print_logaddexp(self, expr) -> str:
        a, b = expr.args
        if self._is_tensor(a) or self._is_tensor(b):
            if not self._is_tensor(a):  # torch.logaddexp takes tensors only
                a, b = b, a
            first = self._print(a)
            second = self._print(b) if self._is_tensor(b) else \
                f"{self.parenthesize(a, PRECEDENCE['Atom'])}.new_tensor({self._print(b)})"
            return f"torch.logaddexp({first}, {second})"
        return (f"(max({self._print(a)}, {self._print(b)}) + "
                f"math.log1p(math.exp(-abs({self._print(a - b)}))))")

    def _print_softmax_weight(self, expr) -> str:
        difference = self._print(sp.Add(*expr.args[:1], -expr.args[1], evaluate=False))
        if self._is_tensor(expr):
            return f"torch.exp({difference})"
        return f"math.exp({difference})"

    def _print_sign(self, expr) -> str:
        if self._is_tensor(expr.args[0]):
            return f"torch.sign({self._print(expr.args[0])})"
        return f"math.copysign(1.0, {self._print(expr.args[0])})"

    def _print_loggamma(self, expr) -> str:
        return self._call("torch.lgamma", "math.lgamma", expr.args[0])

    def _print_polygamma(self, expr) -> str:
        """polygamma(n, x), the n+1-th derivative of log Gamma (Gamma units' log-partitions).
        n >= 1 as (-1)^(n+1) n! zeta(n+1, x): torch's own polygamma(1, x) is off by 1e-9 in
        float64. `math` has neither, so a Python scalar goes through torch in float64."""
        order, arg = expr.args
        if order == 0:
            call = "torch.special.digamma({})"
        else:
            n = int(order)
            scale = (-1) ** (n + 1) * math.factorial(n)
            call = ("" if scale == 1 else f"{scale} * ") + f"torch.special.zeta({n + 1}.0, {{}})"
        if self._is_tensor(arg):
            return call.format(self._print(arg))
        return "(" + call.format(f"torch.tensor({self._print(arg)}, dtype=torch.float64)") \
            + ").item()"

    def _print_gamma(self, expr) -> str:
        if self._is_tensor(expr.args[0]):
            return f"torch.exp(torch.lgamma({self._print(expr.args[0])}))"
        return f"math.gamma({self._print(expr.args[0])})"

    def _print_Mul(self, expr: sp.Mul) -> str:
        """A tensor times several scalars with the scalars gathered in front, in one Python
        expression: (-2 / self.sigma ** 2) * t is one tensor operation where
        -2 * t / self.sigma ** 2 is two, each with its backward."""
        coefficient, rest = expr.as_coeff_Mul()
        factors = sp.Mul.make_args(rest)
        scalars = [f for f in factors if not self._is_tensor(f)]
        if not self._is_tensor(expr) or (abs(coefficient) != 1) + len(scalars) < 2:
            return super()._print_Mul(expr)
        scalar = self._print(abs(coefficient) * sp.Mul(*scalars))
        tensor = sp.Mul(*(f for f in factors if self._is_tensor(f)))
        sign = "-" if coefficient < 0 else ""  # a sum prints it as a subtraction
        return f"{sign}({scalar}) * {self.parenthesize(tensor, PRECEDENCE['Mul'], strict=False)}"

    def _print_Pow(self, expr: sp.Pow, rational: bool = False) -> str:
        base, exponent = expr.args
        tensor = self._is_tensor(base)
        b = self.parenthesize(base, precedence(expr), strict=False)
        if exponent == 2 and tensor:
            return f"torch.square({self._print(base)})"
        if exponent == sp.Rational(1, 2):
            return self._call("torch.sqrt", "math.sqrt", base)
        if exponent == sp.Rational(-1, 2) and tensor:
            return f"torch.rsqrt({self._print(base)})"
        if exponent == -1:
            return f"1 / {b}"
        if exponent.is_Integer and exponent < 0:
            return f"1 / {b} ** {-int(exponent)}"
        e = self.parenthesize(exponent, precedence(expr), strict=True)
        return f"{b} ** {e}"


_PRINTED = {*BY_CLASS, sp.sign, sp.loggamma, sp.polygamma, sp.gamma, logaddexp,
            softmax_weight}
"""The function classes with torch code: the table's, and what derivations of it yield."""

for _class in BY_CLASS:  # one printer method per function of the table (log has its own)
    if _class is not sp.log:
        setattr(TorchPrinter, f"_print_{_class.__name__}", TorchPrinter._print_table_function)
