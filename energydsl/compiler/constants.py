"""Numbers a spec writes, and the dimension and constant formulas folded at compile time.

Every literal must be a float64 (the generated code computes in floating point, so it
must mean the same number); a dimension or constant formula is evaluated exactly where it
can be and refused where its value is no float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from energydsl.compiler import syntax as ast
from energydsl.errors import error

MAX_LITERAL = 100  # characters of a number literal


def describe_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def evaluate(expr: ast.Expr, dims: dict[str, int], consts: dict[str, int | float] | None,
             not_failed: Callable[[str], None],
             vectors: Mapping[str, tuple[str, ...]] | None = None) -> int | float:
    """Value of a dimension or constant formula: numbers, the dimensions' defaults and,
    where `consts` is given, the constants' (`not_failed` stops quietly at a name whose
    declaration failed; `vectors`, the vector constants' shapes, explain why those cannot
    appear: they are no numbers)."""
    allow_consts = consts is not None
    if isinstance(expr, ast.Number):
        return number_value(expr)
    if isinstance(expr, ast.Name):
        if expr.name in dims:
            return dims[expr.name]
        if consts is not None and expr.name in consts:
            return consts[expr.name]
        not_failed(expr.name)
        what = "dimensions and numbers" if not allow_consts else \
            "numbers, dimensions and scalar constants"
        if vectors and expr.name in vectors:
            raise error(f"'{expr.name}' is a vector constant [{', '.join(vectors[expr.name])}]"
                        f", not a number: only {what} can appear here", expr.span)
        raise error(f"'{expr.name}' cannot appear here: only {what} can", expr.span)
    if isinstance(expr, ast.Unary):
        value = evaluate(expr.operand, dims, consts, not_failed, vectors)
        return -value if expr.op == "-" else value
    if isinstance(expr, ast.Binary):
        left = evaluate(expr.left, dims, consts, not_failed, vectors)
        right = evaluate(expr.right, dims, consts, not_failed, vectors)
        if expr.op == "^" and power_too_large(left, right):
            raise error("this constant is out of range (far beyond 1e308)", expr.span)
        try:
            if expr.op == "+":
                value = left + right
            elif expr.op == "-":
                value = left - right
            elif expr.op == "*":
                value = left * right
            elif expr.op == "/":
                value = left / right
                if float(value).is_integer() and isinstance(left, int) \
                        and isinstance(right, int):
                    value = int(value)
            else:
                value = left ** right
        except ZeroDivisionError:
            raise error("cannot evaluate this constant: division by zero",
                        expr.span) from None
        except (OverflowError, ValueError, TypeError):
            raise error("this constant is out of range (beyond 1e308)", expr.span) from None
        if isinstance(value, complex):
            raise error("this constant is not a real number", expr.span)
        if not finite(value):
            raise error("this constant is out of range (beyond 1e308)", expr.span)
        return value
    raise error("only numbers, dimensions and constants can appear here", expr.span)


def finite(value: int | float) -> bool:
    """Whether `value` is a finite float64 (a Python int may be far larger)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def power_too_large(base: int | float, exponent: int | float) -> bool:
    """Whether base ** exponent is beyond float64, judged before computing it (an exact
    integer power like 10 ** 10 ** 9 would take minutes and gigabytes)."""
    if isinstance(base, complex) or isinstance(exponent, complex) or abs(base) <= 1:
        return False
    return exponent > 0 and exponent * math.log10(abs(base)) > 309


def shown(text: str) -> str:
    """A number's text for a message: thousands of digits are cut short."""
    return text if len(text) <= 24 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"


def number_value(number: ast.Number) -> int | float:
    """The value of a literal, which must be a float64 (so the generated code, which
    computes in floating point, means the same number)."""
    text = number.text
    if len(text) > MAX_LITERAL:
        raise error(f"number {shown(text)} is too long (more than {MAX_LITERAL} "
                    "characters)", number.span)
    value: int | float = int(text) if text.isdigit() else float(text)
    if not finite(value):
        raise error(f"number {shown(text)} is out of range (beyond 1e308)", number.span)
    if value == 0 and any(c in "123456789" for c in text.split("e")[0].split("E")[0]):
        raise error(f"number {shown(text)} is too small: it is 0 in floating point",
                    number.span)
    return value
