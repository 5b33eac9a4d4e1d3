"""Stage 6, plan: derived definitions -> a straight-line tensor program.

Every quantity becomes a list of `Step`s (one assignment each, commented with the
formula it computes). The planner
- keeps the batch as one more index (`_n`), so vectorisation is just einsum;
- computes each `let`, derived quantity and repeated subexpression once (remembered up
  to renaming of indices, `keys`);
- turns each sum of products into pairwise steps in the order opt_einsum finds cheapest
  for the spec's default sizes (`torch_steps`), after the exact rewrites of `rewrites`
  (nested sums merged where cheaper, the squared score in its Gram form, products
  already computed reused) and the grid stencils of `grid`.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sympy as sp
from sympy.printing.precedence import PRECEDENCE

from energydsl.compiler.algebra import REDUCTIONS, make_sum
from energydsl.compiler.emit.torch_printer import TorchPrinter
from energydsl.compiler.notation import dsl_str
from energydsl.compiler.plan import rewrites
from energydsl.compiler.plan.grid import Grids
from energydsl.compiler.plan.keys import (
    LETTERS,
    Key,
    axis_order,
    free_indices,
    pair_key,
    value_key,
)
from energydsl.compiler.plan.program import BATCH, Operand, Program, Step, uses_name, volume
from energydsl.compiler.plan.symmetric import symmetric_pairwise
from energydsl.compiler.plan.torch_steps import (
    contraction_path,
    is_per_sample_matrix,
    natural_order,
    pairwise_code,
)
from energydsl.compiler.sympy_functions import (
    JacobianSquares,
    LogDet,
    LogSumExp,
    MatrixInverse,
    RowSpaceFactor,
    softmax_weight,
)

DEFAULT_BATCH_SIZE = 128
_AXIS0, _AXIS1 = sp.Symbol("_a0"), sp.Symbol("_a1")


class Planner:
    """Plans definitions into one program. `inputs` are the method's tensor arguments
    (base -> argument name), each batched along `_n`; by default the visible variable."""

    like = "_like"  # the template binds a tensor giving dtype and device

    def __init__(self, derivation, batch_size: int = DEFAULT_BATCH_SIZE,
                 inputs: dict | None = None, definitions: dict | None = None) -> None:
        symbolic = derivation.model.symbolic
        self.symbolic = symbolic
        self.definitions: dict = definitions or derivation.definitions
        self.inputs = inputs if inputs is not None else {
            symbolic.visible: str(symbolic.visible.label)}
        self.batch_size = batch_size
        self.defaults = symbolic.default_sizes
        self.scalar_names = {symbol: f"self.{name}" for name, symbol in symbolic.dims.items()}
        self.scalar_names.update({s: f"self.{n}" for n, s in symbolic.consts.items()})
        # the module's tensors read as `self.<name>`: parameters and vector constants
        self.params = {str(base.label) if isinstance(base, sp.IndexedBase) else str(base): base
                       for base in [*symbolic.params.values(),
                                    *symbolic.vector_consts.values()]}
        self.checked_params = symbolic.checked.params
        self.accessors = {name: param.constraint.accessor
                          for name, param in symbolic.checked.params.items()
                          if param.constraint is not None}
        self.program = Program()
        self.counter = 0
        self.grids = Grids(self)
        # what is planned already, each its own cache
        self.values: dict[Key, Operand] = {}  # value key -> operand, up to index renaming
        self.pairs: dict[Key, tuple[str, str]] = {}  # pairwise key -> (step, its axes)
        self.squares: dict[Key, Operand] = {}  # squared sums: the form chosen
        self.defined: dict[str, Operand] = {}  # definition name -> operand
        self.constrained: dict[str, str] = {}  # constrained parameter -> its value's step
        self.identities: dict[str, str] = {}  # size code -> identity matrix step
        self.layouts: dict[sp.Expr, tuple] = {}  # definition body -> its formal axes
        self.let_symmetry: dict[str, tuple] = {}  # let -> position pairs it is symmetric in
        # sum(i: A[i, j]^2) steps (and sum(i, j: A[i, j]^2), axis -1) and Gram matrices
        # sum(i: A[i, j1] A[i, j2]), each under (A, the summed axis): a method forming
        # both takes the first as the Gram's diagonal (or trace)
        self.square_sums: dict[str, tuple[str, int]] = {}
        self.grams: dict[tuple[str, int], str] = {}
        # facts about expressions, asked many times
        self.indices_cache: dict[sp.Basic, tuple] = {}
        self.key_cache: dict[sp.Expr, tuple[Key, dict]] = {}
        self.tensor_cache: dict[sp.Basic, bool] = {}
        self.batched = self._batched_definitions()
        self.free_steps: set[str] | None = None  # see `weighing`

    # ------------------------------------------------------------------ facts
    def _batched_definitions(self) -> set[str]:
        """The definitions that depend on the inputs (until nothing changes: a derived
        let may come after the definitions that read it)."""
        batched: set[str] = set()
        grew = True
        while grew:
            grew = False
            for name, definition in self.definitions.items():
                if name not in batched and self.mentions_batched(definition.body, batched):
                    batched.add(name)
                    grew = True
        return batched

    def mentions_batched(self, expr: sp.Basic, batched: set[str] | None = None) -> bool:
        """Whether expr depends on the method's inputs (directly or through definitions)."""
        batched = self.batched if batched is None else batched
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Indexed):
                label = str(node.base.label)
                if node.base in self.inputs or (label in batched
                                                and self.definitions[label].base == node.base):
                    return True
            elif isinstance(node, sp.Symbol) and str(node) in batched \
                    and self._definition_symbol(node):
                return True
            elif isinstance(node, sp.IndexedBase) and (  # a JacobianSquares argument
                    node in self.inputs or (str(node.label) in batched and
                                            self.definitions[str(node.label)].base == node)):
                return True
        return False

    def _definition_symbol(self, node: sp.Basic) -> bool:
        definition = self.definitions.get(str(node))
        return definition is not None and definition.base == node

    def indices_of(self, expr: sp.Basic) -> tuple:
        """Axes of expr's value: the batch if it depends on v, then its free indices."""
        if expr not in self.indices_cache:
            free = axis_order(expr, free_indices(expr))
            batch = (BATCH,) if self.mentions_batched(expr) else ()
            self.indices_cache[expr] = batch + free
        return self.indices_cache[expr]

    def size(self, index: sp.Basic) -> int:
        if index == BATCH:
            return self.batch_size
        return int((index.upper - index.lower + 1).subs(self.defaults))

    def volume(self, indices) -> int:
        """The number of elements of a value with these axes, at the planning sizes."""
        return volume(tuple(self.size(i) for i in set(indices)))

    def _row_space_factor(self, expr: RowSpaceFactor) -> Operand:
        """R[b, a] with R^T R = A A^T (`_row_space`), computed once per method."""
        matrix, first, second = expr.args
        name = str(matrix.label)
        key = f"row space {name}"
        if key not in self.identities:
            row, column = self.definitions[name].indices
            operand = self.operand(matrix[row, column])
            other = sp.Idx(f"{row}_", (row.lower, row.upper))
            gram = self.operand(sp.Sum(matrix[row, column] * matrix[other, column],
                                       (column, column.lower, column.upper)))
            self.identities[key] = self.emit_step(  # the Gram matrix shared with the score's
                f"_row_space({self.align(operand, (row, column))}, "
                f"{self.align(gram, (row, other))})",
                f"R with R^T R = {name} {name}^T",
                cost=self.volume(operand.indices) * self.size(row))
        return Operand(self.identities[key], (first, second))

    def _jacobian_squares(self, expr: JacobianSquares) -> Operand:
        """`_jacobian_squares(R, (kind, X), ...)` per sample: R from `_row_space`, each X
        a parameter's value or a definition's [N, H] (broadcast when it is the same for
        every sample)."""
        slope, *steps = expr.args
        row, _ = self.definitions[str(slope.label)].indices
        parts = [self._row_space_factor(RowSpaceFactor(slope, row, row)).code]
        for step in steps:
            kind, base = step.args
            label = str(base.label)
            if label in self.definitions and self.definitions[label].base == base:
                formal = tuple(self.definitions[label].indices)
                operand = self.define(label)
                target = (BATCH, *formal)
                code = operand.code if operand.indices == target else self.conform(
                    operand, target, None, f"{label}, for every sample").code
            else:  # a parameter or constant matrix
                indices = tuple(sp.Idx(f"_js{k}") for k in range(2))
                operand = self.operand(base[indices])
                code = self.align(operand, indices)
            parts.append(f'("{kind}", {code})')
        code = f"_jacobian_squares({', '.join(parts)})"
        return Operand(self.emit_step(code, dsl_str(expr)), (BATCH,))

    def has_tensor(self, expr: sp.Basic) -> bool:
        """Whether expr involves a tensor."""
        if expr not in self.tensor_cache:
            self.tensor_cache[expr] = any(
                isinstance(node, (sp.Indexed, sp.KroneckerDelta, MatrixInverse, LogDet,
                                  RowSpaceFactor, JacobianSquares)) or (
                    isinstance(node, sp.Symbol) and (str(node) in self.params
                                                     or self._definition_symbol(node)))
                for node in sp.preorder_traversal(expr))
        return self.tensor_cache[expr]

    def value_key(self, expr: sp.Expr) -> tuple[Key, dict]:
        """`keys.value_key`, cached (the cost estimates ask for the same keys often)."""
        if expr not in self.key_cache:
            self.key_cache[expr] = value_key(expr)
        key, to_placeholder = self.key_cache[expr]
        return key, dict(to_placeholder)

    def shape_code(self, index: sp.Basic) -> str:
        if index == BATCH:
            return "_batch"
        size = index.upper - index.lower + 1
        return TorchPrinter(set(), self.scalar_names).doprint(size)

    # ------------------------------------------------------------------ costs
    @contextmanager
    def weighing(self, given: set[str]) -> Iterator[None]:
        """While an alternative form is planned to be weighed against another: only the
        steps in `given` count as free (outside, every step planned so far does)."""
        previous, self.free_steps = self.free_steps, given
        try:
            yield
        finally:
            self.free_steps = previous

    def is_free_step(self, step: str) -> bool:
        """Whether the step (with what it needs) costs nothing more to use."""
        return self.free_steps is None or self.program.cost([step], self.free_steps) == 0

    def _equation(self, factors: list, output: tuple) -> tuple[str, list[tuple]]:
        letters: dict = {}
        terms, shapes = [], []
        for factor in factors:
            indices = self.indices_of(factor) if not isinstance(factor, Operand) \
                else factor.indices
            for index in indices:
                letters.setdefault(index, LETTERS[len(letters)])
            terms.append("".join(letters[i] for i in indices))
            shapes.append(tuple(self.size(i) for i in indices))
        out = "".join(letters.get(i, "") for i in output)
        return ",".join(terms) + "->" + out, shapes

    def cost_of(self, factors: list, expr: sp.Sum) -> float:
        """Multiply-adds of contracting `factors` into expr's axes, in opt_einsum's order,
        plus forming the factors that are not plain tensor entries."""
        tensor_factors = [f for f in factors if self.has_tensor(f)]
        if not tensor_factors:
            return 0.0
        equation, shapes = self._equation(tensor_factors, self.indices_of(expr))
        info = contraction_path(equation, tuple(shapes))
        elementwise = sum(volume(s) for f, s in zip(tensor_factors, shapes, strict=True)
                          if not isinstance(f, (sp.Indexed, sp.Symbol)))
        return float(info.opt_cost) + elementwise

    def nested_cost(self, factor: sp.Expr) -> float:
        """Cost of computing a nested sum on its own, with the sums nested in it
        (nothing for what is already computed)."""
        inner = factor.args[0] if isinstance(factor, sp.Pow) else factor
        for candidate in (factor, inner):
            key, _ = self.value_key(candidate)
            if key in self.values and self.is_free_step(self.values[key].code):
                return 0.0
        _, factors = rewrites.split_scalars(self, sp.Mul.make_args(inner.function))
        nests = {self.value_key(f)[0]: f for f in factors if rewrites.mergeable(f)}
        return self.cost_of(factors, inner) + sum(self.nested_cost(f) for f in nests.values())

    # ------------------------------------------------------------------ steps
    def _new_name(self, hint: str | None = None) -> str:
        if hint is not None and hint not in {s.name for s in self.program.steps}:
            return hint
        self.counter += 1
        return f"_t{self.counter}"

    def emit_step(self, code: str, comment: str, name: str | None = None,
                  cost: float = 0.0) -> str:
        """Append one assignment to the program; its name (`name` if free, else _tN)."""
        code = ast.unparse(ast.parse(code, mode="eval"))
        if len(comment) > 88:  # comments sit at 8 spaces of indentation, 100 columns
            comment = comment[:85] + "..."
        name = self._new_name(name)
        deps = tuple(sorted({s.name for s in self.program.steps if uses_name(code, s.name)}))
        self.program.steps.append(Step(name, code, comment, deps, cost))
        return name

    # ------------------------------------------------------------------ definitions
    def define(self, name: str) -> Operand:
        """The operand of a let or derived quantity, axes (batch?, formal indices)."""
        if name in self.defined:
            return self.defined[name]
        definition = self.definitions[name]
        target = ((BATCH,) if name in self.batched else ()) + tuple(definition.indices)
        internal = name.startswith("_")  # no alias step for the compiler's own definitions
        self.layouts[definition.body] = target  # an elementwise body: in the formal order
        operand = self.operand(definition.body, name=None if internal else name)
        if operand.code != name and not (internal and operand.indices == target):
            operand = self.conform(operand, target, None if internal else name,
                                   dsl_str(definition.body))
        self.defined[name] = operand
        return operand

    def conform(self, operand: Operand, target: tuple, name: str | None,
                comment: str) -> Operand:
        """Give operand exactly the axes `target` (permuting and broadcasting)."""
        if operand.indices == target and operand.is_tensor and (
                name is None or operand.code == name):
            return operand
        if not operand.is_tensor:
            shape = ", ".join(self.shape_code(i) for i in target)
            code = f"{self.like}.new_full(({shape}{',' if len(target) == 1 else ''}), " \
                   f"{operand.code})" if target else f"{self.like}.new_tensor({operand.code})"
        else:
            code = self.align(operand, target)
            if set(operand.indices) != set(target):
                shape = ", ".join(self.shape_code(i) for i in target)
                code = f"{code}.expand({shape})"
        return Operand(self.emit_step(code, comment, name, self.volume(target)), target)

    def align(self, operand: Operand, target: tuple, broadcast: bool = False) -> str:
        """Code viewing `operand` with axes in `target` order (None for missing axes)."""
        present = [i for i in target if i in operand.indices]
        code = operand.code
        if tuple(present) != operand.indices:
            perm = [operand.indices.index(i) for i in present]
            code = f"{code}.permute({', '.join(map(str, perm))})"
        if not broadcast and len(present) == len(target):
            return code
        first = next((k for k, i in enumerate(target) if i in operand.indices), len(target))
        view = [":" if i in operand.indices else "None" for i in target[first:]]
        while view and view[-1] == ":":
            view.pop()
        if not view or not operand.indices:
            return code
        return f"{code}[{', '.join(view)}]"

    # ------------------------------------------------------------------ expressions
    def operand(self, expr: sp.Expr, name: str | None = None) -> Operand:
        expr = sp.sympify(expr)
        leaf = self._leaf(expr)
        if leaf is not None:
            return leaf
        key, to_placeholder = self.value_key(expr)
        if key in self.values:
            back = {p: i for i, p in to_placeholder.items()}
            return self.values[key].relabel(back)
        if not self.has_tensor(expr):
            code = TorchPrinter(set(), self.scalar_names).doprint(expr)
            result = Operand(f"({code})" if not expr.is_Atom else code, (), False)
        elif isinstance(expr, sp.Sum):
            result = self.contraction(expr, name)
            self._note_gram(expr, result)
        elif isinstance(expr, LogSumExp):
            result = self.log_sum_exp(expr, name)
        else:
            result = self.elementwise(expr, name)
        self.values[key] = result.relabel(to_placeholder)
        return result

    def _leaf(self, expr: sp.Expr) -> Operand | None:
        if isinstance(expr, sp.Indexed):
            label = str(expr.base.label)
            indices = tuple(expr.indices)
            if len(set(indices)) != len(indices):
                return self._diagonal(expr)
            if expr.base in self.inputs:
                return Operand(self.inputs[expr.base], (BATCH, *indices))
            if label in self.accessors and self.params[label] == expr.base:
                operand = self._constrained(label)
                return operand.relabel(dict(zip(operand.indices, indices, strict=True)))
            if label in self.params and self.params[label] == expr.base:
                return Operand(f"self.{label}", indices)
            if label in self.definitions and self.definitions[label].base == expr.base:
                operand = self.define(label)
                formal = tuple(self.definitions[label].indices)
                return operand.relabel(dict(zip(formal, indices, strict=True)))
            raise ValueError(f"unknown tensor {label}")  # pragma: no cover
        if isinstance(expr, sp.KroneckerDelta):
            return self._delta(expr)
        if isinstance(expr, MatrixInverse):
            matrix, row, column = expr.args
            factor = self._cholesky_factor(matrix)
            key = f"inverse {factor}"
            if key not in self.identities:
                self.identities[key] = self.emit_step(
                    f"torch.cholesky_inverse({factor})", f"{matrix.label}^-1",
                    cost=self.volume(self.defined[str(matrix.label)].indices) * 2)
            return Operand(self.identities[key], (row, column))
        if isinstance(expr, RowSpaceFactor):
            return self._row_space_factor(expr)
        if isinstance(expr, JacobianSquares):
            return self._jacobian_squares(expr)
        if isinstance(expr, LogDet):
            (matrix,) = expr.args
            factor = self._cholesky_factor(matrix)
            code = f"2 * torch.log(torch.diagonal({factor}, dim1=-2, dim2=-1)).sum(dim=-1)"
            return Operand(self.emit_step(code, f"log det {matrix.label}"), ())
        if isinstance(expr, sp.Symbol):
            name = str(expr)
            if expr in self.scalar_names:
                return Operand(self.scalar_names[expr], (), False)
            if name in self.accessors and self.params.get(name) == expr:
                return self._constrained(name)
            if name in self.params and self.params[name] == expr:
                return Operand(f"self.{name}", ())
            if self._definition_symbol(expr):
                return self.define(name)
        return None

    def _constrained(self, name: str) -> Operand:
        """A constrained parameter's value, computed once per method by its accessor."""
        if name not in self.constrained:
            step = self.emit_step(f"self.{self.accessors[name]}()",
                                  f"{name}, constrained (see {self.accessors[name]})", name)
            self.constrained[name] = step
            if name in self.grids.masks:
                self.grids.dense_steps[step] = name
        rank = len(self.checked_params[name].shape)  # a matrix, or a positive tensor
        return Operand(self.constrained[name], (_AXIS0, _AXIS1)[:rank])

    def _note_gram(self, expr: sp.Sum, result: Operand) -> None:
        """Record a column sum of squares of a matrix, or its Gram matrix (see
        `square_sums`); only unbatched matrices (parameters and their lets)."""
        if not result.is_tensor or BATCH in result.indices:
            return
        body = expr.function
        if len(expr.limits) == 2 and isinstance(body, sp.Pow) and body.exp == 2 and \
                isinstance(body.base, sp.Indexed) and \
                set(body.base.indices) == {limit[0] for limit in expr.limits} and \
                len(body.base.indices) == 2:  # the squared Frobenius norm
            self.square_sums[result.code] = (str(body.base.base), -1)
            return
        if len(expr.limits) != 1:
            return
        index = expr.limits[0][0]
        if isinstance(body, sp.Pow) and body.exp == 2 and isinstance(body.base, sp.Indexed):
            entry = body.base
            if len(entry.indices) == 2 and entry.indices.count(index) == 1:
                self.square_sums[result.code] = (str(entry.base), entry.indices.index(index))
            return
        factors = sp.Mul.make_args(body)
        if len(factors) != 2 or not all(isinstance(f, sp.Indexed) for f in factors):
            return
        first, second = factors
        if first.base != second.base or len(first.indices) != 2:
            return
        axes = {f.indices.index(index) if f.indices.count(index) == 1 else -1
                for f in factors}
        if len(axes) == 1 and -1 not in axes and len(result.indices) == 2:
            self.grams.setdefault((str(first.base), axes.pop()), result.code)

    def diagonals(self, steps: set[str]) -> dict[str, str]:
        """Square-sum steps among `steps` whose Gram matrix is among them too: each
        step -> its code from the Gram step (no D x K temporary, no extra pass)."""
        found = {}
        for step, (base, axis) in self.square_sums.items():
            if step not in steps:
                continue
            if axis >= 0:  # a column sum of squares: the diagonal
                gram = self.grams.get((base, axis))
                if gram in steps:
                    found[step] = f"torch.diagonal({gram})"
                continue
            for either in (0, 1):  # the squared Frobenius norm: either Gram's trace
                gram = self.grams.get((base, either))
                if gram in steps:
                    found[step] = f"torch.trace({gram})"
                    break
        return found

    def _cholesky_factor(self, matrix: sp.IndexedBase) -> str:
        """The step holding the Cholesky factor of the matrix a definition names (its
        own axes in order), computed once; the module's _cholesky refuses a matrix that
        is not positive definite with a clear error."""
        name = str(matrix.label)
        key = f"cholesky {name}"
        if key not in self.identities:
            operand = self.define(name)
            formal = tuple(self.definitions[name].indices)
            code = self.align(operand, formal)
            self.identities[key] = self.emit_step(f"self._cholesky({code})",
                                                  f"Cholesky factor of {name}",
                                                  cost=self.volume(formal) * 2)
        return self.identities[key]

    def _diagonal(self, expr: sp.Indexed) -> Operand:
        """W[i, i] and friends: einsum with a repeated letter (e.g. 'ii->i')."""
        distinct = [sp.Idx(f"_d{k}", (i.lower, i.upper)) for k, i in enumerate(expr.indices)]
        whole = self.operand(expr.base[tuple(distinct)])
        centre = self.grids.centre(whole, expr)
        if centre is not None:
            return centre
        letters: dict = {}
        for index in expr.indices:
            letters.setdefault(index, LETTERS[len(letters)])
        source = whole.relabel(dict(zip(distinct, expr.indices, strict=True)))
        batch = "n" if BATCH in source.indices else ""
        source_letters = "".join("n" if i == BATCH else letters[i] for i in source.indices)
        unique = tuple(dict.fromkeys(expr.indices))
        out = batch + "".join(letters[i] for i in unique)
        code = f'torch.einsum("{source_letters}->{out}", {source.code})'
        if source_letters in ("aa", "naa"):  # a matrix's diagonal: a view, no copy
            code = f"torch.diagonal({source.code}, dim1=-2, dim2=-1)"
        return Operand(self.emit_step(code, dsl_str(expr), cost=self.volume(source.indices)),
                       ((BATCH,) if batch else ()) + unique)

    def _delta(self, expr: sp.KroneckerDelta) -> Operand:
        """delta(p, q): an identity matrix of the index's size."""
        a, b = expr.args
        size = self.shape_code(a)
        if size not in self.identities:
            code = f"torch.eye({size}, dtype={self.like}.dtype, device={self.like}.device)"
            self.identities[size] = self.emit_step(code, f"identity ({a}, {b})")
        return Operand(self.identities[size], (a, b))

    def elementwise(self, expr: sp.Expr, name: str | None) -> Operand:
        """One step for a tree of +, *, powers and functions over tensor leaves."""
        leaves: dict[sp.Expr, Operand] = {}
        squares: list[sp.Sum] = []
        wanted = self.layouts.get(expr)

        def collect(node: sp.Expr) -> None:
            if not self.has_tensor(node):
                return
            if rewrites.square_terms(self, node) is not None:
                squares.append(node)  # planned once the other leaves are known
                return
            if isinstance(node, softmax_weight) and node is expr:  # exp(e - l): e and l
                for arg in node.args:  # computed on their own, subtracted last
                    if self.has_tensor(arg):
                        leaves[arg] = self.operand(arg)
                return
            if isinstance(node, (sp.Indexed, sp.Symbol, sp.KroneckerDelta, *REDUCTIONS)) or (
                    isinstance(node, sp.Function) and node is not expr):
                # functions of tensors get their own step, so each is computed once; a
                # sum over the definition's own axes, in the definition's order
                if wanted is not None and isinstance(node, sp.Sum) \
                        and set(self.indices_of(node)) == set(wanted):
                    self.layouts.setdefault(node, wanted)
                leaves[node] = self.operand(node)
                return
            for arg in node.args:
                collect(arg)

        collect(expr)
        given = {step.name for step in self.program.needed(
            [op.code for op in leaves.values() if op.is_tensor])}
        for square in squares:
            leaves[square] = rewrites.square_of_sum(self, square, given)
        # the axes the leaves carry: an index the expression names but no leaf's value
        # depends on (score[j] of a score constant in j) is no axis of the result
        carried = set().union(*(op.indices for op in leaves.values() if op.is_tensor))
        target = tuple(i for i in self.indices_of(expr) if i in carried)
        if wanted is not None and set(wanted) == set(target):
            target = wanted
        placeholders = {}
        for leaf, operand in leaves.items():
            if operand.is_tensor:
                placeholders[leaf] = sp.Symbol(self.align(operand, target, broadcast=True))
            else:
                placeholders[leaf] = sp.Symbol(operand.code)
        printer = TorchPrinter({p for leaf, p in placeholders.items() if leaves[leaf].is_tensor},
                               self.scalar_names)
        replaced = expr.xreplace(placeholders)
        axes = {placeholders[leaf]: op.indices for leaf, op in leaves.items() if op.is_tensor}
        code = self._small_factors_first(replaced, printer, axes)
        operations = sum(1 for node in sp.preorder_traversal(replaced) if node.args)
        return Operand(self.emit_step(code, dsl_str(expr), name,
                                      self.volume(target) * max(operations, 1)), target)

    def _small_factors_first(self, expr: sp.Expr, printer: TorchPrinter,
                             axes: dict[sp.Symbol, tuple]) -> str:
        """The code of a product (or of each product in a sum) with its tensor factors
        grouped by the axes they carry, the smallest group first and scalars in it:
        g1[n, a] (1 - g1[n, a]) V2[h, a] is (g1 * (1 - g1)) * V2, one product at the
        size of [N, H, H] where the factors in SymPy's order make three."""

        def carried(node: sp.Expr) -> frozenset:
            return frozenset().union(*(axes.get(s, ()) for s in node.free_symbols))

        def groups_of(node: sp.Expr) -> dict[frozenset, list]:
            groups: dict[frozenset, list] = {}
            for factor in sp.Mul.make_args(node):
                groups.setdefault(carried(factor), []).append(factor)
            return groups

        def split(node: sp.Expr) -> bool:
            """Whether grouping saves a product at full size: a group of two tensor
            factors or more is smaller than the product."""
            groups = {g: f for g, f in groups_of(node).items() if g}
            if len(groups) < 2:
                return False
            full = self.volume(frozenset().union(*groups))
            return any(len(f) >= 2 and self.volume(g) < full for g, f in groups.items())

        def product(node: sp.Expr) -> str:
            groups = groups_of(node)
            scalars = groups.pop(frozenset(), [])
            order = sorted(groups, key=lambda g: (self.volume(g), sorted(map(str, g))))
            groups[order[0]] = scalars + groups[order[0]]
            # the first group parenthesised too when it prints as a sum: (M + M^T) * V
            first = printer.parenthesize(sp.Mul(*groups[order[0]]), PRECEDENCE["Mul"],
                                         strict=False)
            codes = [printer.doprint(sp.Mul(*groups[g])) for g in order[1:]]
            return " * ".join([first, *(f"({c})" for c in codes)])

        if isinstance(expr, sp.Mul) and split(expr):
            return product(expr)
        if isinstance(expr, sp.Add) and any(split(t) for t in expr.args):
            terms = []
            for term in printer._as_ordered_terms(expr):
                if term.could_extract_minus_sign():
                    sign, term = "-", -term
                else:
                    sign = "+"
                code = product(term) if split(term) else printer.doprint(term)
                terms.append(f"{sign} ({code})")
            return " ".join(terms).removeprefix("+ ")
        return printer.doprint(expr)

    def log_sum_exp(self, expr: LogSumExp, name: str | None) -> Operand:
        """torch.logsumexp of the body over the summed axes; an index the body's value
        does not vary along adds log of its size (the normal form leaves none, but a
        value may be constant along an index its formula names)."""
        body = self.operand(expr.function)
        summed = [limit[0] for limit in expr.limits]
        axes = [k for k, i in enumerate(body.indices) if i in summed]
        constant = [self.shape_code(i) for i in summed if i not in body.indices]
        if axes and body.is_tensor:
            dims = str(axes[0]) if len(axes) == 1 else f"({', '.join(map(str, axes))})"
            code = f"torch.logsumexp({body.code}, dim={dims})"
        else:
            code = body.code
        if constant:
            code = f"{code} + math.log({' * '.join(constant)})"
        kept = tuple(i for i in body.indices if i not in summed)
        if not body.is_tensor:
            return Operand(f"({code})", (), False)
        return Operand(self.emit_step(code, dsl_str(expr), name, self.volume(body.indices)),
                       kept)

    # ------------------------------------------------------------------ contractions
    def contraction(self, expr: sp.Sum, name: str | None) -> Operand:
        """sum over indices of a product: pairwise steps in opt_einsum's order."""
        scalars, factors, summed = rewrites.merge_nested_sums(self, expr)
        factors = rewrites.group_elementwise(self, factors)
        before = set().union(*(free_indices(f) for f in factors))
        factors = rewrites.nest_private_indices(self, factors, self.indices_of(expr))
        nested = before - set().union(*(free_indices(f) for f in factors))
        operands = [self.operand(f) for f in factors]
        coefficient = sp.Mul(*scalars)
        for f, op in zip(factors, operands, strict=True):
            if not op.is_tensor:
                coefficient = coefficient * f
        tensors = [op for op in operands if op.is_tensor]
        formulas = [f for f, op in zip(factors, operands, strict=True) if op.is_tensor]
        carried = set().union(*(op.indices for op in tensors))
        coefficient = coefficient * rewrites.size_of_missing_axes(summed, carried, nested)
        output = tuple(i for i in self.indices_of(expr) if i in carried)
        wanted = self.layouts.get(expr)  # a definition's body: in its formal order
        if wanted is not None and set(wanted) == set(output):
            output = wanted
        result = self._contract(tensors, output, dsl_str(expr), None if coefficient != 1 else name,
                                formulas)
        if coefficient != 1:
            scale = TorchPrinter(set(), self.scalar_names).doprint(coefficient)
            if not self.has_tensor(coefficient):
                code = f"{scale} * {result.code}" if coefficient != -1 else f"-{result.code}"
                return Operand(self.emit_step(code, dsl_str(expr), name,
                                              self.volume(result.indices)), result.indices)
            raise ValueError("tensor coefficient outside its sum")  # pragma: no cover
        return result

    def _square_of(self, code: str) -> str | None:
        """X when `code` names a step torch.square(X) of a plain name X."""
        for step in reversed(self.program.steps):
            if step.name == code:
                match = re.fullmatch(r"torch\.square\((\w+)\)", step.code)
                return match.group(1) if match else None
        return None

    def _contract(self, tensors: list[Operand], output: tuple, comment: str,
                  name: str | None, formulas: list[sp.Expr]) -> Operand:
        """Pairwise steps in opt_einsum's order; each partial result is commented with
        the formula it computes (`formulas` are the factors' own)."""
        if len(tensors) == 1:
            (single,) = tensors
            if set(single.indices) == set(output):  # nothing left to sum
                if single.indices == output and name is None:
                    return single
                return Operand(self.emit_step(self.align(single, output), comment, name,
                                              self.volume(output)), output)
            if all(i in single.indices for i in output) and \
                    [i for i in single.indices if i in output] == list(output):
                axes = [k for k, i in enumerate(single.indices) if i not in output]
                dims = str(axes[0]) if len(axes) == 1 else f"({', '.join(map(str, axes))})"
                code = f"{single.code}.sum(dim={dims})"
                squared = self._square_of(single.code)
                if squared is not None and len(axes) == 1 and is_per_sample_matrix(single):
                    code = f"_square_sum({squared}, {dims})"
                return Operand(self.emit_step(code, comment, name,
                                              self.volume(single.indices)), output)
        current = self.grids.products(list(zip(tensors, formulas, strict=True)), output)
        current = rewrites.reuse_pairs(self, current, output)
        tensors = [op for op, _ in current]
        if len(tensors) == 1:
            return self._contract(tensors, output, comment, name, [current[0][1]])
        equation, shapes = self._equation(tensors, output)
        info = contraction_path(equation, tuple(shapes))
        letter_of: dict = {}
        for op, letters in zip(tensors, equation.split("->")[0].split(","), strict=True):
            letter_of.update(zip(op.indices, letters, strict=True))
        steps = info.contraction_list
        for k, (positions, _removed, einsum, _remaining, _blas) in enumerate(steps):
            picked_pairs = [current.pop(p) for p in positions]
            picked = [op for op, _ in picked_pairs]
            _, out_letters = einsum.split("->")
            # each operand's letters from its own axis order (an intermediate's axes follow
            # `natural_order`, not the order opt_einsum assumed)
            inputs = ",".join("".join(letter_of[i] for i in op.indices) for op in picked)
            letter_to_index = {letter: index for index, letter in letter_of.items()}
            last = k == len(steps) - 1
            if not last:  # an intermediate's axis order is free: follow the inputs'
                out_letters = natural_order(inputs, out_letters)
            out_indices = tuple(letter_to_index[c] for c in out_letters)
            if last:
                out_indices = output
                out_letters = "".join(next(c for c, i in letter_to_index.items() if i == o)
                                      for o in output)
            removed = {i for op in picked for i in op.indices} - set(out_indices) - {BATCH}
            formula = make_sum(sp.Mul(*[f for _, f in picked_pairs]),
                               [(i, i.lower, i.upper) for i in sorted(removed, key=str)])
            result = symmetric_pairwise(self, picked_pairs, inputs, out_letters,
                                        letter_to_index, comment if last else
                                        dsl_str(formula), name if last else None,
                                        reorder=not last) \
                or self.pairwise(picked, inputs, out_letters, out_indices,
                                 comment if last else dsl_str(formula), name if last else None)
            if isinstance(formula, sp.Sum):
                self._note_gram(formula, result)
            current.append((result, formula))
        return current[-1][0]

    def pairwise(self, picked: list[Operand], inputs: str, out_letters: str,
                 out_indices: tuple, comment: str, name: str | None) -> Operand:
        """One pairwise contraction, or the step that computed it already (transposed)."""
        key, canonical = pair_key([op.code for op in picked], inputs, out_letters)
        letter_index = dict(zip(inputs.replace(",", ""),
                                (i for op in picked for i in op.indices), strict=True))
        if key in self.pairs and name is None:
            step, axes = self.pairs[key]  # the step's own axis order, canonically
            actual = {c: letter for letter, c in canonical.items()}
            return Operand(step, tuple(letter_index[actual[c]] for c in axes))
        code = pairwise_code(picked, inputs, out_letters, out_indices, self.shape_code)
        cost = self.volume({i for op in picked for i in op.indices})
        step = self.emit_step(code, comment, name, cost)
        self.pairs[key] = (step, "".join(canonical[c] for c in out_letters))
        return Operand(step, out_indices)
