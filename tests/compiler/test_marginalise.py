"""The marginaliser (energydsl.compiler.marginalise): per-unit splitting of the energy, the
free energy against brute-force enumeration, what it refuses, and the bounds that decide
convergence conditions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import sympy as sp
from index_numerics import value

from energydsl.compiler.driver import analyse
from energydsl.compiler.functions import sigmoid, softplus
from energydsl.compiler.marginalise import _always_true, _bounds
from energydsl.errors import SpecError

RBM = """model R
dim D = 3
dim K = 2
visible v : real[D]
hidden h : {domain}[K]
param W[D, K]
param b[K]
energy E(v, h) = sum(i: v[i]^2) / 2 - sum(i, k: v[i] * W[i, k] * h[k]) - sum(k: b[k] * h[k])
"""


@pytest.mark.parametrize(("domain", "values"), [("binary", (0, 1)), ("spin", (-1, 1))])
def test_the_free_energy_is_minus_log_sum_over_hidden_states(domain, values):
    derivation = analyse(RBM.format(domain=domain))
    model = derivation.model
    (unit,) = model.hidden.values()
    assert unit.index in unit.log_partition.free_symbols  # per generic unit, index form
    assert model.visible_energy.has(model.symbolic.visible)
    rng = np.random.default_rng(1)
    numbers = {"W": rng.normal(size=(3, 2)), "b": rng.normal(size=2), "v": rng.normal(size=3)}
    x, W, b = numbers["v"], numbers["W"], numbers["b"]
    energies = [x @ x / 2 - x @ W @ np.array(s) - b @ np.array(s)
                for s in itertools.product(values, repeat=2)]
    expected = -math.log(sum(math.exp(-e) for e in energies))
    assert value(derivation.free_energy, numbers) == pytest.approx(expected, rel=1e-12)


def test_a_gaussian_unit_integrates_and_a_gamma_unit_records_its_condition():
    derivation = analyse("model G\ndim D = 2\ndim K = 1\nvisible v : real[D]\n"
                         "hidden h : real[K]\nparam W[D, K]\n"
                         "energy E(v, h) = sum(i: v[i]^2) / 2 + sum(k: h[k]^2)"
                         " - sum(i, k: v[i] * W[i, k] * h[k])\n")
    (unit,) = derivation.model.hidden.values()
    assert set(unit.coefficients) == {"a", "b"} and unit.coefficients["a"] == 1
    gamma = analyse("model M\ndim D = 2\ndim K = 1\nconst g = 1.5\nvisible v : real[D]\n"
                    "hidden h : positive[K]\n"
                    "energy E(v, h) = sum(i: v[i]^2) / 2 + sum(k: h[k] + (1 - g) * log(h[k]))\n")
    assert [str(c) for c in gamma.model.conditions] == ["g > 0"]


@pytest.mark.parametrize(("energy", "message"), [
    ("sum(i: v[i]^2) - sum(k, l: h[k] * h[l])", r"units h\[k\] and h\[l\] interact"),
    ("sum(i: v[i]^2) - sigmoid(sum(k: h[k]))", "the units of 'h' interact"),
])
def test_interacting_units_are_refused_with_the_reason(energy, message):
    text = ("model I\ndim D = 2\ndim K = 2\nvisible v : real[D]\nhidden h : binary[K]\n"
            f"energy E(v, h) = {energy}\n")
    with pytest.raises(SpecError, match=message):
        analyse(text)


def test_bounds_see_what_assumptions_cannot():
    x = sp.Symbol("x", real=True)
    assert _always_true(sp.tanh(x) < 1) and _always_true(sigmoid(x) > 0)
    assert _always_true(sp.tanh(x) ** 2 < 1) and _always_true(softplus(x) > 0)
    assert not _always_true(x < 1) and not _always_true(sp.tanh(x) < sp.Rational(1, 2))
    (low, low_attained), (high, _) = _bounds(2 * sp.tanh(x) + 1)
    assert (low, high, low_attained) == (-1, 3, False)
