"""Stage 5, derive (discrete data): what F says about one flipped entry of v.

For binary {0, 1} or spin {-1, +1} data, derivatives of F mean nothing; the estimators
that apply (ratio matching, pseudo-likelihood) need instead, for every entry p,
    gain[p] = F(v with entry p flipped) - F(v),
and p(v[p] | the other entries) = sigmoid(gain[p]). Flipping entry p adds
delta(i, p) d[p] to v[i], with d[p] = (low + high) - 2 v[p]; each sum over i then splits
at i = p:
    sum(i: B(i, delta(i, p))) = sum(i: B(i, 0)) + B(p, 1) - B(p, 0)
(exact, since delta(i, p) is 1 only at i = p). The first sum is F's own term, so it
cancels in the difference, and what is left costs one pass over the data, not D forward
passes: for an RBM, gain[p] = -a[p] d[p] - sum(j: softplus(u[j] + W[p, j] d[p]) -
softplus(u[j])).

Per sample, with g = gain:
    ratio matching (Hyvarinen 2007)  sum(p: sigmoid(-g[p])^2)
    -log pseudo-likelihood           sum(p: softplus(-g[p]))
"""

from __future__ import annotations

import sympy as sp

from energydsl.compiler.algebra import REDUCTIONS, make_sum, normalise, substitute_index
from energydsl.compiler.functions import softplus
from energydsl.compiler.ir import Definition, FreeEnergyModel
from energydsl.compiler.lets import inline
from energydsl.compiler.sympy_functions import sigmoid

_MAX_EXPANDED_OPS = 60  # a local difference is expanded (a (v + d) - a v = a d) up to this


def _deltas_on(expr: sp.Expr, index: sp.Idx, at: sp.Idx) -> bool:
    return expr.has(sp.KroneckerDelta(index, at))


def _without_delta(expr: sp.Expr, index: sp.Idx, at: sp.Idx) -> sp.Expr:
    delta = sp.KroneckerDelta(index, at)
    return expr.xreplace({delta: sp.S.Zero})


def _local(change: sp.Expr) -> sp.Expr:
    """B(p, 1) - B(p, 0) in its simplest form: polynomial differences expanded (so a
    linear term leaves a[p] d[p] alone), anything with a function kept as a difference."""
    if change.has(sp.Function) or sp.count_ops(change) > _MAX_EXPANDED_OPS:
        return change
    return sp.expand(change, power_base=False, power_exp=False, log=False)


def _split_sums(expr: sp.Expr, at: sp.Idx) -> sp.Expr:
    """Every sum over an index that meets `at` in a delta, split at that index = at."""
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Idx)):
        return expr
    if isinstance(expr, REDUCTIONS):
        body = _split_sums(expr.function, at)
        for k, (index, _, _) in enumerate(expr.limits):
            # a logsumexp keeps its delta: planned as an identity matrix, exact but D
            # times the work (its split, log(exp(l) - exp(b0) + exp(b1)), cancels)
            if not isinstance(expr, sp.Sum) or not _deltas_on(body, index, at):
                continue
            others = [limit for j, limit in enumerate(expr.limits) if j != k]
            kept = make_sum(_without_delta(body, index, at), expr.limits)
            change = substitute_index(body, index, at) - substitute_index(
                _without_delta(body, index, at), index, at)
            return _split_sums(kept, at) + _split_sums(make_sum(_local(change), others), at)
        return type(expr)(body, *expr.limits)
    return expr.func(*[_split_sums(a, at) for a in expr.args])


def flip_gain(model: FreeEnergyModel, free_energy: sp.Expr, at: sp.Idx, values: tuple) -> sp.Expr:
    """F(v with entry `at` flipped between values[0] and values[1]) - F(v), in index
    form (lets that depend on v written out, then folded back by the caller's tidy)."""
    symbolic = model.symbolic
    visible = symbolic.visible
    low, high = values
    written = inline(free_energy, visible, symbolic.definition_of)
    # the step d[p] stays a symbol while the sums split and the differences expand, so a
    # linear term leaves W[p, k] d[p], one product, not W[p, k] - 2 W[p, k] v[p]
    step = sp.Dummy("d", real=True)
    flipped = written.replace(
        lambda node: isinstance(node, sp.Indexed) and node.base == visible,
        lambda node: node + sp.KroneckerDelta(node.indices[0], at) * step)
    gain = normalise(_split_sums(normalise(flipped), at)) - normalise(written)
    return gain.xreplace({step: (low + high) - 2 * visible[at]})


def flip_definitions(model: FreeEnergyModel, free_energy: sp.Expr, at: sp.Idx, values: tuple,
                     tidy) -> dict[str, Definition]:
    """The flip gain and the two objectives built on it (see the module docstring)."""
    gain = tidy(flip_gain(model, free_energy, at, values))
    base = sp.IndexedBase("flip_gain", shape=(at.upper + 1,), real=True)
    limits = [(at, 0, at.upper)]
    return {
        "flip_gain": Definition(base, (at,), gain),
        "rm_objective": Definition(sp.Symbol("rm_objective", real=True), (),
                                   make_sum(sigmoid(-base[at]) ** 2, limits)),
        "pl_objective": Definition(sp.Symbol("pl_objective", real=True), (),
                                   make_sum(softplus(-base[at]), limits)),
    }
