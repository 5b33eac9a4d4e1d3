"""The marginaliser (energydsl.compiler.marginalise): per-unit splitting of the energy, the
free energy against brute-force enumeration, what it refuses, and the bounds that decide
convergence conditions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from index_numerics import value

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import analyse, compile_source
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


def test_a_factor_free_of_the_units_times_their_sum_is_no_interaction():
    """sum(k: h[k] * sum(i: v[i])) is linear in each unit: the factor over v does not
    depend on k (it used to be refused as 'the units of h interact')."""
    text = ("model L\ndim D = 3\ndim K = 2\nvisible v : real[D]\nhidden h : binary[K]\n"
            "param b[K]\nenergy E(v, h) = sum(i: v[i]^2) / 2 - sum(k: h[k] * sum(i: v[i]))"
            " - sum(k: b[k] * h[k])\n")
    derivation = analyse(text)
    x, b = np.array([0.3, -1.1, 0.4]), np.array([0.2, -0.5])
    energies = [x @ x / 2 - sum(s) * x.sum() - b @ np.array(s)
                for s in itertools.product((0, 1), repeat=2)]
    expected = -math.log(sum(math.exp(-e) for e in energies))
    assert value(derivation.free_energy, {"v": x, "b": b}) == pytest.approx(expected, rel=1e-12)
    assert check_compiled(compile_source(text, "l.edsl")).ok


@pytest.mark.parametrize("spec", [
    # a Gamma unit's shape through a let: converges for alpha[k] > 0
    "hidden s : positive[K]\nparam la[K]\nparam W[D, K]\nlet alpha[k] = exp(la[k])\n"
    "energy E(v, s) = sum(i: v[i]^2) / 2 + sum(k: s[k] * (1 + sum(i: W[i, k] * v[i])^2 / 2)"
    " + (1 - alpha[k]) * log(s[k]))\n",
    # a Gaussian unit's precision through lets, one built on another
    "hidden h : real[K]\nparam lp[K]\nparam W[D, K]\nlet q[k] = softplus(lp[k])\n"
    "let p[k] = q[k] + tanh(lp[k])^2\nenergy E(v, h) = sum(i: v[i]^2) + sum(k: p[k] * h[k]^2"
    " / 2) - sum(i, k: v[i] * W[i, k] * h[k]) / 4\n",
])
def test_positivity_is_seen_through_lets(spec):
    text = "model P\ndim D = 3\ndim K = 2\nvisible v : real[D]\n" + spec
    report = check_compiled(compile_source(text, "p.edsl"))
    assert report.ok, report.table()


def test_a_let_of_unknown_sign_is_still_refused():
    text = ("model P\ndim D = 3\ndim K = 2\nvisible v : real[D]\nhidden h : real[K]\n"
            "param lp[K]\nlet p[k] = lp[k] + 1\n"
            "energy E(v, h) = sum(i: v[i]^2) + sum(k: p[k] * h[k]^2 - h[k] * sum(i: v[i]))\n")
    with pytest.raises(SpecError, match=r"the coefficient of h\^2, p\[k\], must be positive"):
        analyse(text)
