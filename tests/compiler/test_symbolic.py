"""The symbolic core stays in index form: nothing depends on the sizes D and K."""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.driver import analyse
from energydsl.compiler.notation import dsl_str

from support import SPECS


def _formulas(text: str) -> list[str]:
    derivation = analyse(text)
    return [dsl_str(e) for e in (derivation.free_energy, derivation.score,
                                 derivation.laplacian, derivation.sm_objective)]


def test_derivation_does_not_depend_on_the_sizes():
    text = (SPECS / "gbrbm.edsl").read_text()
    small = text.replace("dim D = 784", "dim D = 3").replace("dim K = 64", "dim K = 2")
    huge = text.replace("dim D = 784", "dim D = 1000000").replace("dim K = 64", "dim K = 50000")
    assert _formulas(small) == _formulas(text) == _formulas(huge)


def test_expressions_are_sums_over_symbolic_ranges():
    derivation = analyse((SPECS / "gaussian_rbm.edsl").read_text())
    sums = [node for node in sp.preorder_traversal(derivation.laplacian)
            if isinstance(node, sp.Sum)]
    assert sums, "the Laplacian keeps its sum over units"
    for node in sums:
        for _, lower, upper in node.limits:
            assert lower == 0 and upper.free_symbols, "ranges stay symbolic (0 .. D-1)"
    assert sp.Symbol("D", integer=True, positive=True) in derivation.laplacian.free_symbols


def test_gaussian_rbm_free_energy_keeps_its_constant():
    derivation = analyse((SPECS / "gaussian_rbm.edsl").read_text())
    K = sp.Symbol("K", integer=True, positive=True)
    constant = derivation.free_energy.as_independent(*[
        s for s in derivation.free_energy.free_symbols if s != K])[0]
    assert sp.simplify(constant + K * sp.log(2 * sp.pi) / 2) == 0
