"""Vector constants: `const s[D] = [0.5, 1.0, 2.0]` and `const T[D, K] = 0.0`.

A fixed tensor read with indices like a parameter, held by the generated module as a
buffer (moved, converted and saved with it, never learnt), replaceable in the constructor
by a tensor of exactly its shape; each misuse a positioned compile error."""

from __future__ import annotations

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module
from energydsl.compiler.show import render
from energydsl.errors import SpecError

from support import load_class, randomise

LISTED = """\
model Listed
dim D = 3
dim K = 2
const s[D] = [0.5, 1, 2 * 1.5]
const T[D, K] = 0.25
visible v : real[D]
param W[D, K] ~ normal(0.1)
free energy F(v) = sum(i: s[i] * v[i]^2) - sum(k: softplus(sum(i: T[i, k] * W[i, k] * v[i])))
"""

# A GB-RBM with a listed per-pixel std: hidden units, conditionals and the enumerated
# normaliser all see sigma.
SCALED = """\
model Scaled
dim D = 3
dim K = 2
const sigma[D] = [0.5, 1.0, 2.0]
visible v : real[D]
hidden h : binary[K]
param W[D, K] ~ normal(0.1)
param b[D] ~ zeros
param c[K] ~ zeros
energy E(v, h) = sum(i: (v[i] - b[i])^2 / (2 * sigma[i]^2))
               - sum(i, j: v[i] / sigma[i] * W[i, j] * h[j]) - sum(j: c[j] * h[j])
"""


def _class(text: str, name: str = "vector_constants"):
    compiled = compile_source(text, f"{name}.edsl")
    return getattr(load_module(compiled.source, name), compiled.derivation.name)


@pytest.fixture(scope="module")
def listed():
    return _class(LISTED, "listed")


@pytest.fixture(scope="module")
def scaled_gbrbm():
    return load_class("scaled_gbrbm")[0]


# ---------------------------------------------------------------------------- the module
def test_both_forms_become_buffers_with_the_spec_values(listed):
    model = listed()
    assert torch.equal(model.s, torch.tensor([0.5, 1.0, 3.0]))
    assert torch.equal(model.T, torch.full((3, 2), 0.25))
    assert {"s", "T"} <= set(model.state_dict())
    assert {"s", "T"} <= dict(model.named_buffers()).keys()
    assert "s" not in dict(model.named_parameters())
    assert not model.s.requires_grad


def test_filled_constant_follows_the_sizes_given(listed):
    model = listed(D=3, K=5)
    assert model.T.shape == (3, 5) and bool((model.T == 0.25).all())


def test_buffers_follow_double_and_to(listed):
    model = listed()
    assert model.s.dtype == torch.float32
    assert model.double().s.dtype == torch.float64
    moved = listed().to(torch.float64)
    assert moved.s.dtype == moved.T.dtype == moved.W.dtype == torch.float64
    v = torch.randn(4, 3, dtype=torch.float64)
    assert moved.free_energy(v).dtype == torch.float64
    assert torch.isfinite(moved.sm_loss(v))


def test_state_dict_round_trip_carries_the_constant(listed):
    source = listed(s=torch.tensor([2.0, 3.0, 4.0]))
    target = listed()
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.s, torch.tensor([2.0, 3.0, 4.0]))


def test_constructor_value_replaces_the_spec_value(listed):
    torch.manual_seed(0)
    spec = listed(dtype=torch.float64)
    given = listed(s=[2.0, -1.0, 0.5], dtype=torch.float64)
    given.W.data.copy_(spec.W)
    assert given.s.dtype == torch.float64 and given.s.tolist() == [2.0, -1.0, 0.5]
    v = torch.randn(5, 3, dtype=torch.float64)
    assert not torch.allclose(given.free_energy(v), spec.free_energy(v))
    # the quadratic term is sum_i s_i v_i^2: the difference is exactly that of the two s
    difference = given.free_energy(v) - spec.free_energy(v)
    expected = (v.square() * (given.s - spec.s)).sum(dim=1)
    torch.testing.assert_close(difference, expected)


def test_constructor_value_is_converted_and_copied(listed):
    value = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    model = listed(s=value)
    assert model.s.dtype == torch.float32
    model64 = listed(s=value, dtype=torch.float64)
    value[0] = 9.0
    assert model64.s[0] == 1.0  # a copy, not the caller's tensor


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"s": torch.ones(2)}, r"s must have shape \(3,\) \(D,\), got \(2,\)"),
    ({"s": torch.ones(3, 1)}, r"s must have shape \(3,\) \(D,\), got \(3, 1\)"),
    ({"T": torch.zeros(2, 3)}, r"T must have shape \(3, 2\) \(D, K\), got \(2, 3\)"),
    ({"D": 5, "s": torch.ones(3)}, r"s must have shape \(5,\) \(D,\), got \(3,\)"),
    ({"s": [1.0, float("nan"), 2.0]}, "s must be finite"),
    ({"T": torch.full((3, 2), float("inf"))}, "T must be finite"),
    ({"D": 5}, r"s: the spec lists 3 values but its shape here is \(5,\) \(D,\); pass s as "
               "a tensor of that shape"),
])
def test_constructor_rejects_a_wrong_value(listed, kwargs, message):
    with pytest.raises(ValueError, match=message):
        listed(**kwargs)


