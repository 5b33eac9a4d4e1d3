"""The records the compiler's stages pass on, each the output of one stage (see driver):

    resolve      syntax.Spec        -> CheckedModel   (names, shapes, index ranges)
    lower        CheckedModel       -> SymbolicModel  (SymPy in index form, Definitions)
    marginalise  SymbolicModel      -> FreeEnergyModel (F(v), one HiddenUnit per layer)
    derive       FreeEnergyModel    -> Derivation     (score, Laplacian, SM objective)
    conditionals Derivation         -> Conditionals   (p(h | v), p(v | h), SM terms)
    plan         Derivation, Conditionals -> PlannedModule (method bodies as code)
    emit         ...                -> the module's text, in Compiled

Frozen dataclasses: a stage reads what the one before produced and makes a new record.
In a CheckedModel expressions stay as AST (`syntax`) nodes, and `index_ranges` gives the
dimension of every bound index (sum bindings and `let` indices), keyed by its `Ident`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import sympy as sp

from energydsl.compiler import syntax as ast
from energydsl.errors import Diagnostic, Span


@dataclass(frozen=True)
class Dim:
    name: str
    default: int
    derived_from: ast.Expr | None  # a formula of other dims; None for a constructor argument
    span: Span


@dataclass(frozen=True)
class Const:
    name: str
    default: int | float
    span: Span


@dataclass(frozen=True)
class VectorConst:
    """`const s[D] = [0.5, 1.0, 2.0]` or `const T[D, K] = 0.0`: a fixed tensor, read with
    indices like a parameter but never learnt (a buffer of the generated module, which
    its constructor may replace by a tensor of the same shape)."""

    name: str
    shape: tuple[str, ...]
    value: tuple[float, ...] | float  # the listed entries (one axis), or the fill value
    span: Span


@dataclass(frozen=True)
class Variable:
    name: str
    role: str  # "visible" or "hidden"
    domain: str  # real, positive, binary, spin
    shape: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class Initialiser:
    kind: str  # normal, zeros, ones, constant, uniform
    args: tuple[float, ...]


@dataclass(frozen=True)
class GridMask:
    """Pixels of a height x width image in raster order; entry (a, b) may be non-zero
    when b is in a's 4- or 8-connected neighbourhood (a pixel is its own neighbour)."""

    height: str  # each a dimension or constant name, or a number as text
    width: str
    connectivity: str

    def arguments(self, names) -> tuple[str, str, str]:
        """height, width, connectivity as code in a generated method (`names`: the
        dimensions and constants, which are attributes of the module)."""
        height, width, connectivity = (f"self.{t}" if t in names else t
                                       for t in (self.height, self.width, self.connectivity))
        return height, width, connectivity


@dataclass(frozen=True)
class Constraint:
    """How a parameter's value is made from its raw (free) `nn.Parameter`:
    symmetric: (raw + raw^T) / 2;  mask: zero outside the mask;
    diagonally_dominant: the diagonal becomes sum_j |offdiagonal_ij| + softplus(raw_ii)
    + 1e-6, so a symmetric value is positive definite for every raw value (Gershgorin);
    positive: softplus(raw), elementwise. The generated module exposes the value through
    the method `accessor()`."""

    symmetric: bool
    mask: GridMask | None
    diagonally_dominant: bool
    accessor: str
    positive: bool = False  # elementwise softplus(raw), any shape


@dataclass(frozen=True)
class Param:
    name: str
    shape: tuple[str, ...]
    init: Initialiser
    span: Span
    constraint: Constraint | None = None

    @property
    def grid(self) -> GridMask | None:
        """The grid mask, if any: such a parameter is stored as its [9, D] stencil."""
        return None if self.constraint is None else self.constraint.mask


@dataclass(frozen=True)
class Let:
    name: str
    indices: tuple[ast.Ident, ...]
    shape: tuple[str, ...]
    value: ast.Expr
    span: Span


