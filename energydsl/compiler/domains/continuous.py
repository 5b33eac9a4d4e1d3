"""Continuous units: real (Gaussian) and positive (Gamma-type).

Their unit energies are integrated by SymPy in closed form after the marginaliser has
replaced every sum and tensor entry by a placeholder, so the integrals are small and
cached whatever the spec's sizes:
- real: e = a h^2 + b h + c with a > 0, log z = log(pi / a) / 2 + b^2 / (4 a) - c;
  h | v ~ N(-b / (2 a), 1 / (2 a));
- positive: e = rate h + power log h + c with rate > 0 and power < 1 (a Gamma density
  with shape 1 - power), log z by SymPy's integral, with its convergence condition.
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

from energydsl.compiler.domains.base import Domain, Marginal, Quadrature, UnitFailure
from energydsl.compiler.domains.discrete import factored

_RATE = sp.Dummy("rate", positive=True)
_HS = sp.Symbol("h", positive=True)
_PRECISION = sp.Dummy("a", positive=True)
_U = sp.Symbol("u", real=True)
_S = sp.Symbol("s", positive=True)
_R = sp.Symbol("r", positive=True)
_A = sp.Symbol("a", positive=True)


def powers_of(e: sp.Expr, h: sp.Symbol) -> set[sp.Expr]:
    """The exponents of every power whose base involves `h` (and 1 if `h` occurs at all
    otherwise), found without expanding anything."""
    powers = {node.exp for node in e.atoms(sp.Pow) if node.base.has(h)}
    return powers | ({sp.S.One} if e.has(h) else set())


@lru_cache(maxsize=1)
def _log_gaussian_integral() -> sp.Expr:
    value, _ = sp.integrate(sp.exp(-_PRECISION * _U**2), (_U, -sp.oo, sp.oo), conds="separate")
    return sp.expand_log(sp.log(value), force=True)


@lru_cache(maxsize=1)
def _gaussian_variance() -> sp.Expr:
    """E[u^2] under exp(-a u^2), by SymPy: 1 / (2 a)."""
    weight = sp.exp(-_A * _U**2)
    z = sp.integrate(weight, (_U, -sp.oo, sp.oo))
    return sp.simplify(sp.integrate(_U**2 * weight, (_U, -sp.oo, sp.oo)) / z)


class Gaussian(Domain):
    example = "- {h} * {x} + {h}^2"
    couples = True  # coupled units: energydsl.compiler.latent_gaussian

    def __init__(self, name: str) -> None:
        self.name = name

    def log_partition(self, name, h, e, show) -> Marginal:
        """int exp(-(a h^2 + b h + c)) dh over the reals, after completing the square."""
        poly = None
        if not powers_of(e, h) - {1, 2}:  # else not quadratic, and expanding may not end
            try:
                poly = sp.Poly(sp.expand(e), h)
            except sp.PolynomialError:
                poly = None
        if poly is None or poly.degree() > 2 or any(
                coeff.has(h) for coeff in poly.all_coeffs()):
            raise UnitFailure(f"cannot marginalise real hidden variable '{name}': its energy "
                              f"{show(e)} is not quadratic in {name}, so the integral has no "
                              "closed form")
        a, b, c = (poly.coeff_monomial(h**2), poly.coeff_monomial(h), poly.coeff_monomial(1))
        if poly.degree() < 2 or a.is_nonpositive:
            raise UnitFailure(f"the integral over real hidden variable '{name}' diverges: its "
                              f"energy {show(e)} is not bounded below in {name} (the "
                              f"coefficient of {name}^2 must be positive)")
        if not a.is_positive:
            raise UnitFailure(f"cannot show that the integral over '{name}' converges: the "
                              f"coefficient of {name}^2, {show(a)}, must be positive")
        log_z = sp.expand(sp.expand_log(_log_gaussian_integral().subs(_PRECISION, a),
                                        force=True)) + b**2 / (4 * a) - c
        return Marginal(log_z, True, {"a": a, "b": b})

    def moments(self, h, e, coefficients):
        if "precision" in coefficients:  # coupled units: z | v ~ N(P^-1 b, P^-1)
            mean, precision = coefficients["mean"], coefficients["precision"]
            return mean, coefficients["variance"], {"mean": mean, "precision": precision}
        a, b = coefficients["a"], coefficients["b"]
        mean = -b / (2 * a)
        variance = _gaussian_variance().subs(_A, a)
        return mean, variance, {"mean": mean, "std": sp.sqrt(variance)}

    def draw(self, params):
        if "precision" in params:  # mean + L^-T noise with P = L L^T: covariance P^-1
            return [f"mean = {params['mean']}",
                    f"factor = self._cholesky({params['precision']})",
                    "noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, "
                    "device=mean.device)",
                    "offset = torch.linalg.solve_triangular(factor.mT, noise[..., None], "
                    "upper=True)",
                    "return mean + offset[..., 0]"]
        return [f"mean = {params['mean']}",
                "noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, "
                "device=mean.device)",
                f"return mean + {params['std']} * noise"]

    def quadrature(self, dtype) -> Quadrature:
        """The trapezoidal rule, which converges geometrically for the smooth,
        fast-decaying integrands met here."""
        import math

        import torch

        step = 0.1
        nodes = torch.arange(-30.0, 30.0 + step / 2, step, dtype=dtype)
        return Quadrature(nodes, torch.full_like(nodes, math.log(step)))


@lru_cache(maxsize=64)
def _integrate_gamma(power: sp.Expr) -> tuple[sp.Expr, object]:
    integrand = _HS ** (-power) * sp.exp(-_RATE * _HS)
    result = sp.integrate(integrand, (_HS, 0, sp.oo), conds="separate")
    if not isinstance(result, tuple) or result[0].has(sp.Integral):
        raise ValueError("no closed form")
    return result


@lru_cache(maxsize=32)
def _gamma_moments(power: sp.Expr) -> tuple[sp.Expr, sp.Expr]:
    """E[s], E[s^2] for the density s^-power exp(-r s) on s > 0, by SymPy."""
    def integral(k: int) -> sp.Expr:
        value, _ = sp.integrate(_S ** (k - power) * sp.exp(-_R * _S), (_S, 0, sp.oo),
                                conds="separate")
        return value

    z = integral(0)
    return sp.gammasimp(integral(1) / z), sp.gammasimp(integral(2) / z)


class Gamma(Domain):
    example = "+ {h} * (1 + ({x})^2 / 2) + 1/2 * log({h})"
    assumptions = {"positive": True}
    takes_generator = False  # torch's Gamma sampler draws from the global generator

    def __init__(self, name: str) -> None:
        self.name = name

    def log_partition(self, name, h, e, show) -> Marginal:
        """int exp(-e) dh over h > 0 by SymPy, e.g. a Gamma-type unit a h + k log h."""
        parts = {} if powers_of(e, h) - {1} else sp.collect(sp.expand(e), [sp.log(h), h],
                                                            evaluate=False)
        if not parts or set(parts) - {sp.log(h), h, sp.S.One} or any(
                v.has(h) for v in parts.values()):
            raise UnitFailure(f"cannot marginalise positive hidden variable '{name}': its "
                              f"energy {show(e)} is not of the form a {name} + k log({name}) "
                              "+ c")
        rate = parts.get(h, sp.S.Zero)
        power = parts.get(sp.log(h), sp.S.Zero)
        constant = parts.get(sp.S.One, sp.S.Zero)
        if rate.is_nonpositive or rate == 0:
            raise UnitFailure(f"the integral over positive hidden variable '{name}' diverges: "
                              f"the coefficient of {name} must be positive")
        if not rate.is_positive:
            raise UnitFailure(f"cannot show that the integral over '{name}' converges: the "
                              f"coefficient of {name}, {show(rate)}, must be positive")
        if (power - 1).is_nonnegative:
            raise UnitFailure(f"the integral over positive hidden variable '{name}' diverges "
                              f"at {name} = 0: the coefficient of log({name}) is {show(power)}, "
                              f"so exp(-energy) grows like {show(1 / h**power)} near 0, whose "
                              "integral is infinite; the coefficient must be below 1")
        value, condition = _integrate_gamma(power)
        log_z = sp.expand(sp.expand_log(sp.log(value.subs(_RATE, rate)), force=True)) - constant
        log_z = log_z.replace(lambda x: isinstance(x, sp.log) and isinstance(x.args[0], sp.gamma),
                              lambda x: sp.loggamma(x.args[0].args[0]))
        return Marginal(log_z, condition, {"rate": rate, "power": power})

    def moments(self, h, e, coefficients):
        rate, power = coefficients["rate"], coefficients["power"]
        first, second = _gamma_moments(power)
        mean = first.subs(_R, rate)
        return (mean, factored(second.subs(_R, rate) - mean**2),
                {"shape": 1 - power, "rate": rate})

    def draw(self, params):
        return ["if generator is not None:",
                "    raise ValueError(\"Gamma draws use torch's global generator: \"",
                "                     \"seed it with torch.manual_seed\")",
                f"return torch.distributions.Gamma({params['shape']}, {params['rate']})"
                ".sample()"]

    def quadrature(self, dtype) -> Quadrature:
        """h = exp(s), dh = exp(s) ds, s over a wide range (the trapezoidal rule in s)."""
        import math

        import torch

        step = 0.1
        s = torch.arange(-120.0, 8.0 + step / 2, step, dtype=dtype)
        return Quadrature(torch.exp(s), s + math.log(step))
