"""Conformance of the hidden-unit domains (energydsl.compiler.domains): every registered
domain's log-partition, moments, sampler code, enumeration and quadrature agree with
brute-force sums or numerical integrals of exp(-e) over the domain, and a spec with a
hidden layer of it compiles and passes `check`. A domain that lacks a part, or gets
one wrong, fails here."""

from __future__ import annotations

import math

import pytest
import sympy as sp
import torch

from energydsl.check.checks import check_compiled
from energydsl.compiler.algebra import substitute_index
from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.driver import compile_source
from energydsl.compiler.emit.torch_printer import TorchPrinter
from energydsl.compiler.notation import dsl_str
from energydsl.compiler.sympy_functions import LogSumExp

COUPLING = 0.8  # the value of x in the domain's example energy
UNIT_DOMAINS = [name for name, domain in DOMAINS.items() if not domain.exclusive]
"""Domains whose units are independent: each unit's parts are checked on their own."""


def _unit(name: str) -> tuple[sp.Symbol, sp.Expr]:
    """The example unit energy e(h) of the domain, x = COUPLING, as SymPy."""
    domain = DOMAINS[name]
    h = sp.Symbol("h", **domain.assumptions)
    text = domain.example.format(h="h", x=str(COUPLING)).replace("^", "**")
    return h, sp.sympify(text, locals={"h": h, "log": sp.log})


