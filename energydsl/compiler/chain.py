"""Derivatives of deep stacks of `let`s, layer by layer.

Differentiating through lets by substitution (`algebra.diff`) writes the score of an
L-layer network as nested sums over the units of every layer; squaring it and taking the
Laplacian then nests sums over pairs of units of every layer, whose cost and size grow
like H^(2L). Instead, with respect to the coordinates y of a base, each let l gets

    J_l[a, ..] = d l[..] / d y[a]          (its Jacobian, base index first, carried forward)
    S_l[..]    = sum(j, j': d^2B/dm[j] dm'[j'] sum(a: J_m[a, j] J_m'[a, j']))
                                           (its second-order term, B its body over lets m)

and the top expression Phi its adjoints adj_l = dPhi/dl (carried backward, one
matrix-vector product per layer, `base_adjoint`). Then

    score:     -sum(j: adj_u[j] A[j, p]) - dPsi/dv[p]
    Laplacian: -(S_Phi + sum(l, i: adj_l[i] S_l[i])) - Laplacian Psi

for F = Phi(u) + Psi(v) (`_Forward.laplacian`: the forward-mode Laplacian of a let is
linear in the Laplacians of what it reads, plus S_l; unrolled, each S_l is weighted by
its adjoint).

- The base is the first layer's let u = A v + c when every nonlinear dependence on v
  flows through it and it is smaller than v: y = Q^T v, the coordinates of A's row space
  (Q with orthonormal columns holding A's rows, R^T R = A A^T: `RowSpaceFactor`). There
  u = R^T y + c, so J_u[a, j] = R[a, j], and because Q has orthonormal columns the
  Laplacian in v of a function of u is its Laplacian in y. Q itself is never formed:
  the Jacobians read A through R^T R only, and the score goes back to v through A.
- Otherwise the base is v itself (y = v, J_v = the identity).

Per let, J_l = sum(j: dB/dm[j] J_m[a, j]): every layer costs one product with its
weights (one GEMM over the folded batch) and a sum of squares, and no intermediate
carries more than one pair of units. Each J, S and adjoint becomes a named definition
(`jac_g2`, `curv_g2`, `adj_g2`) the planner computes once (a Jacobian that is still a
Kronecker delta, or one tensor, stays inline so that the sums reading it collapse).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import sympy as sp

from energydsl.compiler.algebra import (
    bound_indices,
    diff,
    fresh_like,
    make_sum,
    normalise,
    substitute_index,
)
from energydsl.compiler.ir import Definition, FreeEnergyModel, SymbolicModel
from energydsl.compiler.lets import depends_on
from energydsl.compiler.sympy_functions import JacobianSquares, RowSpaceFactor

DEEP = 3
"""Nested nonlinear functions between v and F (`nesting_depth`) from which the forward
form is used. Up to two (a one-layer network under an expert nonlinearity, an RBM's
softplus) the substituted form has at most one pair of units per sum, plans into the
same contractions and reads as the seeds write it; from three its sums over pairs nest
one level per layer (a three-layer DEM: 40 GFLOP against 1 per step)."""


@dataclass(frozen=True)
class ChainForm:
    """The score and Laplacian of F by forward propagation, with the definitions they
    read (new ones, and lets rewritten to read them)."""

    score: sp.Expr  # free index: the score's
    laplacian: sp.Expr
    definitions: dict[str, Definition]
    jacobians: tuple[str, ...] = ()  # the named J definitions, first layer first


@dataclass(frozen=True)
class _Layer:
    """How a let (or the top) acts in a plain chain of layers: it reads one propagated
    let `reads`, through the weights P (m[j] -> sum(j: P[h, j] m[j]); None: unit by unit)
    and then a per-unit slope f[h] (None: 1), and its second-order term is
    curvature[h] sum(a: T[a, h]^2) with T what the slope multiplies."""

    reads: sp.Basic
    index: sp.Idx | None  # the unit index the slope and curvature are written at
    weights: sp.IndexedBase | None
    transposed: bool  # P written P[j, h]
    slope: sp.Expr | None
    curvature: sp.Expr


@dataclass
class _Propagated:
    """J and S of one let, as functions of the indices to read them at."""

    jacobian: Callable[[tuple, sp.Idx], sp.Expr]  # (the let's indices, the base index)
    second: Callable[[tuple], sp.Expr]  # its second-order term S, at the let's indices
    layer: _Layer | None = None  # the body as a layer of a plain chain, if it is one


class _Forward:
    def __init__(self, symbolic: SymbolicModel, base: sp.Basic, base_index: sp.Idx,
                 base_jacobian: Callable[[sp.Idx, sp.Idx], sp.Expr],
                 tidy: Callable[[sp.Expr], sp.Expr]) -> None:
        self.symbolic = symbolic
        self.tidy = tidy
        self.taken = symbolic.taken_names
        self.a = fresh_like(base_index, self.taken)
        self.definitions: dict[str, Definition] = {}
        self.known: dict[sp.Basic, _Propagated] = {
            base: _Propagated(lambda at, a: base_jacobian(at[0], a), lambda at: sp.S.Zero)}
        self.adjoints: dict[sp.Basic, Callable[[tuple], sp.Expr]] = {}  # base_adjoint's
        self.formals: dict[sp.Basic, tuple] = {base: (base_index,)}
        self.base = base
        self.order: list[Definition] = []  # the propagated lets, readers after what they read
        self.jacobians: list[str] = []  # the named J_l, in propagation order
        self.curvatures: list[str] = []  # the named S_l

    # ------------------------------------------------------------------ names
    def _fresh(self, formals: tuple) -> tuple:
        return tuple(fresh_like(i, self.taken) for i in formals)

    # ------------------------------------------------------------------ propagation
    def atoms(self, body: sp.Expr) -> list[sp.Basic]:
        """The propagated bases that body reads, in a fixed order."""
        found = {node.base if isinstance(node, sp.Indexed) else node
                 for node in sp.preorder_traversal(body)
                 if (isinstance(node, sp.Indexed) and node.base in self.known)
                 or (isinstance(node, sp.Symbol) and node in self.known)}
        return sorted(found, key=str)

    def propagate(self, body: sp.Expr, own: tuple, stem: str | None) -> _Propagated:
        """J and S of `body` (free indices `own`); named `jac_stem`, `curv_stem` unless
        stem is None (the caller inlines them)."""
        a = self.a
        jacobian_terms, second_terms = [], []
        atoms = self.atoms(body)
        partials = {}
        for m in atoms:
            at = self._fresh(self.formals[m])
            partial = diff(body, m, at)
            if partial != 0:
                partials[m] = (at, partial)
        seconds = {}
        for m, (at, partial) in partials.items():
            limits = [(i, i.lower, i.upper) for i in at]
            known = self.known[m]
            jacobian_terms.append(make_sum(partial * known.jacobian(at, a), limits))
            for m2, (at2_formal, _) in partials.items():
                at2 = self._fresh(at2_formal)
                second = diff(partial, m2, at2)
                seconds[(m, m2)] = (at2, second)
                if second == 0:
                    continue
                a1 = fresh_like(a, self.taken)
                quadratic = make_sum(known.jacobian(at, a1) * self.known[m2].jacobian(at2, a1),
                                     [(a1, a1.lower, a1.upper)])
                limits2 = limits + [(i, i.lower, i.upper) for i in at2]
                second_terms.append(make_sum(second * quadratic, limits2))
        jacobian = self.tidy(normalise(sp.Add(*jacobian_terms)))
        second_order = self.tidy(normalise(sp.Add(*second_terms)))
        # a Jacobian's base index first: [N, a, units] makes each layer's product with
        # its weights one GEMM over the folded batch (J @ V^T)
        named = set(self.definitions)
        jacobian_reader = self._named(f"jac_{stem}" if stem else None, jacobian, (a, *own))
        self.jacobians += [name for name in self.definitions if name not in named]
        named = set(self.definitions)
        second_reader = self._named(f"curv_{stem}" if stem else None, second_order, own)
        self.curvatures += [name for name in self.definitions if name not in named]
        return _Propagated(lambda at, b: jacobian_reader((b, *at)), second_reader,
                           self._layer(own, partials, seconds))

    def _layer(self, own: tuple, partials: dict, seconds: dict) -> _Layer | None:
        """The body as a layer of a plain chain (see `_Layer`), or None: it must read one
        propagated let, through one weight tensor that does not depend on the data or
        unit by unit (a Kronecker delta), times a slope of its own unit only."""
        if len(partials) != 1 or len(own) > 1:
            return None
        ((m, (at, partial)),) = partials.items()
        if len(at) != 1:
            return None
        (j,) = at
        at2, second = seconds[(m, m)]
        if not own:  # the top: sum(j: phi(m[j])), its curvature phi'' at j
            curvature = self._curvature(second, j, at2, None)
            return None if curvature is None else _Layer(m, j, None, False, None, curvature)
        (h,) = own
        factors = sp.Mul.make_args(partial)
        deltas = [f for f in factors if isinstance(f, sp.KroneckerDelta)
                  and set(f.args) == {h, j}]
        weights = [f for f in factors if isinstance(f, sp.Indexed) and len(f.indices) == 2
                   and set(f.indices) == {h, j} and self._constant(f.base)]
        if len(deltas) + len(weights) != 1:
            return None
        slope = sp.Mul(*[f for f in factors if f not in deltas and f not in weights])
        if slope.has(j):
            return None
        matrix = weights[0] if weights else None
        curvature = self._curvature(second, h, (j, *at2),
                                    None if matrix is None else matrix.base)
        if curvature is None:
            return None
        return _Layer(m, h, None if matrix is None else matrix.base,
                      matrix is not None and matrix.indices == (j, h),
                      None if slope == 1 else slope, curvature)

    def _constant(self, base: sp.IndexedBase) -> bool:
        """Whether a tensor is a parameter or constant (not a let, not the data)."""
        return base != self.symbolic.visible and str(base.label) not in self.symbolic.definitions

    @staticmethod
    def _curvature(second: sp.Expr, own: sp.Idx, summed: tuple, weights: sp.IndexedBase | None
                   ) -> sp.Expr | None:
        """c[own] when a layer's second derivative in m[j], m[j2] (summed = (j, j2), or
        (j2,) for the top, whose own index is j) is diagonal: c times Kronecker deltas that
        tie all of own and summed together (unit by unit), or c P[own, j] P[own, j2]
        (through the weights P, either orientation); None for any other form (a second
        derivative that couples different units, e.g. of (sum(k: z[k]))^2)."""
        if second == 0:
            return sp.S.Zero
        factors = sp.Mul.make_args(second)
        deltas = [f for f in factors if isinstance(f, sp.KroneckerDelta)
                  and set(f.args) & set(summed)]
        matrices = [f for f in factors if weights is not None and isinstance(f, sp.Indexed)
                    and f.base == weights and set(f.indices) & set(summed)]
        coefficient = sp.Mul(*[f for f in factors if f not in deltas and f not in matrices])
        if any(coefficient.has(i) for i in summed):
            return None
        if weights is None:
            group = {own}  # the indices the deltas tie to own
            for _ in deltas:
                for delta in deltas:
                    if set(delta.args) & group:
                        group |= set(delta.args)
            return coefficient if not matrices and set(summed) <= group else None
        pairs = sorted(sorted(map(str, m.indices)) for m in matrices)
        wanted = sorted(sorted(map(str, (own, i))) for i in summed)
        return coefficient if not deltas and pairs == wanted else None

    def laplacian(self, top: _Propagated) -> sp.Expr:
        """The Laplacian in y of the top expression, by reverse accumulation of the lets'
        second-order terms: with adj_l = d top / d l (`base_adjoint`),
            Laplacian = S_top + sum(l, i: adj_l[i] S_l[i]),
        because each let's forward-mode Laplacian Q_l = sum(j: dB/dm[j] Q_m[j]) + S_l is
        linear in the Q of what it reads, and unrolled that sum weights each S_l by the
        derivative of the top along every path from l."""
        terms = [top.second(())]
        for definition in self.order:
            at = self._fresh(tuple(definition.indices))
            second = self.known[definition.base].second(at)
            if second != 0:
                terms.append(make_sum(self.adjoints[definition.base](at) * second,
                                      [(i, i.lower, i.upper) for i in at]))
        return self.tidy(normalise(sp.Add(*terms)))

    def _named(self, stem: str | None, body: sp.Expr, formals: tuple
               ) -> Callable[[tuple], sp.Expr]:
        """A reader of body at given indices: a new definition, unless stem is None,
        body is zero, one tensor (an affine layer's weights) or still holds a Kronecker
        delta (inlined, so that the sums reading it collapse)."""
        if stem is None or body == 0 or body.has(sp.KroneckerDelta) or isinstance(
                body, sp.Indexed):
            return lambda at: _at(body, formals, at)
        name = _unique(self.symbolic, stem)
        symbol = sp.IndexedBase(name, real=True) if formals else sp.Symbol(name, real=True)
        self.definitions[name] = Definition(symbol, formals, body)
        return lambda at: symbol[at] if at else symbol

    def let(self, definition: Definition) -> None:
        self.formals[definition.base] = tuple(definition.indices)
        self.known[definition.base] = self.propagate(
            definition.body, tuple(definition.indices), str(definition.base))
        self.order.append(definition)

    def jacobian_squares(self, top: _Layer | None, slope: sp.IndexedBase) -> sp.Expr | None:
        """The Laplacian's second-order terms, S_top + sum(l, h: adj_l[h] S_l[h]), as one
        `JacobianSquares` when the lets are a plain chain of layers, each reading the one
        before (the first reads the base u): then J_u = R(slope), and each layer is
        "matmul" by its weights, "square" with weights adj_l[h] curvature_l[h] and
        "scale" by its slope. None otherwise (the planner takes the S_l one by one)."""
        steps: list[tuple[str, sp.IndexedBase]] = []
        previous = self.base
        for definition in self.order:
            layer = self.known[definition.base].layer
            if layer is None or layer.reads != previous:
                return None
            if layer.weights is not None:
                steps.append(("matmul_t" if layer.transposed else "matmul", layer.weights))
            name = str(definition.base)
            if layer.curvature != 0:
                weight = self.adjoints[definition.base]((layer.index,)) * layer.curvature
                steps.append(("square", self._vector(f"_weight_{name}", weight, layer.index)))
            if layer.slope is not None:
                steps.append(("scale", self._vector(f"_scale_{name}", layer.slope,
                                                    layer.index)))
            previous = definition.base
        if top is None or top.reads != previous:
            return None
        if top.curvature != 0:
            steps.append(("square", self._vector("_weight_top", top.curvature, top.index)))
        return JacobianSquares(slope, *(sp.Tuple(sp.Symbol(kind), base)
                                        for kind, base in steps))

    def _vector(self, stem: str, body: sp.Expr, index: sp.Idx) -> sp.IndexedBase:
        """A new definition stem[index] = body (always named: the helper takes tensors)."""
        name = _unique(self.symbolic, stem)
        base = sp.IndexedBase(name, real=True)
        self.definitions[name] = Definition(base, (index,), self.tidy(normalise(body)))
        return base

    def base_adjoint(self, top: sp.Expr) -> Callable[[tuple], sp.Expr]:
        """d top / d base[j] by reverse accumulation through the propagated lets (the
        score needs only this gradient, not the Jacobians):
            adj_m[j] = d top / d m[j] + sum(l reading m, i: adj_l[i] d B_l[i] / d m[j]),
        from the last let back to the base: one matrix-vector product per layer, where
        reading the score off the Jacobians costs the whole forward chain."""
        readers: list[tuple[sp.Expr, tuple, Callable[[tuple], sp.Expr]]] = [
            (top, (), lambda at: sp.S.One)]
        for m in [*reversed([d.base for d in self.order]), self.base]:
            at = self._fresh(self.formals[m])
            terms = []
            for body, formals, adjoint in readers:
                partial = diff(body, m, at)
                if partial != 0:
                    terms.append(make_sum(adjoint(formals) * partial,
                                          [(i, i.lower, i.upper) for i in formals]))
            reader = self._named(f"adj_{m}", self.tidy(normalise(sp.Add(*terms))), at)
            self.adjoints[m] = reader
            if m != self.base:
                definition = next(d for d in self.order if d.base == m)
                readers.append((definition.body, tuple(definition.indices), reader))
        return reader


def nesting_depth(model: FreeEnergyModel, free_energy: sp.Expr) -> int:
    """The most nonlinear functions and powers nested between the visible variable and F,
    counted through the lets (what substitution would differentiate through)."""
    symbolic = model.symbolic
    lets = {d.base: d for d in symbolic.used_definitions}
    depths: dict[sp.Basic, int] = {symbolic.visible: 0}

    def depth_of(expr: sp.Expr) -> int:
        found = -1
        for base in {node.base if isinstance(node, sp.Indexed) else node
                     for node in sp.preorder_traversal(expr)
                     if isinstance(node, (sp.Indexed, sp.Symbol))}:
            if base not in depths and base in lets:
                depths[base] = depth_of(lets[base].body)
            if depths.get(base, -1) >= 0:
                found = max(found, depths[base] + _nesting(expr, base))
        return found

    return depth_of(free_energy)


def _nesting(body: sp.Expr, base: sp.Basic) -> int:
    """The most nonlinear functions and powers around one occurrence of `base` in body
    (what substitution would nest, and differentiate through)."""

    def visit(node: sp.Basic) -> int:
        if (isinstance(node, sp.Indexed) and node.base == base) or node == base:
            return 0
        if not node.args or isinstance(node, sp.Idx):
            return -1
        inner = max(visit(arg) for arg in node.args)
        if inner < 0:
            return -1
        nonlinear = isinstance(node, sp.Function) or (
            isinstance(node, sp.Pow) and node.exp != 1)
        return inner + nonlinear

    return max(visit(body), 0)


def _at(body: sp.Expr, formals: tuple, actual: tuple) -> sp.Expr:
    # through temporaries, so that swapping indices (h, a) -> (a, h) cannot capture
    temporaries = [sp.Idx(f"_at{k}", (f.lower, f.upper)) for k, f in enumerate(formals)]
    for formal, temporary in zip(formals, temporaries, strict=True):
        body = substitute_index(body, formal, temporary)
    for temporary, new in zip(temporaries, actual, strict=True):
        body = substitute_index(body, temporary, new)
    return body


def _affine(node: sp.Expr, v: sp.IndexedBase, p: sp.Idx, lookup) -> bool:
    """Whether node is A v + c: its slope in v does not depend on v."""
    return node.has(v) and not depends_on(diff(node, v, (p,), lookup), v, lookup)


def _input_layer(symbolic: SymbolicModel, p: sp.Idx, lets: dict[str, Definition]
                 ) -> tuple[Definition, dict[str, Definition]] | None:
    """The let u[a] = sum(p: A[a, p] v[p]) + c[a] of the first layer, with the lets as
    the forward form reads them. When the first layer is written inside a function
    (g[h] = s(sum(i: V[h, i] v[i]) + a[h])), its affine argument becomes a let of its
    own, `pre_g`, and g reads it."""
    v, lookup = symbolic.visible, symbolic.definition_of
    for name, definition in lets.items():
        if len(definition.indices) != 1 or not definition.body.has(v) or any(
                depends_on(other.body, v, lookup) for other in lets.values()
                if other.base != definition.base and definition.body.has(other.base)):
            continue
        node = definition.body
        while not _affine(node, v, p, lookup):
            holding = [arg for arg in node.args if arg.has(v)]
            if len(holding) != 1:
                return None
            node = holding[0]
        (index,) = definition.indices
        free = node.atoms(sp.Idx) - bound_indices(node)
        if {str(i) for i in free} != {str(index)}:
            return None
        if node == definition.body:
            return definition, lets
        pre = _unique(symbolic, f"pre_{name}")
        pre_base = sp.IndexedBase(pre, real=True)
        first = Definition(pre_base, (index,), node)
        rewritten = Definition(definition.base, (index,),
                               definition.body.xreplace({node: pre_base[index]}))
        out: dict[str, Definition] = {}
        for other_name, other in lets.items():
            if other_name == name:
                out[pre] = first
                out[name] = rewritten
            else:
                out[other_name] = other
        return first, out
    return None


def chain_form(model: FreeEnergyModel, free_energy: sp.Expr, score_index: sp.Idx,
               tidy: Callable[[sp.Expr], sp.Expr]) -> ChainForm | None:
    """F's score and Laplacian by forward propagation, or None when F reads no let that
    depends on the visible variable (there is nothing to propagate)."""
    symbolic = model.symbolic
    v, lookup = symbolic.visible, symbolic.definition_of
    lets = {str(d.base): d for d in symbolic.used_definitions}
    if not any(depends_on(d.body, v, lookup) for d in lets.values()):
        return None
    layer = _input_layer(symbolic, score_index, lets)
    if layer is not None:
        u, layered = layer
        if symbolic.default_range(u.indices[0]) < symbolic.default_range(score_index):
            form = _through(model, free_energy, score_index, tidy, u, layered)
            if form is not None:
                return form
    return _through(model, free_energy, score_index, tidy, None, lets)


def _through(model: FreeEnergyModel, free_energy: sp.Expr, p: sp.Idx,
             tidy: Callable[[sp.Expr], sp.Expr], u: Definition | None,
             lets: dict[str, Definition]) -> ChainForm | None:
    """The forward form with base u (None: the visible variable), over `lets`."""
    symbolic = model.symbolic
    v = symbolic.visible
    by_base = {d.base: d for d in lets.values()}

    def lookup(b: sp.Basic) -> Definition | None:
        return by_base.get(b)

    definitions: dict[str, Definition] = {}
    if u is None:  # the base is v: J_v[p, a] = delta(p, a)
        base, base_index, psi, phi = v, p, sp.S.Zero, free_energy

        def base_jacobian(j: sp.Idx, a: sp.Idx) -> sp.Expr:
            return sp.KroneckerDelta(j, a)

        def opaque(b: sp.Basic) -> Definition | None:
            return lookup(b)
    else:  # the base is u = A v + c, differentiated in y = Q^T v: du[j] / dy[a] = R[a, j]
        (index,) = u.indices
        base, base_index = u.base, index
        definitions.update({name: d for name, d in lets.items()
                            if symbolic.definitions.get(name) != d})

        def opaque(b: sp.Basic) -> Definition | None:
            return None if b == base else lookup(b)

        phi_terms, psi_terms = [], []
        for term in sp.Add.make_args(free_energy):
            if depends_on(term, base, lookup):
                if depends_on(term, v, opaque):
                    return None  # v reaches F around u as well as through it
                phi_terms.append(term)
            else:
                psi_terms.append(term)
        phi, psi = sp.Add(*phi_terms), sp.Add(*psi_terms)
        slope_name = _unique(symbolic, f"_slope_{u.base}")
        row, column = fresh_like(index, symbolic.taken_names), fresh_like(p, symbolic.taken_names)
        slope = _at(diff(u.body, v, (p,), lookup), (index, p), (row, column))  # A[row, column]
        slope_base = sp.IndexedBase(slope_name, real=True)
        definitions[slope_name] = Definition(slope_base, (row, column), tidy(slope))

        def base_jacobian(j: sp.Idx, a: sp.Idx) -> sp.Expr:
            return RowSpaceFactor(slope_base, a, j)

    forward = _Forward(symbolic, base, base_index, base_jacobian, tidy)
    for definition in lets.values():
        if definition.base != base and depends_on(definition.body, base, opaque):
            if u is not None and depends_on(definition.body, v, opaque):
                return None
            forward.let(definition)
    top = forward.propagate(phi, (), None if u is None else f"F_{base}")
    adjoint = forward.base_adjoint(phi)  # dF/du (or dF/dv) by reverse accumulation
    squares = None if u is None else forward.jacobian_squares(top.layer, slope_base)
    jacobians = tuple(forward.jacobians)
    if squares is not None:  # `_jacobian_squares` forms the J_l and S_l itself
        for name in forward.jacobians + forward.curvatures:
            del forward.definitions[name]
        jacobians = ()
    definitions.update(forward.definitions)
    if u is None:
        score = -adjoint((p,))
    else:  # dF/dv[p] = sum(j: dF/du[j] A[j, p])
        j = fresh_like(index, symbolic.taken_names)
        score = -make_sum(adjoint((j,)) * slope_base[j, p], [(j, j.lower, j.upper)]) - diff(
            psi, v, (p,), lookup)
    laplacian = -squares if squares is not None else -forward.laplacian(top)
    if psi != 0:
        laplacian -= make_sum(diff(diff(psi, v, (p,), lookup), v, (p,), lookup),
                              [(p, p.lower, p.upper)])
    return ChainForm(tidy(normalise(score)), tidy(normalise(laplacian)), definitions,
                     jacobians)


def _unique(symbolic: SymbolicModel, stem: str) -> str:
    name, k = stem, 1
    while name in symbolic.taken_names or name in symbolic.definitions:
        k += 1
        name = f"{stem}{k}"
    symbolic.taken_names.add(name)
    return name
