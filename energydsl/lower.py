"""Stage 3, lower: `CheckedModel` -> `SymbolicModel`, the spec as SymPy in index form.

Tensors become `IndexedBase`s, bound indices `Idx`s over symbolic dimension sizes and
sums `Sum`s, so nothing here (or downstream) grows with D or K. `let` definitions stay
named: an `Indexed` of a let's base stands for its definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from . import syntax as ast
from .functions import log1p, sigmoid, softplus
from .model import CheckedModel

_FUNCTIONS = {
    "exp": sp.exp,
    "log": sp.log,
    "log1p": log1p,
    "sqrt": sp.sqrt,
    "square": lambda x: x**2,
    "softplus": softplus,
    "sigmoid": sigmoid,
    "tanh": sp.tanh,
    "abs": sp.Abs,
}


@dataclass(frozen=True)
class Definition:
    """A `let`: base[indices] = body."""

    base: sp.IndexedBase | sp.Symbol
    indices: tuple[sp.Idx, ...]
    body: sp.Expr


@dataclass
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

    @property
    def name(self) -> str:
        return self.checked.name

    def size(self, dim: str) -> sp.Symbol:
        return self.dims[dim]

    def index(self, dim: str, hint: str = "i") -> sp.Idx:
        """A fresh index over `dim`, named after `hint` and unused anywhere in the spec."""
        candidates = [hint, *"ijklmnpqrstuabcdefg", *(f"{hint}{k}" for k in range(1, 100))]
        for name in candidates:
            if name not in self.taken_names:
                self.taken_names.add(name)
                return sp.Idx(name, self.dims[dim])
        raise RuntimeError("no fresh index name left")  # pragma: no cover

    def definition_of(self, base: sp.Basic) -> Definition | None:
        name = str(base.label) if isinstance(base, sp.IndexedBase) else str(base)
        definition = self.definitions.get(name)
        if definition is not None and definition.base == base:
            return definition
        return None


class _Lowerer:
    def __init__(self, checked: CheckedModel):
        self.checked = checked
        self.dims = {name: sp.Symbol(name, integer=True, positive=True) for name in checked.dims}
        self.consts = {name: sp.Symbol(name, real=True) for name in checked.consts}
        self.tensors: dict[str, sp.Basic] = {}
        for variable in [checked.visible, *checked.hidden.values()]:
            self.tensors[variable.name] = self._base(variable.name, variable.shape)
        for param in checked.params.values():
            self.tensors[param.name] = self._base(param.name, param.shape)
        for let in checked.lets.values():
            self.tensors[let.name] = self._base(let.name, let.shape)

    def _base(self, name: str, shape: tuple[str, ...]) -> sp.Basic:
        if not shape:
            return sp.Symbol(name, real=True)
        return sp.IndexedBase(name, shape=tuple(self.dims[d] for d in shape), real=True)

    def _idx(self, ident: ast.Ident) -> sp.Idx:
        return sp.Idx(ident.name, self.dims[self.checked.index_ranges[ident]])

    def expr(self, node: ast.Expr, scope: dict[str, sp.Idx]) -> sp.Expr:
        if isinstance(node, ast.Number):
            return sp.Rational(node.text)
        if isinstance(node, ast.Name):
            if node.name in self.dims:
                return self.dims[node.name]
            if node.name in self.consts:
                return self.consts[node.name]
            return self.tensors[node.name]
        if isinstance(node, ast.Indexed):
            base = self.tensors[node.base.name]
            return base[tuple(scope[i.name] for i in node.indices)]
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.name](self.expr(node.args[0], scope))
        if isinstance(node, ast.Unary):
            operand = self.expr(node.operand, scope)
            return -operand if node.op == "-" else operand
        if isinstance(node, ast.Binary):
            left, right = self.expr(node.left, scope), self.expr(node.right, scope)
            if node.op == "+":
                return left + right
            if node.op == "-":
                return left - right
            if node.op == "*":
                return left * right
            if node.op == "/":
                return left / right
            return left**right
        if isinstance(node, ast.SumExpr):
            inner = dict(scope)
            limits = []
            for binding in node.bindings:
                idx = self._idx(binding.index)
                inner[binding.index.name] = idx
                limits.append((idx, 0, idx.upper))
            return sp.Sum(self.expr(node.body, inner), *limits)
        raise TypeError(f"unexpected node {node!r}")  # pragma: no cover

    def _energy(self) -> sp.Expr:
        """E(v, h), or F(v); a log density log p~(v) gives F = -log p~."""
        value = self.expr(self.checked.energy.value, {})
        return -value if self.checked.energy.role == "log_density" else value

    def run(self) -> SymbolicModel:
        definitions = {}
        for let in self.checked.lets.values():
            indices = tuple(self._idx(i) for i in let.indices)
            scope = {i.name: idx for i, idx in zip(let.indices, indices, strict=True)}
            definitions[let.name] = Definition(self.tensors[let.name], indices,
                                               self.expr(let.value, scope))
        checked = self.checked
        taken = set(checked.dims) | set(checked.consts) | set(self.tensors)
        taken |= {ident.name for ident in checked.index_ranges}
        return SymbolicModel(
            checked=checked,
            dims=self.dims,
            consts=self.consts,
            visible=self.tensors[checked.visible.name],
            hidden={name: self.tensors[name] for name in checked.hidden},
            params={name: self.tensors[name] for name in checked.params},
            definitions=definitions,
            energy=self._energy(),
            taken_names=taken,
            index_pools=self._pools(),
            symmetric=frozenset(self.tensors[p.name] for p in checked.params.values()
                                if p.constraint is not None and p.constraint.symmetric),
        )

    def _pools(self) -> dict[sp.Expr, list[str]]:
        pools: dict[sp.Expr, list[str]] = {}
        idents = sorted(self.checked.index_ranges, key=lambda i: (i.span.line, i.span.column))
        for ident in idents:
            names = pools.setdefault(self.dims[self.checked.index_ranges[ident]], [])
            if ident.name not in names:
                names.append(ident.name)
        return pools


def lower(checked: CheckedModel) -> SymbolicModel:
    """Translate the checked spec into SymPy index form (sizes stay symbolic)."""
    return _Lowerer(checked).run()
