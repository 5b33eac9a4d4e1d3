"""`log density p(v, h) = ...`: the joint log density, -E(v, h), marginalised like an
energy (against the same model written as an energy, and against enumeration)."""

from __future__ import annotations

import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module

HEAD = """model M
dim D = 4
dim K = 3
visible v : real[D]
hidden h : binary[K]
param W[D, K] ~ normal(0.5)
param c[K] ~ normal(0.5)
"""
ENERGY = "sum(i: v[i]^2) / 2 - sum(i, k: v[i] * W[i, k] * h[k]) - sum(k: c[k] * h[k])"


def test_the_joint_log_density_is_minus_the_energy():
    as_density = compile_source(HEAD + f"log density p(v, h) = -({ENERGY})\n", "p.edsl")
    as_energy = compile_source(HEAD + f"energy E(v, h) = {ENERGY}\n", "e.edsl")
    first = load_module(as_density.source).M(dtype=torch.float64)
    second = load_module(as_energy.source).M(dtype=torch.float64)
    second.load_state_dict(first.state_dict())
    v = torch.randn(5, 4, dtype=torch.float64)
    h = torch.bernoulli(torch.full((5, 3), 0.5, dtype=torch.float64))
    for method in ("free_energy", "score", "laplacian", "mean_h"):
        torch.testing.assert_close(getattr(first, method)(v), getattr(second, method)(v))
    torch.testing.assert_close(first.energy(v, h), second.energy(v, h))
    torch.testing.assert_close(first.log_partition(), second.log_partition())
    report = check_compiled(as_density)
    assert report.ok, report.table()
