"""Index-form algebra on SymPy expressions: small named rewrites and differentiation.

SymPy's own `diff` and `doit` on `Sum`s over symbolic ranges produce `Piecewise`
range conditions and `Product`s of exponentials; these rewrites keep sums in the
shape a person writes them, so nothing ever expands to per-element scalars:

- `make_sum`:   sum_i (a + b) = sum_i a + sum_i b;  sum_i c x_i = c sum_i x_i;
                sum_i c = N c;  sum_i delta(i, p) f(i) = f(p);  sum_i sum_j f = sum_{i,j} f.
- `substitute_index`: f(i)[i -> p] respecting bound indices (no capture).
- `diff`:       d/dv[p] with Kronecker deltas resolved at once and the chain rule
                through `let` definitions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import sympy as sp

from energydsl.compiler.sympy_functions import LogSumExp, softmax_weight

if TYPE_CHECKING:
    from energydsl.compiler.ir import Definition

Limit = tuple[sp.Idx, sp.Expr, sp.Expr]

REDUCTIONS = (sp.Sum, LogSumExp)
"""What binds indices: sums, and logsumexp (whose body is an exponent, so the rules of
`make_sum` do not apply inside-out to it; it is rebuilt with its own class)."""


def size_of(limit: Limit) -> sp.Expr:
    return limit[2] - limit[1] + 1


def bound_indices(expr: sp.Basic) -> set[sp.Symbol]:
    """Every index bound by a Sum anywhere inside `expr`."""
    found: set[sp.Symbol] = set()
    for node in sp.preorder_traversal(expr):
        if isinstance(node, REDUCTIONS):
            found.update(limit[0] for limit in node.limits)
    return found


def fresh_like(index: sp.Idx, avoid: set[str]) -> sp.Idx:
    """An index over the same range as `index` whose name is not in `avoid`."""
    base = str(index.label).rstrip("0123456789'")
    k = 1
    while f"{base}{k}" in avoid:
        k += 1
    avoid.add(f"{base}{k}")
    return sp.Idx(f"{base}{k}", (index.lower, index.upper))


def _names(expr: sp.Basic) -> set[str]:
    return {str(s) for s in expr.atoms(sp.Symbol, sp.Idx)} | {str(s) for s in bound_indices(expr)}


@functools.lru_cache(maxsize=16384)
def free_symbols(expr: sp.Basic) -> frozenset:
    """expr.free_symbols, cached: SymPy walks the whole tree on every call, and the
    recursive rewrites below ask it of every subexpression."""
    return frozenset(expr.free_symbols)


def substitute_index(expr: sp.Expr, old: sp.Symbol, new: sp.Expr) -> sp.Expr:
    """Replace the free index `old` by `new`; sums binding `old` are left alone and sums
    binding a symbol of `new` are renamed first, so nothing is captured."""
    if old not in free_symbols(expr):
        return expr
    if isinstance(expr, REDUCTIONS):
        body, limits = expr.function, list(expr.limits)
        clash = new.free_symbols if isinstance(new, sp.Basic) else set()
        avoid = _names(expr) | {str(s) for s in clash}
        for k, (idx, lo, hi) in enumerate(limits):
            if idx in clash:
                renamed = fresh_like(idx, avoid)
                body = substitute_index(body, idx, renamed)
                limits[k] = (renamed, lo, hi)
        return type(expr)(substitute_index(body, old, new), *limits)
    if isinstance(expr, sp.Indexed):
        return expr.base[tuple(new if i == old else i for i in expr.indices)]
    if expr == old:
        return new
    if not expr.args:
        return expr
    return expr.func(*[substitute_index(a, old, new) for a in expr.args])


def _delta_partner(factor: sp.Expr, index: sp.Symbol) -> sp.Symbol | None:
    if isinstance(factor, sp.KroneckerDelta):
        a, b = factor.args
        if a == index and b != index:
            return b
        if b == index and a != index:
            return a
    return None


def make_sum(body: sp.Expr, limits: Iterable[Limit]) -> sp.Expr:
    """The normal form of sum_{limits} body (see the module docstring for the rules)."""
    limits = [tuple(limit) for limit in limits]
    body = sp.sympify(body)
    if not limits:
        return body
    if body == 0:
        return sp.S.Zero
    if isinstance(body, sp.Add):
        return sp.Add(*[make_sum(term, limits) for term in body.args])
    if isinstance(body, sp.Sum):  # sum_i sum_j f = sum_{i,j} f
        inner_limits = list(body.limits)
        outer_names = {str(limit[0]) for limit in limits}
        inner = body.function
        avoid = _names(body) | outer_names
        for k, (idx, lo, hi) in enumerate(inner_limits):
            if str(idx) in outer_names:
                renamed = fresh_like(idx, avoid)
                inner = substitute_index(inner, idx, renamed)
                inner_limits[k] = (renamed, lo, hi)
        return make_sum(inner, limits + inner_limits)
    factors = list(body.args) if isinstance(body, sp.Mul) else [body]
    # sum_i delta(i, p) f(i) = f(p)
    for limit in limits:
        index = limit[0]
        for k, factor in enumerate(factors):
            partner = _delta_partner(factor, index)
            if partner is not None:
                rest = sp.Mul(*(factors[:k] + factors[k + 1:]))
                remaining = [lim for lim in limits if lim[0] != index]
                return make_sum(substitute_index(rest, index, partner), remaining)
    # sum_i c x_i = c sum_i x_i ;  sum_i c = N c
    indices = {limit[0] for limit in limits}
    outside = [f for f in factors if not (f.free_symbols & indices)]
    inside = [f for f in factors if f.free_symbols & indices]
    scale = sp.Mul(*outside)
    used = set().union(*(f.free_symbols for f in inside)) if inside else set()
    kept = []
    for limit in limits:
        if limit[0] in used:
            kept.append(limit)
        else:
            scale = scale * size_of(limit)
    if not kept:
        return scale * sp.Mul(*inside)
    inner = sp.Mul(*inside)
    if isinstance(inner, sp.Sum):
        return scale * make_sum(inner.function, [*kept, *inner.limits]) \
            if not ({str(lim[0]) for lim in kept} & {str(lim[0]) for lim in inner.limits}) \
            else scale * sp.Sum(inner, *kept)
    return scale * sp.Sum(inner, *kept)


def normalise(expr: sp.Expr) -> sp.Expr:
    """Rebuild bottom-up with every Sum in `make_sum` normal form."""
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Idx)):
        return expr
    if isinstance(expr, sp.Sum):
        return make_sum(normalise(expr.function), expr.limits)
    return expr.func(*[normalise(a) for a in expr.args])


def contains_sum(expr: sp.Basic) -> bool:
    return any(isinstance(node, sp.Sum) for node in sp.preorder_traversal(expr))


def has_outer_sum(expr: sp.Basic) -> bool:
    """A sum reachable through +, * and powers only (not inside a function): a term
    that is itself a contraction, as opposed to an elementwise value like 1 - g."""
    if isinstance(expr, sp.Sum):
        return True
    if isinstance(expr, (sp.Add, sp.Mul)):
        return any(has_outer_sum(a) for a in expr.args)
    if isinstance(expr, sp.Pow):
        return has_outer_sum(expr.base)
    return False


def is_deviation(expr: sp.Expr) -> bool:
    """Whether expr is x - sum(j: softmax[j] x[j]) (a term is a sum weighted by
    exp(e - logsumexp(e))): a deviation from a softmax-weighted mean, which the second
    derivative of a logsumexp multiplies by x again. Kept whole, sum(k: w[k] (x[k] -
    xbar) x[k]) is a variance computed without cancellation; distributed, it is
    sum(k: w[k] x[k]^2) - xbar^2, two numbers of size |x|^2 whose difference float32
    loses entirely once the weights are nearly one-hot."""
    return isinstance(expr, sp.Add) and any(
        term.has(softmax_weight) for term in expr.args if has_outer_sum(term))


def distribute(expr: sp.Expr) -> sp.Expr:
    """a (b + c) = a b + a c, but only where b or c contains a sum: contractions then
    reach the planner as separate einsums, while elementwise factors such as (1 - g)
    stay whole and are computed once (and so do deviations from a softmax-weighted mean,
    see `is_deviation`)."""
    if not expr.args or isinstance(expr, (sp.Indexed, sp.Idx)):
        return expr
    if isinstance(expr, sp.Sum):
        return make_sum(distribute(expr.function), expr.limits)
    args = [distribute(a) for a in expr.args]
    if isinstance(expr, sp.Mul):
        terms: list[sp.Expr] = [sp.S.One]
        for factor in args:
            if isinstance(factor, sp.Add) and has_outer_sum(factor) \
                    and not is_deviation(factor):
                terms = [t * part for t in terms for part in factor.args]
            else:
                terms = [t * factor for t in terms]
        if len(terms) > 1:
            return sp.Add(*[distribute(t) if isinstance(t, sp.Mul) else t for t in terms])
        return terms[0]
    return expr.func(*args)


DefinitionLookup = Callable[[sp.Basic], "Definition | None"]

_MAX_FACTOR_OPS = 40
_MAX_FACTOR_POWER = 8


def _factorable(expr: sp.Expr) -> bool:
    """Whether `sp.factor` is safe on `expr`: quick on the small real forms it is for
    (g (1 - g) -> 1 - 2 g), it can run for minutes on complex numbers (it factors over
    the Gaussian rationals), high powers (it expands them) or large expressions."""
    return (not expr.has(sp.I) and sp.count_ops(expr) <= _MAX_FACTOR_OPS
            and all(not p.exp.is_Number or abs(p.exp) <= _MAX_FACTOR_POWER
                    for p in expr.atoms(sp.Pow)))


def almost_everywhere(derivative: sp.Expr) -> sp.Expr:
    """A derivative where it exists: abs and relu differentiate to sign and a step, whose
    own derivatives (DiracDelta) are 0 almost everywhere, as autograd has them."""
    if not derivative.has(sp.DiracDelta):
        return derivative
    return derivative.replace(lambda n: isinstance(n, sp.DiracDelta), lambda n: sp.S.Zero)


def derivative_of(node: sp.Function) -> sp.Expr:
    """f'(a) for node = f(a), almost everywhere: sign(a)' is 0, not SymPy's unevaluated
    Derivative (sign has no fdiff of its own)."""
    y = sp.Dummy("y", real=True)
    return almost_everywhere(sp.diff(node.func(y), y)).xreplace({y: node.args[0]})


def diff(expr: sp.Expr, var: sp.IndexedBase, at: tuple[sp.Expr, ...],
         definition_of: DefinitionLookup | None = None) -> sp.Expr:
    """d expr / d var[at], in index form.

    `var[a]` differentiates to prod_k delta(a_k, at_k); sums resolve their deltas at
    once (make_sum); `let` symbols are differentiated through their definitions (chain
    rule), so derived expressions keep the named intermediates.
    """

    depends_cache: dict = {}

    def depends(atom: sp.Expr) -> bool:
        if atom not in depends_cache:
            depends_cache[atom] = d(atom) != 0
        return depends_cache[atom]

    def dependent_atoms(node: sp.Expr) -> set:
        """The tensors, lets and sums through which `node` depends on var."""
        if isinstance(node, (sp.Indexed, *REDUCTIONS)) or (
                isinstance(node, sp.Symbol) and definition_of and definition_of(node)):
            return {node} if depends(node) else set()
        found: set = set()
        for arg in node.args:
            found |= dependent_atoms(arg)
        return found

    def univariate(node: sp.Expr) -> sp.Expr | None:
        """d f(a) = f'(a) da when node is a function of one dependent atom a used more
        than once: g (1 - g) -> (1 - 2 g) dg, one term where the product rule gives two."""
        atoms = dependent_atoms(node)
        if len(atoms) != 1:
            return None
        (atom,) = atoms
        if sum(1 for n in sp.preorder_traversal(node) if n == atom) < 2:
            return None
        y = sp.Dummy("y", real=True)
        derivative = almost_everywhere(sp.diff(node.xreplace({atom: y}), y))
        if _factorable(derivative):
            derivative = sp.factor(derivative)
        return derivative.xreplace({y: atom}) * d(atom)

    def d(node: sp.Expr) -> sp.Expr:
        if node.is_Number or isinstance(node, sp.NumberSymbol):
            return sp.S.Zero
        if isinstance(node, (sp.Add, sp.Mul, sp.Pow)):
            shortcut = univariate(node)
            if shortcut is not None:
                return shortcut
        if isinstance(node, sp.Indexed):
            if node.base == var:
                return sp.Mul(*[sp.KroneckerDelta(a, b) for a, b in zip(node.indices, at,
                                                                        strict=True)])
            definition = definition_of(node.base) if definition_of else None
            if definition is not None:
                body = definition.body
                for formal, actual in zip(definition.indices, node.indices, strict=True):
                    body = substitute_index(body, formal, actual)
                return d(body)
            return sp.S.Zero
        if isinstance(node, sp.Symbol):
            if node == var:  # a scalar `let`, differentiated as a variable
                return sp.S.One
            definition = definition_of(node) if definition_of else None
            return d(definition.body) if definition is not None else sp.S.Zero
        if isinstance(node, sp.Sum):
            return make_sum(d(node.function), node.limits)
        if isinstance(node, LogSumExp):  # the softmax-weighted derivative of the body
            inner = d(node.function)
            return make_sum(softmax_weight(node.function, node) * inner, node.limits) \
                if inner != 0 else sp.S.Zero
        if isinstance(node, sp.Add):
            return sp.Add(*[d(a) for a in node.args])
        if isinstance(node, sp.Mul):
            args = node.args
            terms = []
            for k, factor in enumerate(args):
                dk = d(factor)
                if dk != 0:
                    terms.append(sp.Mul(*args[:k], dk, *args[k + 1:]))
            return sp.Add(*terms)
        if isinstance(node, sp.Pow):
            base, exponent = node.args
            d_base, d_exponent = d(base), d(exponent)
            result = sp.S.Zero
            if d_base != 0:
                result += exponent * base ** (exponent - 1) * d_base
            if d_exponent != 0:
                result += node * sp.log(base) * d_exponent
            return result
        if isinstance(node, sp.KroneckerDelta):
            return sp.S.Zero
        if isinstance(node, sp.Function) and len(node.args) == 1:
            inner = d(node.args[0])
            if inner == 0:
                return sp.S.Zero
            return derivative_of(node) * inner
        if isinstance(node, sp.Function):  # logaddexp(a, b): its partial derivatives
            return sp.Add(*[node.fdiff(k + 1) * d(arg) for k, arg in enumerate(node.args)
                            if d(arg) != 0])
        if not (node.free_symbols & _var_symbols):
            return sp.S.Zero
        raise NotImplementedError(f"cannot differentiate {type(node).__name__}: {node}")

    _var_symbols = {var} if isinstance(var, sp.Symbol) else {var.label}
    return d(expr)


def fold_definitions(expr: sp.Expr, definitions) -> sp.Expr:
    """Write a let's definition back as its name wherever it appears, e.g.
    sigmoid(u[h]) -> g[h] when `let g[h] = sigmoid(u[h])`: derived formulas then read
    as a person would write them, and reuse the named value."""
    for definition in definitions:
        body = definition.body
        if isinstance(body, (sp.Indexed, sp.Symbol)) or not body.args:
            continue
        wilds = {index: sp.Wild(f"w{k}") for k, index in enumerate(definition.indices)}
        pattern = body
        for index, wild in wilds.items():
            pattern = substitute_index(pattern, index, wild)
        if isinstance(definition.base, sp.IndexedBase):
            replacement = definition.base[tuple(wilds.values())]
        else:
            replacement = definition.base
        expr = expr.replace(pattern, replacement)
    return expr


_GENERIC_NAMES = tuple("ijklmpqrstuvwabcdefgh")


@functools.lru_cache(maxsize=1024)
def _range_size(lower: sp.Expr, upper: sp.Expr) -> sp.Expr:
    return sp.simplify(upper - lower + 1)


def canonicalise(expr: sp.Expr, pools: dict[sp.Expr, list[str]],
                 symmetric: frozenset = frozenset()) -> sp.Expr:
    """Rename bound indices after a fixed pool per range (the spec's own names first) and
    write symmetric matrices with sorted indices (L[j, i] -> L[i, j]). Alpha-equivalent
    terms then become identical, so SymPy adds them up: 1/2 sum(i: L[p, i] y[i]) + 1/2
    sum(j: y[j] L[j, p]) = sum(i: L[i, p] y[i]) for a symmetric L."""
    free = {str(s) for s in expr.free_symbols}

    def names_for(limit: Limit) -> list[str]:
        size = _range_size(limit[1], limit[2])
        return list(pools.get(size, [])) + [n for n in _GENERIC_NAMES]

    def first_position(body: sp.Expr, index: sp.Symbol) -> int:
        for position, node in enumerate(sp.preorder_traversal(body)):
            if node == index:
                return position
        return 1 << 30

    def visit(node: sp.Expr, scope: set[str]) -> sp.Expr:
        if isinstance(node, REDUCTIONS):
            body, limits = node.function, list(node.limits)
            order = sorted(range(len(limits)), key=lambda k: first_position(body, limits[k][0]))
            taken = set(scope) | free
            temporaries = []
            for k in order:
                idx, lo, hi = limits[k]
                temporary = sp.Idx(f"_canon{k}", (lo, hi))
                body = substitute_index(body, idx, temporary)
                temporaries.append((k, temporary))
            for k, temporary in temporaries:
                _, lo, hi = limits[k]
                name = next(n for n in names_for(limits[k]) if n not in taken)
                taken.add(name)
                new = sp.Idx(name, (lo, hi))
                body = substitute_index(body, temporary, new)
                limits[k] = (new, lo, hi)
            inner_scope = scope | {str(limit[0]) for limit in limits}
            return node.func(visit(body, inner_scope), *limits)
        if isinstance(node, sp.Indexed):
            if node.base in symmetric and len(node.indices) == 2:
                return node.base[tuple(sorted(node.indices, key=str))]
            return node
        if not node.args or isinstance(node, sp.Idx):
            return node
        return node.func(*[visit(a, scope) for a in node.args])

    for _ in range(2):  # sorting symmetric indices can change the order of first use
        expr = visit(expr, set())
    return expr


def tidy(expr: sp.Expr, model) -> sp.Expr:
    """A derived formula in the form a person writes it: the spec's lets folded back in
    by name, sums normalised and distributed, bound indices renamed after the spec's own
    (`model`: the SymbolicModel whose lets and index names to use)."""
    expr = distribute(normalise(fold_definitions(expr, model.used_definitions)))
    return canonicalise(expr, model.index_pools, model.symmetric)