def _numeric(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The domain's own nodes and the log of exp(-e) times the quadrature weight."""
    domain = DOMAINS[name]
    h, e = _unit(name)
    quadrature = domain.quadrature(torch.float64)
    energy = sp.lambdify(h, e, "math")
    values = torch.tensor([energy(float(node)) for node in quadrature.nodes.tolist()],
                          dtype=torch.float64)
    return quadrature.nodes, quadrature.log_weights - values


def _independent_integral(name: str, power: int = 0) -> float:
    """sum or integral of h^power exp(-e(h)) by brute force, not by the domain's nodes."""
    domain = DOMAINS[name]
    h, e = _unit(name)
    f = sp.lambdify(h, h**power * sp.exp(-e), "math")
    if domain.discrete:
        return sum(f(float(value)) for value in domain.values)
    from scipy import integrate

    low = 0.0 if domain.assumptions.get("positive") else -math.inf
    return integrate.quad(f, low, math.inf, epsabs=1e-13, epsrel=1e-12)[0]


@pytest.mark.parametrize("name", UNIT_DOMAINS)
def test_log_partition_is_the_sum_or_integral(name):
    domain = DOMAINS[name]
    h, e = _unit(name)
    marginal = domain.log_partition("h", h, e, dsl_str)
    assert marginal.condition in (True, sp.true) or bool(marginal.condition)
    assert float(marginal.log_partition) == pytest.approx(
        math.log(_independent_integral(name)), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name", UNIT_DOMAINS)
def test_quadrature_integrates_exp_minus_e(name):
    _, log_integrand = _numeric(name)
    assert float(torch.logsumexp(log_integrand, 0)) == pytest.approx(
        math.log(_independent_integral(name)), rel=1e-8, abs=1e-10)


@pytest.mark.parametrize("name", UNIT_DOMAINS)
def test_moments_are_the_posterior_moments(name):
    domain = DOMAINS[name]
    h, e = _unit(name)
    marginal = domain.log_partition("h", h, e, dsl_str)
    mean, variance, _ = domain.moments(h, e, marginal.coefficients or {})
    z = _independent_integral(name)
    first, second = _independent_integral(name, 1) / z, _independent_integral(name, 2) / z
    assert float(mean) == pytest.approx(first, rel=1e-9, abs=1e-12)
    assert float(variance) == pytest.approx(second - first**2, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("name", UNIT_DOMAINS)
def test_the_sampler_code_draws_from_the_conditional(name):
    """The emitted draw, run with the parameters' values: mean and variance of 200,000
    draws within 5 standard errors of the exact ones."""
    domain = DOMAINS[name]
    h, e = _unit(name)
    marginal = domain.log_partition("h", h, e, dsl_str)
    mean, variance, params = domain.moments(h, e, marginal.coefficients or {})
    count = 200_000
    names = {key: f"_{key}" for key in params}
    scope = {f"_{key}": torch.full((count,), float(value), dtype=torch.float64)
             for key, value in params.items()}
    body = "\n".join("    " + line for line in domain.draw(names))
    source = f"def draw(generator):\n{body}\n"
    namespace = {"torch": torch, **scope}
    exec(source, namespace)  # noqa: S102 - the domain's own generated code
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0) if domain.takes_generator else None
    draws = namespace["draw"](generator)
    error = math.sqrt(float(variance) / count)
    assert float(draws.mean()) == pytest.approx(float(mean), abs=5 * error)
    assert float(draws.var()) == pytest.approx(float(variance), rel=0.05)
    if not domain.takes_generator:
        with pytest.raises(ValueError, match="global generator"):
            namespace["draw"](torch.Generator())


@pytest.mark.parametrize("name", [n for n in UNIT_DOMAINS if DOMAINS[n].discrete])
def test_enumerated_values(name):
    domain = DOMAINS[name]
    flags = torch.tensor([0.0, 1.0])
    values = eval(domain.enumerated("flags"), {"flags": flags})  # noqa: S307
    assert values.tolist() == list(domain.values)


@pytest.mark.parametrize("name", list(DOMAINS))
def test_a_hidden_layer_of_each_domain_compiles_and_checks(name):
    domain = DOMAINS[name]
    term = domain.example.format(h="h[k]", x="sum(i: W[i, k] * v[i])")
    text = ("model L\ndim D = 3\ndim K = 2\nvisible v : real[D]\n"
            f"hidden h : {name}[K]\nparam W[D, K]\n"
            f"energy E(v, h) = sum(i: v[i]^2) / 2 + sum(k: {term.lstrip('+ ')})\n")
    compiled = compile_source(text, "layer.edsl")
    report = check_compiled(compiled, {"K": 1} if not domain.discrete else {})
    assert report.ok, report.table()
    assert "def sample_h(" in compiled.source


def test_printer_prints_the_parameters_of_every_domain():
    """The moments' expressions are printable as code (they reach generated methods)."""
    for name in UNIT_DOMAINS:
        h, e = _unit(name)
        marginal = DOMAINS[name].log_partition("h", h, e, dsl_str)
        _, _, params = DOMAINS[name].moments(h, e, marginal.coefficients or {})
        for value in params.values():
            assert TorchPrinter(set(), {}).doprint(value)


# ---------------------------------------------------------------- a group of units

GROUP_COUPLINGS = (0.8, -0.3, 1.1)  # x[k] of each unit of a hidden variable


def _group(name: str):
    """The domain's log of the sum/integral over a whole variable of len(GROUP_COUPLINGS)
    units (or 1 for continuous domains), and the moments' expressions, as numbers."""
    domain = DOMAINS[name]
    count = len(GROUP_COUPLINGS) if domain.discrete else 1
    size = sp.Symbol("K", integer=True, positive=True)
    k = sp.Idx("k", size)
    x = sp.IndexedBase("x", real=True)
    h = sp.Symbol("h", **domain.assumptions)
    text = domain.example.format(h="h", x="x_k").replace("^", "**")
    e = sp.sympify(text, locals={"h": h, "log": sp.log, "x_k": x[k]})
    marginal = domain.log_partition("h", h, e, dsl_str)
    log_z, coefficients = domain.group_log_partition(
        sp.expand(marginal.log_partition), marginal.coefficients or {}, k)
    mean, _, _ = domain.moments(h, e, coefficients)
    values = {x[j]: GROUP_COUPLINGS[j] for j in range(count)}

    def written_out(node: sp.Expr) -> sp.Expr:
        """Every sum and logsumexp over the units as the explicit terms."""
        if isinstance(node, (sp.Sum, LogSumExp)):
            (index, _, _), = node.limits
            terms = [substitute_index(written_out(node.function), index, sp.Integer(j))
                     for j in range(count)]
            return sp.Add(*terms) if isinstance(node, sp.Sum) \
                else sp.log(sp.Add(*[sp.exp(t) for t in terms]))
        return node.func(*[written_out(a) for a in node.args]) if node.args else node

    def number(expr: sp.Expr, unit: int | None = None) -> float:
        expr = written_out(expr)
        if unit is not None:
            expr = substitute_index(expr, k, sp.Integer(unit))
        return float(expr.subs(values).subs(size, count).evalf())

    return count, number(log_z), [number(mean, j) for j in range(count)]


@pytest.mark.parametrize("name", list(DOMAINS))
def test_the_log_partition_of_a_variable_sums_its_joint_states(name):
    """log of sum over `states` (every joint state, or quadrature node) of exp(-sum_k
    e(h_k; x_k)) against the domain's group log-partition; the means against the states'
    posterior-weighted average."""
    domain = DOMAINS[name]
    count, log_z, means = _group(name)
    states = domain.states(count, torch.float64)
    assert len(states.log_weights) == domain.state_count(count)
    h, _ = _unit(name)
    x = sp.Symbol("x", real=True)
    e = sp.lambdify((h, x), sp.sympify(domain.example.format(h="h", x="x").replace("^", "**"),
                                       locals={"h": h, "log": sp.log, "x": x}), "math")
    log_terms = torch.tensor([
        float(weight) - sum(e(float(node[j]), GROUP_COUPLINGS[j]) for j in range(count))
        for node, weight in zip(states.nodes, states.log_weights, strict=True)],
        dtype=torch.float64)
    tolerance = 1e-9 if domain.discrete else 1e-6
    assert float(torch.logsumexp(log_terms, 0)) == pytest.approx(log_z, rel=tolerance)
    posterior = torch.softmax(log_terms, 0)
    expected = (posterior[:, None] * states.nodes).sum(0)
    assert means == pytest.approx(expected.tolist(), rel=tolerance, abs=1e-9)
