"""The printer's products: scalar factors gathered into one Python number in front of the
tensors, so a term like -2 t / sigma^2 costs one tensor operation (and one backward), not
two; values against SymPy's own evaluation."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from energydsl.compiler.emit.torch_printer import TorchPrinter

T, U = sp.symbols("t u", real=True)            # tensor placeholders
SIGMA, GAMMA = sp.symbols("sigma gamma", positive=True)  # Python scalars


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("expr", "operations"), [
    (-2 * T / SIGMA**2, 1), (2 * GAMMA * T, 1), (sp.Rational(1, 2) * T / SIGMA**2, 1),
    (-T / SIGMA**2, 2),                  # neg and div, as before: nothing to gather
    (4 * GAMMA * T * U / SIGMA, 2), (T / SIGMA, 1), (-T, 1),
    (U - 2 * T / SIGMA**2, 2), (U + 3 * GAMMA * T / SIGMA, 2),
])
def test_scalar_factors_are_one_operation(expr, operations):
    code = TorchPrinter({T, U}, {SIGMA: "sigma", GAMMA: "gamma"}).doprint(expr)
    t, u = torch.tensor([0.3, -1.2], dtype=torch.float64), torch.tensor([2.0, 0.5],
                                                                         dtype=torch.float64)
    scope = {"torch": torch, "math": math, "t": t, "u": u, "sigma": 1.7, "gamma": 0.4}
    with _Count() as counter:
        value = eval(code, scope)  # noqa: S307
    assert counter.count == operations, code
    expected = sp.lambdify((T, U, SIGMA, GAMMA), expr)(t.numpy(), u.numpy(), 1.7, 0.4)
    torch.testing.assert_close(value, torch.as_tensor(expected), rtol=1e-15, atol=0)