def test_listed_constant_at_another_size_takes_a_tensor(listed):
    model = listed(D=5, s=torch.arange(1.0, 6.0))
    assert model.s.shape == (5,) and model.free_energy(torch.randn(2, 5)).shape == (2,)


# ---------------------------------------------------------------------------- compile errors
HEAD = "model M\ndim D = 4\ndim K = 2\nvisible v : real[D]\n"
ENERGY = "energy E(v) = sum(i: v[i]^2)\n"

ERRORS = {
    "list without shape": (
        HEAD + "const s = [1, 2, 3, 4]\n" + ENERGY, 5, 11,
        "a list of values makes a vector constant, which needs its shape: "
        "'const s[D] = [...]'"),
    "list with several axes": (
        HEAD + "const T[D, K] = [1, 2]\n" + ENERGY, 5, 17,
        "a list of values gives a constant with one axis, but 'T' has shape [D, K]; fill it "
        "with one value instead: 'const T[D, K] = 0.0'"),
    "list too short": (
        HEAD + "const s[D] = [1, 2, 3]\n" + ENERGY, 5, 14,
        "'s' lists 3 values but its dimension D is 4"),
    "empty list": (
        HEAD + "const s[D] = []\n" + ENERGY, 5, 14,
        "'s' lists 0 values but its dimension D is 4"),
    "number out of range": (
        HEAD + "const s[D] = [1, 2, 1e999, 4]\n" + ENERGY, 5, 21,
        "number 1e999 is out of range (beyond 1e308)"),
    "number that is 0 in float64": (
        HEAD + "const s[D] = [1, 2, 1e-999, 4]\n" + ENERGY, 5, 21,
        "number 1e-999 is too small: it is 0 in floating point"),
    "entry that is a function": (
        HEAD + "const s[D] = [1, exp(1), 2, 3]\n" + ENERGY, 5, 18,
        "only numbers, dimensions and constants can appear here"),
    "shape that is not a dimension": (
        HEAD + "const s[Q] = 1.0\n" + ENERGY, 5, 9,
        "'Q' is not a dimension (declare it with 'dim')"),
    "in a dimension": (
        HEAD + "const s[D] = 1.0\ndim N = 2 * s\n" + ENERGY, 6, 13,
        "'s' is a vector constant [D], not a number: only dimensions and numbers can "
        "appear here"),
    "in a constant": (
        HEAD + "const s[D] = 1.0\nconst c = 2 * s\n" + ENERGY, 6, 15,
        "'s' is a vector constant [D], not a number: only numbers, dimensions and scalar "
        "constants can appear here"),
    "in another vector constant": (
        HEAD + "const s[D] = 1.0\nconst t[D] = [1, 2, s, 4]\n" + ENERGY, 6, 21,
        "'s' is a vector constant [D], not a number: only numbers, dimensions and scalar "
        "constants can appear here"),
    "in an initialiser": (
        HEAD + "const s[D] = 1.0\nparam W[D] ~ constant(s)\n" + ENERGY, 6, 23,
        "'s' is a vector constant [D], not a number: only numbers, dimensions and scalar "
        "constants can appear here"),
    "in grid": (
        HEAD + "const s[D] = 1.0\nparam L[D, D] where symmetric, mask(grid(s, 2, 4))\n"
        + ENERGY, 6, 42,
        "'s' is a vector constant [D], not a number: only numbers, dimensions and scalar "
        "constants can appear here"),
    "bare in an expression": (
        HEAD + "const s[D] = 1.0\nenergy E(v) = sum(i: v[i]^2) * s\n", 6, 32,
        "'s' has 1 index but is used as s"),
    "too many indices": (
        HEAD + "const s[D] = 1.0\nenergy E(v) = sum(i, j: v[i]^2 * s[i, j])\n", 6, 34,
        "'s' has 1 index but is used as s[i, j]"),
    "dimension mismatch": (
        HEAD + "const s[K] = 1.0\nenergy E(v) = sum(i: v[i]^2 * s[i])\n", 6, 33,
        "dimension mismatch: index 'i' ranges over D (axis 1 of 'v' at 6:24) but indexes "
        "axis 1 of 's', of size K"),
    "declared twice": (
        HEAD + "const s[D] = 1.0\nparam s[D]\n" + ENERGY, 6, 7,
        "'s' is already declared (line 5)"),
}


