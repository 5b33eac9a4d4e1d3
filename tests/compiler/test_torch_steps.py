"""The lowering of one pairwise contraction to torch code: each form against
torch.einsum on random operands, and the dot products that einsum would run as N tiny
matrix products lowered to a matrix-vector product or a row-wise dot product."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from energydsl.compiler.plan.program import Operand
from energydsl.compiler.plan.torch_steps import pairwise_code

SIZES = {"n": 5, "a": 3, "i": 4, "j": 2}


def _shape_code(index: sp.Basic) -> str:
    return str(SIZES[str(index)])


@pytest.mark.parametrize(("equation", "form"), [
    ("ni,i->n", "@"), ("in,i->n", "@"), ("i,ni->n", "@"),
    ("na,na->n", ".sum("), ("an,na->n", ".sum("), ("nai,nai->na", ".sum("),
    ("nai,ina->n", ".sum("), ("ni,ij->nj", "@"), ("na,ni->nai", "*"), ("nai,ai->n", None),
])
def test_each_lowering_computes_the_einsum(equation, form):
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn([SIZES[c] for c in t], generator=generator, dtype=torch.float64)
               for t in terms]
    indices = {c: sp.Symbol(c) for c in "naij"}
    operands = [Operand(f"x{k}", tuple(indices[c] for c in t)) for k, t in enumerate(terms)]
    code = pairwise_code(operands, inputs, out, tuple(indices[c] for c in out), _shape_code)
    if form is not None:
        assert form in code and "einsum" not in code, code
    value = eval(code, {"torch": torch, **{f"x{k}": t for k, t in enumerate(tensors)}})  # noqa: S307
    torch.testing.assert_close(value, torch.einsum(equation, *tensors))
