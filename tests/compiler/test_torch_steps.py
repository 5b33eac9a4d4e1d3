"""The lowering of one pairwise contraction to torch code: each form against
torch.einsum on random operands, and the dot products that einsum would run as N tiny
matrix products lowered to a matrix-vector product or a row-wise dot product, and a
matrix applied to every sample's matrix to one GEMM (sums over a symmetric pair of
indices: test_symmetric.py)."""

from __future__ import annotations

import pytest
import sympy as sp
import torch

from energydsl.compiler.plan.program import BATCH, Operand
from energydsl.compiler.plan.torch_steps import pairwise_code

SIZES = {"n": 5, "a": 3, "i": 4, "j": 2, "k": 3, "b": 3}
INDICES = {c: BATCH if c == "n" else sp.Symbol(c) for c in SIZES}


def _shape_code(index: sp.Basic) -> str:
    return str(SIZES["n" if index == BATCH else str(index)])


@pytest.mark.parametrize(("equation", "form"), [
    ("ni,i->n", "@"), ("in,i->n", "@"), ("i,ni->n", "@"),
    ("na,na->n", ".sum("), ("an,na->n", ".sum("), ("nai,nai->na", ".sum("),
    ("nai,ina->n", ".sum("), ("ni,ij->nj", "@"), ("na,ni->nai", "*"), ("nai,ai->n", None),
    # a matrix applied to each sample's matrix: one GEMM, not N small ones
    ("ai,nij->naj", "@"), ("ia,nij->naj", ".T @"), ("ai,nji->naj", "transpose(1, 2)"),
    ("ai,nji->nja", "@"), ("ia,nji->nja", "@"),
    # each sample's vector times its matrix: a batched product on views
    ("ni,nij->nj", "unsqueeze(1)"), ("nj,nij->ni", "unsqueeze(2)"),
    # the summed block in another order in each operand: the one without the batch permuted
    ("nij,aji->na", "permute"), ("aji,nij->an", "permute"),
])
def test_each_lowering_computes_the_einsum(equation, form):
    inputs, out = equation.split("->")
    terms = inputs.split(",")
    generator = torch.Generator().manual_seed(0)
    tensors = [torch.randn([SIZES[c] for c in t], generator=generator, dtype=torch.float64)
               for t in terms]
    operands = [Operand(f"x{k}", tuple(INDICES[c] for c in t)) for k, t in enumerate(terms)]
    code = pairwise_code(operands, inputs, out, tuple(INDICES[c] for c in out), _shape_code)
    if form is not None:
        assert form in code and "einsum" not in code, code
    value = eval(code, {"torch": torch, **{f"x{k}": t for k, t in enumerate(tensors)}})  # noqa: S307
    torch.testing.assert_close(value, torch.einsum(equation, *tensors))
