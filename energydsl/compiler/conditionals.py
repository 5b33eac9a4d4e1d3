"""Stage 5b, conditionals: what the energy says beyond F(v).

- Per hidden variable, p(h_u | v) from its unit energy e(h_u; v): the mean E[h|v] and
  the sampler's parameters (Bernoulli probability, Gaussian mean/std, Gamma shape/rate),
  with the continuous moments integrated by SymPy.
- The three terms of the latent-EBM score-matching theorem (Swersky et al. 2011):
      J = E_v sum_i [1/2 E[d_i E]^2 + var[d_i E] - E[d_i^2 E]],  moments over p(h|v),
  using that the units are independent given v and d_i E is linear in each unit.
- The visible conditional p(v | h) when E is quadratic in v: precision P(h) = d^2 E/dv^2
  and linear term b(h) = -dE/dv at v = 0 (mean P^-1 b), isotropic when P = c I.
- The Gaussian structure of F when F itself is quadratic in v (closed-form normaliser).
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import (
    diff,
    make_sum,
)
from energydsl.compiler.algebra import tidy as algebra_tidy
from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.ir import (
    Conditionals,
    Definition,
    Derivation,
    HiddenConditional,
    HiddenUnit,
    VisibleConditional,
)
from energydsl.compiler.lets import at_zero, depends_on, quadratic
from energydsl.compiler.sympy_functions import sigmoid

# ---------------------------------------------------------------- unit moments

def _moments(unit: HiddenUnit) -> tuple[sp.Expr, sp.Expr, dict[str, sp.Expr]]:
    """E[h], var[h] and the sampler's parameters for one unit given v (its domain's)."""
    return DOMAINS[unit.domain].moments(unit.symbol, unit.energy, unit.coefficients)


# ---------------------------------------------------------------- helpers

def _diagonal_part(precision: sp.Expr, p: sp.Idx, q: sp.Idx) -> sp.Expr | None:
    """d[p] when precision = d[p] delta(p, q) with d free of q (then p(v | h) has
    independent entries: no D x D factorisation)."""
    delta = sp.KroneckerDelta(p, q)
    d = sp.expand(precision).coeff(delta)
    if d == 0 or q in d.free_symbols:
        return None
    if sp.expand(precision - d * delta) != 0:
        return None
    return d


def _isotropic_part(precision: sp.Expr, p: sp.Idx, q: sp.Idx) -> sp.Expr | None:
    """c when precision = c delta(p, q) with c free of p and q."""
    d = _diagonal_part(precision, p, q)
    return d if d is not None and p not in d.free_symbols else None


# ---------------------------------------------------------------- the stage

def derive_conditionals(derivation: Derivation) -> Conditionals:
    model = derivation.model
    symbolic = model.symbolic
    visible = symbolic.visible
    lookup = symbolic.definition_of
    p = derivation.index
    dim = symbolic.checked.visible.shape[0]
    q = symbolic.index(dim, "q")
    definitions: dict[str, Definition] = {}

    def tidy(expr: sp.Expr) -> sp.Expr:
        return algebra_tidy(expr, symbolic)

    # p(h | v), per hidden variable
    hidden: dict[str, HiddenConditional] = {}
    for name, unit in model.hidden.items():
        mean, variance, sampler = _moments(unit)
        hidden[name] = HiddenConditional(
            unit, tidy(mean), variance, {k: tidy(v) for k, v in sampler.items()})
        definitions[f"_mean_{name}"] = Definition(
            sp.IndexedBase(f"_mean_{name}"), (unit.index,), hidden[name].mean)
        for key, value in hidden[name].sampler.items():
            # a coupled Gaussian's precision P[k, l] has a second index
            extra = sorted((i for i in value.free_symbols if isinstance(i, sp.Idx)
                            and i != unit.index), key=str)
            definitions[f"_{key}_{name}"] = Definition(
                sp.IndexedBase(f"_{key}_{name}"), (unit.index, *extra), value)

    discrete = DOMAINS[symbolic.checked.visible.domain]
    if discrete.discrete:  # binary or spin data: no derivatives, no Gaussians
        return Conditionals(hidden, None, "the data are discrete", None, None, None,
                            definitions, _discrete_visible(derivation, discrete.low_high,
                                                           definitions, tidy))

    # the three score-matching terms
    sm_terms, unavailable = None, ""
    if model.hidden:
        terms = _sm_terms(derivation, hidden, tidy)
        if isinstance(terms, str):
            unavailable = terms
        else:
            sm_terms = terms
            for key, value in terms.items():
                definitions[f"_{key}"] = Definition(sp.Symbol(f"_{key}"), (), value)

    # the joint energy E(v, h) itself (Gibbs diagnostics, AIS, exact normalisers)
    if model.energy is not None and model.hidden:
        definitions["_energy"] = Definition(sp.Symbol("_energy"), (), tidy(model.energy))

    # p(v | h) when the joint energy is quadratic in v
    conditional = None
    if model.energy is not None and model.hidden:
        first = diff(model.energy, visible, (p,), lookup)
        precision = tidy(diff(first, visible, (q,), lookup))
        # quadratic in v (a precision of zero: linear, no Gaussian to draw from)
        if quadratic(first, precision, visible, lookup):
            linear = tidy(-at_zero(first, symbolic))
            conditional = VisibleConditional(p, q, precision, linear,
                                             _isotropic_part(precision, p, q),
                                             _diagonal_part(precision, p, q))
            definitions["_visible_precision"] = Definition(
                sp.IndexedBase("_visible_precision"), (p, q), precision)
            definitions["_visible_linear"] = Definition(
                sp.IndexedBase("_visible_linear"), (p,), linear)
            if conditional.isotropic is not None:
                definitions["_visible_scale"] = Definition(
                    sp.Symbol("_visible_scale"), (), conditional.isotropic)
            elif conditional.diagonal is not None:
                definitions["_visible_diagonal"] = Definition(
                    sp.IndexedBase("_visible_diagonal"), (p,), tidy(conditional.diagonal))

    # a Gaussian model: F quadratic in v (not merely linear); not one whose score
    # propagates through three or more nested nonlinear functions
    gaussian = None
    hessian = sp.S.Zero if derivation.forward else tidy(
        diff(-derivation.score, visible, (q,), lookup))
    if quadratic(-derivation.score, hessian, visible, lookup):
        gaussian = hessian
        definitions["_gaussian_precision"] = Definition(
            sp.IndexedBase("_gaussian_precision"), (p, q), hessian)
    return Conditionals(hidden, sm_terms, unavailable, conditional, gaussian,
                        (p, q) if gaussian is not None else None, definitions)


def _discrete_visible(derivation: Derivation, values: tuple, definitions: dict, tidy
                      ) -> sp.Expr | None:
    """P(v[p] = high | h) = sigmoid(-(high - low) dE/dv[p]) when E is linear in each entry
    of v with no products of entries (the slope is free of v): the visible units are then
    independent given h, as the hidden ones are given v. Records the joint energy and the
    slope as definitions (the enumerated normaliser sums the visible layer with them)."""
    model = derivation.model
    symbolic = model.symbolic
    if model.energy is None or not model.hidden:
        return None
    visible, lookup, p = symbolic.visible, symbolic.definition_of, derivation.index
    slope = tidy(diff(model.energy, visible, (p,), lookup))
    definitions["_energy"] = Definition(sp.Symbol("_energy"), (), tidy(model.energy))
    if slope == 0 or depends_on(slope, visible, lookup):
        return None
    low, high = values
    definitions["_visible_slope"] = Definition(sp.IndexedBase("_visible_slope"), (p,), slope)
    probability = sigmoid(-(high - low) * slope)
    definitions["_visible_probability"] = Definition(
        sp.IndexedBase("_visible_probability"), (p,), probability)
    return probability


def _sm_terms(derivation: Derivation, hidden: dict[str, HiddenConditional], tidy
              ) -> dict[str, sp.Expr] | str:
    model = derivation.model
    symbolic = model.symbolic
    visible, lookup, p = symbolic.visible, symbolic.definition_of, derivation.index
    first = diff(model.visible_energy, visible, (p,), lookup)
    mean_second = diff(first, visible, (p,), lookup)
    variance = sp.S.Zero
    for name, conditional in hidden.items():
        unit = conditional.unit
        s = unit.symbol
        g = sp.expand(diff(unit.energy, visible, (p,), lookup))
        g2 = sp.expand(diff(g, visible, (p,), lookup))
        if "precision" in unit.coefficients:
            return (f"the units of '{name}' are coupled, so dE/dv has no per-unit variance "
                    "(the compiler derives none for a joint Gaussian)")
        slope, slope2 = sp.diff(g, s), sp.diff(g2, s)
        if sp.diff(slope, s) != 0 or sp.diff(slope2, s) != 0:
            return (f"dE/dv is not linear in the hidden variable '{name}', so its variance "
                    "needs moments the compiler does not derive")
        limits = [(unit.index, 0, unit.index.upper)]
        if DOMAINS[unit.domain].exclusive:  # one-hot: var = sum p s^2 - (sum p s)^2
            variance += make_sum(slope**2 * conditional.mean, limits) \
                - make_sum(slope * conditional.mean, limits)**2
        else:
            variance += make_sum(slope**2 * conditional.variance, limits)
        mean_second += make_sum(slope2 * conditional.mean + g2.subs(s, 0), limits)
    limits = [(p, 0, p.upper)]
    score = derivation.definitions["score"].base
    return {
        "squared_error": make_sum(score[p] ** 2, limits) / 2,
        "variance": tidy(make_sum(variance, limits)),
        "curvature": tidy(-make_sum(mean_second, limits)),
    }