@dataclass(frozen=True)
class CheckedModel:
    name: str
    dims: dict[str, Dim]
    consts: dict[str, Const]
    visible: Variable
    hidden: dict[str, Variable]
    params: dict[str, Param]
    lets: dict[str, Let]
    energy: ast.EnergyDecl
    index_ranges: dict[ast.Ident, str] = field(default_factory=dict)
    vector_consts: dict[str, VectorConst] = field(default_factory=dict)

    def shape_of(self, name: str) -> tuple[str, ...]:
        """Declared shape of a tensor name (variable, parameter, vector constant or let)."""
        if name == self.visible.name:
            return self.visible.shape
        for table in (self.hidden, self.params, self.vector_consts, self.lets):
            if name in table:
                return table[name].shape
        raise KeyError(name)

    @property
    def has_hidden(self) -> bool:
        return bool(self.hidden)

    def size_error(self, sizes: dict[str, int]) -> str | None:
        """Why `sizes` (from --size) cannot set this model's dimensions, or None."""
        for name in sizes:
            if name not in self.dims:
                return f"no dimension named '{name}'; its dimensions are {', '.join(self.dims)}"
            if self.dims[name].derived_from is not None:
                return f"'{name}' is derived from other dimensions; set those instead"
        return None


@dataclass(frozen=True)
class Definition:
    """A `let`: base[indices] = body."""

    base: sp.IndexedBase | sp.Symbol
    indices: tuple[sp.Idx, ...]
    body: sp.Expr


@dataclass(frozen=True)
class SymbolicModel:
    checked: CheckedModel
    dims: dict[str, sp.Symbol]
    consts: dict[str, sp.Symbol]
    visible: sp.IndexedBase
    hidden: dict[str, sp.IndexedBase]
    params: dict[str, sp.IndexedBase | sp.Symbol]
    definitions: dict[str, Definition]
    energy: sp.Expr  # E(v, h), or F(v) when the spec gives a free energy
    taken_names: set[str] = field(default_factory=set)
    # size -> the index names the spec uses over it, in order of first use
    index_pools: dict[sp.Expr, list[str]] = field(default_factory=dict)
    symmetric: frozenset = frozenset()  # bases of symmetric parameters
    vector_consts: dict[str, sp.IndexedBase] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.checked.name

    def size(self, dim: str) -> sp.Symbol:
        return self.dims[dim]

    @property
    def default_sizes(self) -> dict[sp.Symbol, int]:
        """Each size symbol's default value (what cost estimates are made at)."""
        return {symbol: self.checked.dims[name].default for name, symbol in self.dims.items()}

    def default_range(self, index: sp.Idx) -> int:
        """The number of values `index` takes at the default sizes."""
        return int(sp.sympify(index.upper - index.lower + 1).subs(self.default_sizes))

    def index(self, dim: str, hint: str = "i") -> sp.Idx:
        """A fresh index over `dim`, named after `hint` and unused anywhere in the spec."""
        candidates = [hint, *"ijklmnpqrstuabcdefg", *(f"{hint}{k}" for k in range(1, 100))]
        for name in candidates:
            if name not in self.taken_names:
                self.taken_names.add(name)
                return sp.Idx(name, self.dims[dim])
        raise RuntimeError("no fresh index name left")  # pragma: no cover

    @functools.cached_property
    def used_definitions(self) -> list[Definition]:
        """The lets the energy uses, directly or through other lets, in declaration
        order: the only ones a derived formula can mention (so a spec's unused lets
        cost the later stages nothing)."""
        used: set[str] = set()
        pending = [self.energy]
        while pending:
            for node in sp.preorder_traversal(pending.pop()):
                base = node.base if isinstance(node, sp.Indexed) else node
                definition = self.definition_of(base) if isinstance(
                    base, (sp.IndexedBase, sp.Symbol)) else None
                if definition is not None and str(definition.base) not in used:
                    used.add(str(definition.base))
                    pending.append(definition.body)
        return [d for d in self.definitions.values() if str(d.base) in used]

    def definition_of(self, base: sp.Basic) -> Definition | None:
        name = str(base.label) if isinstance(base, sp.IndexedBase) else str(base)
        definition = self.definitions.get(name)
        if definition is not None and definition.base == base:
            return definition
        return None


@dataclass(frozen=True)
class HiddenUnit:
    """What marginalisation learned about one hidden variable, per generic unit `index`.

    `energy` is e(symbol; v), the part of E involving unit `index`; `log_partition` is
    log z(v) = log sum/int exp(-e) over the unit's domain. Conditionals follow from both.
    """

    name: str
    domain: str
    index: sp.Idx
    symbol: sp.Symbol
    energy: sp.Expr
    log_partition: sp.Expr
    # e = a h^2 + b h + c for a real unit ("a", "b"); e = rate h + power log h + c for a
    # positive one ("rate", "power"); empty for discrete units (e is used directly).
    coefficients: dict = field(default_factory=dict)


