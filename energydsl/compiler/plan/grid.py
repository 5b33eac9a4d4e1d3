"""Grid-masked parameters (`mask(grid(h, w, c))`) planned through their 3 x 3 stencils.

Such a [D, D] matrix M is stored as its [9, D] stencil (the entries that can be
non-zero), so a product with it is one shifted multiply-add per neighbour over the
zero-padded image (`_grid_apply`, 9 D per row where a dense product costs D^2); its
diagonal is the stencil's centre row; the dense matrix is built only where a method
needs the matrix itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sympy as sp

from energydsl.compiler.algebra import make_sum, substitute_index
from energydsl.compiler.notation import dsl_str
from energydsl.compiler.plan.program import Operand

if TYPE_CHECKING:
    from energydsl.compiler.plan.planner import Planner

Pair = tuple[Operand, sp.Expr]  # an operand and the formula it computes


class Grids:
    """The planner's grid steps, each computed once per method (its own caches)."""

    def __init__(self, planner: Planner) -> None:
        self.planner = planner
        checked = planner.symbolic.checked
        self.masks = {name: param.constraint for name, param in checked.params.items()
                      if param.grid is not None}
        self.names = {**checked.dims, **checked.consts}
        self.dense_steps: dict[str, str] = {}  # a dense value's step -> its parameter
        self.stencils: dict[tuple[str, bool], str] = {}  # (parameter, transposed) -> step
        self.centres: dict[str, str] = {}  # dense value's step -> its diagonal's step
        self.applies: dict[tuple, str] = {}  # (parameter, transposed, operand, axis) -> step

    def stencil(self, name: str, transpose: bool = False) -> str:
        """The step holding a grid-masked parameter's [9, D] stencil (of its transpose:
        the same one when the parameter is symmetric)."""
        planner = self.planner
        transpose = transpose and not self.masks[name].symmetric
        key = (name, transpose)
        if key not in self.stencils:
            if transpose:
                height, width, _ = self.masks[name].mask.arguments(self.names)
                code = f"_grid_transpose({self.stencil(name)}, {height}, {width})"
                comment = f"{name}^T as a stencil"
            else:
                code = f"self._{name}_stencil()"
                comment = f"{name}, constrained, as a stencil (see _{name}_stencil)"
            size = int(planner.params[name].shape[0].subs(planner.defaults))
            self.stencils[key] = planner.emit_step(
                code, comment, f"_{name}_stencil" + "_t" * transpose, cost=9 * size)
        return self.stencils[key]

    def centre(self, dense: Operand, expr: sp.Indexed) -> Operand | None:
        """M[i, i] of a grid-masked M: the stencil's centre row (None: not grid-masked)."""
        if dense.code not in self.dense_steps or len(expr.indices) != 2:
            return None
        if dense.code not in self.centres:
            code = f"{self.stencil(self.dense_steps[dense.code])}[4]"
            self.centres[dense.code] = self.planner.emit_step(code, dsl_str(expr))
        return Operand(self.centres[dense.code], expr.indices[:1])

    def products(self, current: list[Pair], output: tuple) -> list[Pair]:
        """Contract a grid-masked matrix M[p, q] with the one operand x that shares q (or
        p) through its stencil: _grid_apply costs 9 D per row of x where a dense product
        costs D^2, and never forms the [D, D] matrix. Applied first, as opt_einsum
        knows only dense costs."""
        changed = True
        while changed and len(current) > 1:
            changed = False
            for a, (matrix, matrix_formula) in enumerate(current):
                name = self.dense_steps.get(matrix.code)
                if name is None or len(set(matrix.indices)) != 2:
                    continue
                for axis in (1, 0):
                    index, kept = matrix.indices[axis], matrix.indices[1 - axis]
                    sharing = [b for b, (op, _) in enumerate(current)
                               if b != a and index in op.indices]
                    if index in output or len(sharing) != 1:
                        continue
                    vector, vector_formula = current[sharing[0]]
                    if kept in vector.indices:
                        continue
                    rest = tuple(i for i in vector.indices if i != index)
                    formula = make_sum(matrix_formula * vector_formula,
                                       [(index, index.lower, index.upper)])
                    result = self._apply_split(name, axis == 0, vector, vector_formula,
                                               index, rest + (kept,), formula)
                    current = [c for k, c in enumerate(current) if k not in (a, sharing[0])]
                    current.append((result, formula))
                    changed = True
                    break
                if changed:
                    break
        return current

    def _apply_split(self, name: str, transpose: bool, vector: Operand,
                     vector_formula: sp.Expr, index: sp.Basic, out: tuple,
                     formula: sp.Expr) -> Operand:
        """M (x - mu) as M x - M mu when the operand is a definition adding batched and
        parameter-only terms: the data needs no gradient, so the backward pass then
        differentiates the shifted products of the small parameter part only."""
        planner = self.planner
        parts = self._batched_parts(vector_formula)
        if parts is None:
            return self._apply(name, transpose, vector, index, out, dsl_str(formula))
        results = []
        for part in parts:
            operand = planner.operand(part)
            if index not in operand.indices:  # constant along the summed index
                return self._apply(name, transpose, vector, index, out, dsl_str(formula))
            rest = tuple(i for i in operand.indices if i != index) + out[-1:]
            part_formula = make_sum(formula.function.xreplace({vector_formula: part}),
                                    formula.limits)
            results.append(self._apply(name, transpose, operand, index, rest,
                                       dsl_str(part_formula)))
        code = " + ".join(planner.align(r, out, broadcast=True) for r in results)
        return Operand(planner.emit_step(code, dsl_str(formula), cost=planner.volume(out)),
                       out)

    def _batched_parts(self, formula: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
        """A definition's value at formula's indices split into its batched terms and the
        rest, when it has both (y[i] = x[i] - mu[i] -> x[i], -mu[i]); else None."""
        planner = self.planner
        if not isinstance(formula, sp.Indexed):
            return None
        definition = planner.definitions.get(str(formula.base.label))
        if definition is None or definition.base != formula.base \
                or not isinstance(definition.body, sp.Add):
            return None
        body = definition.body
        for formal, actual in zip(definition.indices, formula.indices, strict=True):
            body = substitute_index(body, formal, actual)
        batched = [t for t in sp.Add.make_args(body) if planner.mentions_batched(t)]
        fixed = [t for t in sp.Add.make_args(body) if t not in batched]
        if not batched or not fixed:
            return None
        return sp.Add(*batched), sp.Add(*fixed)

    def _apply(self, name: str, transpose: bool, vector: Operand, index: sp.Basic,
               out: tuple, comment: str) -> Operand:
        """One _grid_apply step (memoised by the operand and the axis it sums)."""
        planner = self.planner
        transpose = transpose and not self.masks[name].symmetric
        key = (name, transpose, vector.code, vector.indices.index(index))
        if key not in self.applies:
            rest = tuple(i for i in vector.indices if i != index)
            height, width, connectivity = self.masks[name].mask.arguments(self.names)
            code = (f"_grid_apply({self.stencil(name, transpose)}, "
                    f"{planner.align(vector, rest + (index,))}, {height}, {width}, "
                    f"{connectivity})")
            self.applies[key] = planner.emit_step(code, comment, cost=9 * planner.volume(out))
        return Operand(self.applies[key], out)
