"""Conformance of the function table (energydsl.compiler.functions): every entry's parts
agree with each other and with SymPy's own numerics, and the language takes it end to
end. A function added to the table without a consistent part fails here."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.emit.torch_printer import TorchPrinter
from energydsl.compiler.functions import BY_CLASS, FUNCTIONS
from energydsl.compiler.notation import dsl_str, latex

X = sp.Symbol("x", real=True)
TENSOR = sp.Symbol("t", real=True)  # printed as a tensor placeholder
POINTS = [0.3, 0.7, 1.5, 2.9, -0.4, -2.5]


def _valid(function, points=POINTS) -> list[float]:
    """The points where the reference is finite (log and sqrt want positive ones)."""
    values = function.reference(torch.tensor(points, dtype=torch.float64))
    return [p for p, v in zip(points, values.tolist(), strict=True) if math.isfinite(v)]


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_sympy_form_matches_the_reference(name):
    function = FUNCTIONS[name]
    for point in _valid(function):
        exact = float(function.build(sp.Float(point, 30)).evalf(30))
        reference = float(function.reference(torch.tensor(point, dtype=torch.float64)))
        assert reference == pytest.approx(exact, rel=1e-12, abs=1e-14), point


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_printed_code_matches_the_reference(name):
    function = FUNCTIONS[name]
    points = _valid(function)
    x = torch.tensor(points, dtype=torch.float64)
    expected = function.reference(x)
    tensor = eval(function.tensor_code.format(x="x"), {"torch": torch, "math": math, "x": x})  # noqa: S307
    torch.testing.assert_close(tensor, expected, rtol=1e-14, atol=0)
    for point, value in zip(points, expected.tolist(), strict=True):
        scalar = eval(function.scalar_code.format(x=repr(point)), {"math": math})  # noqa: S307
        assert scalar == pytest.approx(value, rel=1e-13)
    # and through the printer, as the planner uses it: tensors and Python numbers
    printer = TorchPrinter({TENSOR}, {})
    code = printer.doprint(function.build(TENSOR))
    torch.testing.assert_close(eval(code, {"torch": torch, "math": math, "t": x}),  # noqa: S307
                               expected, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_derivative_matches_autograd(name):
    function = FUNCTIONS[name]
    x = torch.tensor(_valid(function), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(function.reference(x).sum(), x)
    derivative = sp.diff(function.build(TENSOR), TENSOR)
    code = TorchPrinter({TENSOR}, {}).doprint(derivative)
    value = eval(code, {"torch": torch, "math": math, "t": x.detach()})  # noqa: S307
    torch.testing.assert_close(value * torch.ones_like(grad), grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", [n for n, f in FUNCTIONS.items() if f.increasing])
def test_monotonicity_facts_hold(name):
    function = FUNCTIONS[name]
    value_at, low, high = function.increasing
    grid = torch.linspace(-30, 30, 601, dtype=torch.float64)
    values = function.reference(grid)
    assert bool((values[1:] >= values[:-1]).all()), "not increasing"
    middle = function.reference(torch.linspace(-5, 5, 101, dtype=torch.float64))
    assert bool((middle[1:] > middle[:-1]).all()), "not strictly increasing: limits attained"
    assert float(values.min()) >= float(low) and float(values.max()) <= float(high)
    for point in (-3.0, 0.5, 2.0):
        assert float(value_at(sp.Float(point))) == pytest.approx(
            float(function.reference(torch.tensor(point, dtype=torch.float64))), rel=1e-12)
    far = function.reference(torch.tensor([-700.0, 700.0], dtype=torch.float64))
    for limit, value in zip((low, high), far.tolist(), strict=True):
        if limit.is_finite:
            assert value == pytest.approx(float(limit), abs=1e-9)
        else:
            assert abs(value) > 100
    assert function.bounded == (low.is_finite and high.is_finite)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_every_function_prints_in_spec_notation_and_latex_at_every_power(name):
    expr = FUNCTIONS[name].build(X)
    for power in (2, 3, sp.Rational(1, 2), -1):
        assert dsl_str(expr**power) and latex(expr**power)
    if FUNCTIONS[name].sympy_class is not None:
        assert name in dsl_str(expr) or name == "abs" and "abs(" in dsl_str(expr)


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_the_language_takes_it_and_check_agrees(name):
    """Each function in a spec: it compiles, and everything derived agrees with autograd
    on the reference's evaluation (1 + v^2 keeps log and sqrt in their domain)."""
    text = ("model F\ndim D = 3\nvisible v : real[D]\nparam a[D] ~ constant(0.5)\n"
            f"free energy G(v) = sum(i: v[i]^2 + a[i] * {name}(1 + v[i]^2) / 4)\n")
    report = check_compiled(compile_source(text, "f.edsl"))
    assert report.ok, report.table()


def test_the_table_drives_the_printers():
    """Every SymPy class of the table has its printer method from the table."""
    for cls in BY_CLASS:
        assert hasattr(TorchPrinter, f"_print_{cls.__name__}")


def test_a_function_without_torch_code_is_refused_not_printed_as_math():
    """The base printer would write math.tan(t) for a tensor: code that fails only when
    it runs. A derivative leaving the table must be added to it (docs/extending.md)."""
    assert "tan" not in FUNCTIONS
    with pytest.raises(NotImplementedError, match="no torch code for tan"):
        TorchPrinter({TENSOR}, {}).doprint(sp.diff(sp.tan(TENSOR), TENSOR))
    assert TorchPrinter({TENSOR}, {}).doprint(sp.diff(sp.tanh(TENSOR), TENSOR))
