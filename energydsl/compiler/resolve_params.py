"""Stage 2, resolve, continued: parameter declarations, their initialisers and constraints.

`param L[D, D] ~ normal(0.01) where symmetric, mask(grid(h, w, 8)), diagonally_dominant,
accessor(precision)` or `param alpha[K] ~ ones where positive`: the initialiser and its
arguments, and the constraint the parameter's value is made with (see ir.Constraint), each
checked with a positioned error. A positive parameter's initialiser gives its value.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from energydsl.compiler import syntax as ast
from energydsl.compiler.constants import describe_number
from energydsl.compiler.ir import Constraint, Dim, GridMask, Initialiser, Param
from energydsl.compiler.names import check_identifier
from energydsl.errors import Span, error

INITIALISERS = {"normal": 1, "zeros": 0, "ones": 0, "constant": 1, "uniform": 2}
ATTRIBUTES = {"symmetric": 0, "mask": 1, "diagonally_dominant": 0, "accessor": 1,
              "positive": 0}
SQUARE_ONLY = ("symmetric", "mask", "diagonally_dominant")  # attributes of square matrices
DEFAULT_INIT = Initialiser("normal", (0.01,))
DEFAULT_POSITIVE_INIT = Initialiser("ones", ())


class ParamResolver:
    """The parameter declarations of the resolver (mixed into it: it reads the resolver's
    tables of declared names, dimensions and parameters)."""

    if TYPE_CHECKING:  # what the resolver provides
        params: dict[str, Param]
        dims: dict[str, Dim]
        declared: dict[str, Span]
        default_accessors: dict[str, Span]

        def _declare(self, ident: ast.Ident, what: str) -> None: ...
        def _shape(self, shape: tuple[ast.Ident, ...]) -> tuple[str, ...]: ...
        def _evaluate(self, expr: ast.Expr, allow_consts: bool) -> int | float: ...

    def _param(self, decl: ast.ParamDecl) -> None:
        self._declare(decl.name, "a constrained parameter" if decl.attributes else "a parameter")
        shape = self._shape(decl.shape)
        init = DEFAULT_INIT
        if decl.init is not None:
            kind = decl.init.name.name
            if kind not in INITIALISERS:
                raise error(f"unknown initialiser '{kind}'; expected one of "
                            + ", ".join(INITIALISERS), decl.init.name.span)
            arity = INITIALISERS[kind]
            if len(decl.init.args) != arity:
                raise error(f"initialiser '{kind}' takes {arity} argument"
                            f"{'s' if arity != 1 else ''}, got {len(decl.init.args)}",
                            decl.init.span)
            args = tuple(float(self._evaluate(a, allow_consts=True)) for a in decl.init.args)
            if kind == "normal" and args[0] < 0:
                raise error("the scale of 'normal' must be non-negative", decl.init.span)
            if kind == "uniform" and not (args[0] <= args[1]
                                          and math.isfinite(args[1] - args[0])):
                raise error("uniform(low, high) needs low <= high and a finite width",
                            decl.init.span)
            init = Initialiser(kind, args)
        constraint = self._constraint(decl, shape) if decl.attributes else None
        if constraint is not None and constraint.positive:
            init = self._positive_init(decl, init)
        self.params[decl.name.name] = Param(decl.name.name, shape, init, decl.name.span,
                                            constraint)

    def _positive_init(self, decl: ast.ParamDecl, init: Initialiser) -> Initialiser:
        """A positive parameter starts at a positive value: ones unless told."""
        if decl.init is None:
            return DEFAULT_POSITIVE_INIT
        kind, args = init.kind, init.args
        if (kind == "constant" and args[0] > 0) or (kind == "uniform" and args[0] > 0) \
                or kind == "ones":
            return init
        raise error(f"'{decl.name.name}' is positive, so its initial value must be: use "
                    "ones, constant(c) with c > 0 or uniform(a, b) with a > 0 (the "
                    "initialiser gives the value, softplus of the raw parameter)",
                    decl.init.span)

    def _constraint(self, decl: ast.ParamDecl, shape: tuple[str, ...]) -> Constraint:
        """`where symmetric, mask(grid(h, w, c)), diagonally_dominant, accessor(name)`."""
        seen: dict[str, ast.Attribute] = {}
        for attribute in decl.attributes:
            name = attribute.name.name
            if name not in ATTRIBUTES:
                raise error(f"unknown parameter attribute '{name}'; expected one of "
                            + ", ".join(ATTRIBUTES), attribute.name.span)
            if name in seen:
                raise error(f"attribute '{name}' is given twice", attribute.name.span)
            arity = ATTRIBUTES[name]
            if len(attribute.args) != arity:
                raise error(f"attribute '{name}' takes {arity} argument"
                            f"{'s' if arity != 1 else ''}, got {len(attribute.args)}",
                            attribute.span)
            seen[name] = attribute
        square = [seen[name] for name in SQUARE_ONLY if name in seen]
        if "positive" in seen and square:
            raise error(f"'positive' is elementwise and does not combine with "
                        f"'{square[0].name.name}'", square[0].name.span)
        if "positive" not in seen and (len(shape) != 2 or shape[0] != shape[1]):
            first = square[0] if square else decl.attributes[0]
            raise error(f"attribute '{first.name.name}' needs a square matrix parameter, but "
                        f"'{decl.name.name}' has shape [{', '.join(shape)}]", first.name.span)
        if "diagonally_dominant" in seen and "symmetric" not in seen:
            raise error("'diagonally_dominant' makes a positive definite matrix only together "
                        "with 'symmetric'; add it", seen["diagonally_dominant"].name.span)
        mask = self._grid_mask(seen["mask"], shape[0]) if "mask" in seen else None
        accessor = f"{decl.name.name}_value"
        if "accessor" not in seen:
            self.default_accessors[accessor] = decl.name.span
        else:
            arg = seen["accessor"].args[0]
            if not isinstance(arg, ast.Name):
                raise error("accessor(...) takes a method name", _span(arg))
            ident = ast.Ident(arg.name, arg.span)
            check_identifier(ident, "an accessor method", allow_method_names=True)
            if arg.name in self.declared:
                raise error(f"'{arg.name}' is already declared (line "
                            f"{self.declared[arg.name].line})", arg.span)
            accessor = arg.name
            self.declared[arg.name] = arg.span
        return Constraint("symmetric" in seen, mask, "diagonally_dominant" in seen, accessor,
                          positive="positive" in seen)

    def _grid_mask(self, attribute: ast.Attribute, dim: str) -> GridMask:
        call = attribute.args[0]
        if not (isinstance(call, ast.Call) and call.func.name == "grid" and len(call.args) == 3):
            raise error("mask(...) takes grid(height, width, connectivity)", _span(call))
        values, texts = [], []
        for arg in call.args:
            if not isinstance(arg, (ast.Name, ast.Number)):
                raise error("grid(...) arguments are dimensions, constants or numbers",
                            _span(arg))
            value = self._evaluate(arg, allow_consts=True)
            if not float(value).is_integer() or value < 1:
                raise error(f"grid(...) arguments must be positive whole numbers, got "
                            f"{describe_number(value)}", _span(arg))
            values.append(value)
            # a number goes into the generated code: as Python's own spelling of it
            texts.append(arg.name if isinstance(arg, ast.Name) else str(int(value)))
        height, width, connectivity = values
        if connectivity not in (4, 8):
            raise error(f"grid connectivity must be 4 or 8, got "
                        f"{describe_number(connectivity)}", _span(call.args[2]))
        if height * width != self.dims[dim].default:
            raise error(f"grid({texts[0]}, {texts[1]}, ...) has {describe_number(height)} x "
                        f"{describe_number(width)} pixels but '{dim}' is "
                        f"{self.dims[dim].default}", _span(call))
        return GridMask(*texts)


def _span(expr: ast.Expr):
    return expr.span