@pytest.mark.parametrize("case", ERRORS, ids=list(ERRORS))
def test_each_mistake_is_a_positioned_error(case):
    text, line, column, message = ERRORS[case]
    with pytest.raises(SpecError) as caught:
        compile_source(text, "x.edsl")
    first = caught.value.format("x.edsl", text).split("\n")[0]
    assert first == f"x.edsl:{line}:{column}: error: {message}"


def test_a_failed_vector_constant_is_reported_once():
    text = HEAD + "const s[D] = [1, 2]\nenergy E(v) = sum(i: s[i] * v[i]^2)\n"
    with pytest.raises(SpecError) as caught:
        compile_source(text, "x.edsl")
    assert len(caught.value.diagnostics) == 1


# ---------------------------------------------------------------------------- derivations
@pytest.mark.parametrize("text", [LISTED, SCALED], ids=["listed", "scaled"])
def test_check_passes(text):
    report = check_compiled(compile_source(text, "x.edsl"))
    assert report.ok, report.table()
    assert len(report.rows) >= 10


def test_check_cycles_a_listed_constant_to_its_sizes():
    text = SCALED.replace("dim D = 3", "dim D = 8").replace(
        "[0.5, 1.0, 2.0]", "[0.5, 1.0, 2.0, 0.7, 1.5, 0.9, 1.1, 3.0]")
    report = check_compiled(compile_source(text, "x.edsl"))
    assert report.sizes["D"] == 5 and report.ok, report.table()


def _gbrbm(cls, sigma: torch.Tensor, seed: int):
    model = cls(D=sigma.shape[0], K=4, sigma=sigma, dtype=torch.float64)
    randomise(model, 0.5, seed)
    return model


def test_free_energy_of_the_spec_matches_its_closed_form(scaled_gbrbm):
    """F = sum_i (v_i - b_i)^2 / (2 sigma_i^2) - sum_j softplus(c_j + sum_i W_ij v_i / sigma_i)."""
    generator = torch.Generator().manual_seed(3)
    sigma = 0.5 + torch.rand(6, generator=generator, dtype=torch.float64)
    model = _gbrbm(scaled_gbrbm, sigma, seed=4)
    v = torch.randn(7, 6, generator=generator, dtype=torch.float64)
    W, b, c = model.W.detach(), model.b.detach(), model.c.detach()
    expected = ((v - b) ** 2 / (2 * sigma**2)).sum(dim=1) \
        - torch.nn.functional.softplus(c + (v / sigma) @ W).sum(dim=1)
    torch.testing.assert_close(model.free_energy(v), expected, rtol=1e-12, atol=1e-12)


def test_conditionals_of_the_spec_match_their_closed_forms(scaled_gbrbm):
    """E[h | v] = sigmoid(c + W^T (v / sigma)), E[v | h] = b + sigma * (W h)."""
    generator = torch.Generator().manual_seed(5)
    sigma = 0.5 + torch.rand(6, generator=generator, dtype=torch.float64)
    model = _gbrbm(scaled_gbrbm, sigma, seed=6)
    v = torch.randn(7, 6, generator=generator, dtype=torch.float64)
    h = torch.bernoulli(torch.full((7, 4), 0.5, dtype=torch.float64), generator=generator)
    W, b, c = model.W.detach(), model.b.detach(), model.c.detach()
    torch.testing.assert_close(model.mean_h(v), torch.sigmoid(c + (v / sigma) @ W))
    torch.testing.assert_close(model.mean_v(h), b + sigma * (h @ W.T))


def test_scaled_gbrbm_moves_with_to_float64(scaled_gbrbm):
    model = scaled_gbrbm(D=6, K=4, sigma=torch.linspace(0.5, 2.0, 6)).to(torch.float64)
    assert model.sigma.dtype == torch.float64
    assert torch.allclose(model.sigma, torch.linspace(0.5, 2.0, 6, dtype=torch.float64))
    v = torch.randn(3, 6, dtype=torch.float64)
    assert model.score(v).dtype == torch.float64


def test_show_lists_the_constants():
    text = render(compile_source(LISTED, "x.edsl").derivation)
    assert "Constant:     s[D] = [0.5, 1.0, 3.0]" in text
    assert "Constant:     T[D, K] = 0.25 in every entry" in text
    latex = render(compile_source(LISTED, "x.edsl").derivation, as_latex=True)
    assert r"s \in \mathbb{R}^{D} = (0.5, 1.0, 3.0)" in latex
