"""The abstract syntax of a spec: plain dataclasses carrying source positions.

The parser builds these and nothing else; every check happens in `checker`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from energydsl.errors import Span


@dataclass(frozen=True)
class Ident:
    """A name as written, with where it was written."""

    name: str
    span: Span


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True)
class Number:
    text: str
    span: Span


@dataclass(frozen=True)
class Name:
    """A bare name: a dimension, a constant, a scalar parameter or a scalar `let`."""

    name: str
    span: Span


@dataclass(frozen=True)
class Indexed:
    """`W[i, j]`: a tensor read at named indices."""

    base: Ident
    indices: tuple[Ident, ...]
    span: Span


@dataclass(frozen=True)
class Call:
    func: Ident
    args: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "+"
    operand: Expr
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # one of + - * / ^
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True)
class Binding:
    """An index bound by a sum, with an optional explicit range (`i in D`)."""

    index: Ident
    range: Ident | None


@dataclass(frozen=True)
class SumExpr:
    """A reduction over bound indices: `sum`, or `logsumexp` (log sum exp, stably)."""

    bindings: tuple[Binding, ...]
    body: Expr
    span: Span
    reduction: str = "sum"


Expr = Number | Name | Indexed | Call | Unary | Binary | SumExpr


# ---------------------------------------------------------------- declarations


@dataclass(frozen=True)
class DimDecl:
    name: Ident
    value: Expr
    span: Span


@dataclass(frozen=True)
class ListLiteral:
    """`[0.5, 1.0, 2.0]`: the entries of a vector constant, one formula each."""

    items: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class ConstDecl:
    """`const gamma = 1.5`, or a vector constant: `const s[D] = [0.5, 1.0, 2.0]` (a list of
    entries) or `const T[D, K] = 0.0` (one value filling every entry)."""

    name: Ident
    value: Expr | ListLiteral
    span: Span
    shape: tuple[Ident, ...] = ()


@dataclass(frozen=True)
class VarDecl:
    """A visible or hidden variable: `hidden h : binary[K]`."""

    role: str  # "visible" or "hidden"
    name: Ident
    domain: Ident
    shape: tuple[Ident, ...]
    span: Span


@dataclass(frozen=True)
class Init:
    name: Ident
    args: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class Attribute:
    name: Ident
    args: tuple[Expr, ...]
    span: Span


@dataclass(frozen=True)
class ParamDecl:
    name: Ident
    shape: tuple[Ident, ...]
    init: Init | None
    attributes: tuple[Attribute, ...]
    span: Span


@dataclass(frozen=True)
class LetDecl:
    name: Ident
    indices: tuple[Ident, ...]
    value: Expr
    span: Span


@dataclass(frozen=True)
class EnergyDecl:
    """`energy E(v, h) = ...` (role "energy"), `free energy F(v) = ...` ("free_energy") or
    `log density p(v) = ...` ("log_density": the unnormalised log p~(v) = -F(v); with
    hidden variables, `log density p(v, h) = ...` is the joint log p~(v, h) = -E(v, h))."""

    role: str
    name: Ident
    args: tuple[Ident, ...]
    value: Expr
    span: Span

    @property
    def joint(self) -> bool:
        """Whether it is a function of the hidden variables too (to be marginalised)."""
        return self.role == "energy" or len(self.args) > 1


Declaration = DimDecl | ConstDecl | VarDecl | ParamDecl | LetDecl | EnergyDecl


@dataclass(frozen=True)
class Spec:
    model: Ident
    declarations: tuple[Declaration, ...] = field(default_factory=tuple)