@dataclass(frozen=True)
class FreeEnergyModel:
    symbolic: SymbolicModel
    free_energy: sp.Expr  # F(v), per sample, constants included
    energy: sp.Expr | None  # E(v, h) when the spec gives one
    hidden: dict[str, HiddenUnit] = field(default_factory=dict)
    # Conditions on constants (e.g. gamma > 0) under which the integrals converge.
    conditions: list[sp.Basic] = field(default_factory=list)
    visible_energy: sp.Expr = sp.S.Zero  # E_0(v): the terms of E without hidden units
    # what marginalising defined (a latent Gaussian's precision), for the later stages
    definitions: dict[str, Definition] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.symbolic.name


@dataclass(frozen=True)
class Derivation:
    model: FreeEnergyModel
    index: sp.Idx  # the score's free index, over the visible dimension
    free_energy: sp.Expr
    score: sp.Expr  # free index `index`
    laplacian: sp.Expr
    sm_objective: sp.Expr  # in terms of the `score` and `laplacian` definitions
    definitions: dict[str, Definition]  # the spec's lets, then the derived quantities
    # the score and Laplacian by forward propagation through the lets (compiler/chain.py):
    # they read derived definitions that the spec's own lookup does not know
    forward: bool = False
    # their Jacobians J_l (named definitions, first layer first): the Laplacian reads each
    # layer's product with its weights, which planning them first makes the planner share
    jacobians: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.model.name


@dataclass(frozen=True)
class HiddenConditional:
    unit: HiddenUnit
    mean: sp.Expr  # E[h_u | v], free index unit.index
    variance: sp.Expr  # var[h_u | v]
    sampler: dict[str, sp.Expr]  # distribution parameters, see `_moments`


@dataclass(frozen=True)
class VisibleConditional:
    """p(v | h) = N(P^-1 b, P^-1) with P[p, q] and b[p] functions of the hidden units."""

    index: sp.Idx  # p
    second: sp.Idx  # q
    precision: sp.Expr  # P[p, q]
    linear: sp.Expr  # b[p]
    isotropic: sp.Expr | None  # c when P = c delta(p, q)
    diagonal: sp.Expr | None = None  # d[p] when P = d[p] delta(p, q): a per-entry precision


@dataclass(frozen=True)
class Conditionals:
    hidden: dict[str, HiddenConditional] = field(default_factory=dict)
    sm_terms: dict[str, sp.Expr] | None = None  # per sample: squared_error, variance, curvature
    sm_terms_unavailable: str = ""  # why sm_terms could not be derived
    visible: VisibleConditional | None = None
    gaussian_precision: sp.Expr | None = None  # P[p, q] = d^2 F / dv_p dv_q when constant
    gaussian_indices: tuple[sp.Idx, sp.Idx] | None = None
    definitions: dict[str, Definition] = field(default_factory=dict)
    # discrete data: P(v[p] = high | hidden), when E is linear in each entry of v
    visible_probability: sp.Expr | None = None


@dataclass(frozen=True)
class Method:
    """One method of the generated module, its body planned: the lines at method
    indentation (wrapped lines carry their own) and what emit needs to lay it out."""

    name: str
    params: str  # the signature after `self, `
    returns: str
    doc: str
    body: tuple[str, ...]
    positive: tuple[str, ...] = ()  # arguments that must be positive finite numbers
    counts: tuple[str, ...] = ()  # arguments that must be positive integers


@dataclass(frozen=True)
class PlannedModule:
    """The plan stage's output: the methods whose bodies were planned from definitions,
    in module order, and what the fixed parts of the module (emit's partials) need."""

    anchor: str  # the attribute whose dtype and device every tensor takes
    core: tuple[Method, ...]  # free_energy, score, laplacian, sm_loss
    latent: tuple[Method, ...]  # energy, hidden conditionals, sm_terms, visible conditional
    gaussian: Method | None  # _gaussian_precision, when F is quadratic in v
    enumeration: tuple[Method, ...]  # _hidden_states, _log_hidden_weight (empty: none)
    hidden_bits: str  # code of the number of enumerated binary units ("self.K")
    hidden_categories: str = ""  # code of the product of the categorical variables' sizes


@dataclass(frozen=True)
class Compiled:
    derivation: Derivation
    conditionals: Conditionals
    source: str  # the generated module's text
    warnings: list[Diagnostic] = field(default_factory=list)
