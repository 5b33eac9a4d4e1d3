"""The checked model: what `checker` proved about a spec, in tables later stages read.

Expressions stay as AST (`syntax`) nodes; `index_ranges` gives the dimension of every
bound index (sum bindings and `let` indices), keyed by the binding's `Ident`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from energydsl.compiler import syntax as ast
from energydsl.errors import Span


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
        return tuple(f"self.{t}" if t in names else t
                     for t in (self.height, self.width, self.connectivity))


@dataclass(frozen=True)
class Constraint:
    """How a parameter's value is made from its raw (free) `nn.Parameter`:
    symmetric: (raw + raw^T) / 2;  mask: zero outside the mask;
    diagonally_dominant: the diagonal becomes sum_j |offdiagonal_ij| + softplus(raw_ii)
    + 1e-6, so a symmetric value is positive definite for every raw value (Gershgorin).
    The generated module exposes the value through the method `accessor()`."""

    symmetric: bool
    mask: GridMask | None
    diagonally_dominant: bool
    accessor: str


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


@dataclass
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

    def shape_of(self, name: str) -> tuple[str, ...]:
        """Declared shape of a tensor name (variable, parameter or let)."""
        if name == self.visible.name:
            return self.visible.shape
        for table in (self.hidden, self.params, self.lets):
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
