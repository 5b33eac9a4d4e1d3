"""The check's reference interpreter (energydsl.check.reference) against formulas written
out by hand: it must be right on its own, since `energydsl check` trusts it."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from energydsl.check.reference import Reference, check_sizes, hidden_configurations
from energydsl.compiler.driver import analyse
from energydsl.errors import UsageError


def checked(source: str):
    return analyse(source).model.symbolic.checked


GBRBM = """model R
dim D = 3
dim K = 2
visible v : real[D]
hidden h : binary[K]
param W[D, K]
param b[K]
energy E(v, h) = sum(i: v[i]^2) / 2 - sum(i, k: v[i] * W[i, k] * h[k]) - sum(k: b[k] * h[k])
"""


def test_energy_and_free_energy_match_the_formula_written_out():
    model = checked(GBRBM)
    g = torch.Generator().manual_seed(0)
    W, b = torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(2, generator=g,
                                                                             dtype=torch.float64)
    v = torch.randn(4, 3, generator=g, dtype=torch.float64)
    reference = Reference(model, {"D": 3, "K": 2}, {}, {"W": W, "b": b})
    states = [torch.tensor(s, dtype=torch.float64) for s in itertools.product((0, 1), repeat=2)]
    for n in range(4):
        x = v[n]
        energies = [float(x @ x / 2 - x @ W @ s - b @ s) for s in states]
        by_hand = -math.log(sum(math.exp(-e) for e in energies))
        assert float(reference.free_energy(v)[n]) == pytest.approx(by_hand, rel=1e-12)
        paired = reference.energy(v[n:n + 1].expand(4, 3), {"h": torch.stack(states)}, paired=True)
        assert paired.tolist() == pytest.approx(energies, rel=1e-12)


def test_posterior_sums_to_one_and_follows_the_conditional():
    model = checked(GBRBM)
    g = torch.Generator().manual_seed(1)
    params = {"W": torch.randn(3, 2, generator=g, dtype=torch.float64),
              "b": torch.randn(2, generator=g, dtype=torch.float64)}
    v = torch.randn(5, 3, generator=g, dtype=torch.float64)
    states, probability = Reference(model, {"D": 3, "K": 2}, {}, params).posterior(v)
    assert torch.allclose(probability.sum(dim=1), torch.ones(5, dtype=torch.float64))
    marginal = probability @ states["h"]  # P(h_k = 1 | v), independent units
    assert torch.allclose(marginal, torch.sigmoid(v @ params["W"] + params["b"]), atol=1e-12)


def test_a_gaussian_hidden_unit_is_integrated_by_quadrature():
    model = checked("model G\ndim D = 1\ndim K = 1\nvisible v : real[D]\nhidden h : real[K]\n"
                    "param w[D, K]\nenergy E(v, h) = sum(i: v[i]^2) / 2 + sum(k: h[k]^2) / 2"
                    " - sum(i, k: v[i] * w[i, k] * h[k])\n")
    w = torch.tensor([[0.7]], dtype=torch.float64)
    v = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    # int exp(-(v^2/2 + h^2/2 - v w h)) dh = sqrt(2 pi) exp(-v^2 (1 - w^2) / 2)
    by_hand = v[:, 0] ** 2 * (1 - w[0, 0] ** 2) / 2 - math.log(math.sqrt(2 * math.pi))
    free_energy = Reference(model, {"D": 1, "K": 1}, {}, {"w": w}).free_energy(v)
    assert torch.allclose(free_energy, by_hand, atol=1e-8)


def test_configurations_are_counted_and_capped():
    model = checked(GBRBM.replace("binary", "spin"))
    states, log_weight = hidden_configurations(model, {"D": 3, "K": 3}, torch.float64)
    assert states["h"].shape == (8, 3) and set(states["h"].unique().tolist()) == {-1.0, 1.0}
    assert torch.all(log_weight == 0)
    with pytest.raises(UsageError, match="more than 2,000,000"):
        hidden_configurations(model, {"D": 3, "K": 22}, torch.float64)


def test_check_sizes_stay_small_and_honour_overrides_and_derived_dims():
    model = checked(GBRBM.replace("dim K = 2", "dim K = 40"))
    assert check_sizes(model, {}) == {"D": 3, "K": 3}
    assert check_sizes(model, {"K": 4}) == {"D": 3, "K": 4}
    derived = checked("model M\ndim H = 3\ndim W = 2\ndim D = H * W\nvisible v : real[D]\n"
                      "param a[D]\nenergy E(v) = sum(i: a[i] * v[i]^2)\n")
    assert check_sizes(derived, {"H": 2}) == {"H": 2, "W": 2, "D": 4}
