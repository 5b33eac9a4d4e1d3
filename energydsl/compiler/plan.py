"""Stage 6, plan: derived SymPy expressions -> a straight-line tensor program.

Every quantity becomes a list of `Step`s (one assignment each, commented with the
formula it computes). The planner
- keeps the batch as one more index (`_n`), so vectorisation is just einsum;
- computes each `let`, derived quantity and repeated subexpression once (memoised up
  to renaming of indices);
- turns each sum of products into pairwise einsums in the order opt_einsum finds
  cheapest for the spec's default sizes, after deciding per nested sum whether to
  contract it first or merge it into the outer product (a squared sum becomes a product
  of two renamed copies when that is cheaper: sum_l (sum_h A_h V_hl)^2 = A^T (V V^T) A).
"""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass, field

import opt_einsum
import sympy as sp
from opt_einsum.contract import PathInfo

from energydsl.compiler.algebra import make_sum, substitute_index
from energydsl.compiler.derive import Derivation
from energydsl.compiler.emit.torch_printer import TorchPrinter
from energydsl.compiler.lower import Definition
from energydsl.compiler.notation import dsl_str

BATCH = sp.Symbol("_n")
_AXIS0, _AXIS1 = sp.Symbol("_a0"), sp.Symbol("_a1")
DEFAULT_BATCH_SIZE = 128
_LETTERS = "abcdefghijklmopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Operand:
    """A value in the program: its Python code, axis order and whether it is a tensor."""

    code: str
    indices: tuple[sp.Basic, ...] = ()
    is_tensor: bool = True

    def relabel(self, mapping: dict) -> Operand:
        return Operand(self.code, tuple(mapping.get(i, i) for i in self.indices), self.is_tensor)


@dataclass(frozen=True)
class Step:
    name: str
    code: str
    comment: str
    deps: tuple[str, ...]
    cost: float = 0.0  # estimated multiply-adds at the planning sizes


@dataclass
class Program:
    steps: list[Step] = field(default_factory=list)
    outputs: dict[str, Operand] = field(default_factory=dict)

    def needed(self, codes: list[str]) -> list[Step]:
        """The steps an output needs, in program order (dead code dropped)."""
        by_name = {step.name: step for step in self.steps}
        wanted: set[str] = set()
        stack = [name for name in codes if name in by_name]
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(name)
            stack.extend(dep for dep in by_name[name].deps if dep in by_name)
        return [step for step in self.steps if step.name in wanted]

    def cost(self, codes: list[str], given: set[str] = frozenset()) -> float:
        """The estimated cost of computing `codes`, steps named in `given` for free."""
        return sum(step.cost for step in self.needed(codes) if step.name not in given)


@functools.lru_cache(maxsize=8192)  # SymPy's free_symbols walks the tree every time
def _free_indices(expr: sp.Basic) -> frozenset[sp.Idx]:
    return frozenset(s for s in expr.free_symbols if isinstance(s, sp.Idx))


class Planner:
    """Plans definitions into one program. `inputs` are the method's tensor arguments
    (base -> argument name), each batched along `_n`; by default the visible variable."""

    def __init__(self, derivation: Derivation, batch_size: int = DEFAULT_BATCH_SIZE,
                 inputs: dict | None = None, definitions: dict[str, Definition] | None = None):
        symbolic = derivation.model.symbolic
        self.symbolic = symbolic
        self.definitions: dict[str, Definition] = definitions or derivation.definitions
        self.visible = symbolic.visible
        self.inputs = inputs if inputs is not None else {
            symbolic.visible: str(symbolic.visible.label)}
        self.batch_size = batch_size
        self.defaults = {symbol: symbolic.checked.dims[name].default
                         for name, symbol in symbolic.dims.items()}
        self.scalar_names = {symbol: f"self.{name}" for name, symbol in symbolic.dims.items()}
        self.scalar_names.update({s: f"self.{n}" for n, s in symbolic.consts.items()})
        self.params = {str(base.label) if isinstance(base, sp.IndexedBase) else str(base): base
                       for base in symbolic.params.values()}
        self.accessors = {name: param.constraint.accessor
                          for name, param in symbolic.checked.params.items()
                          if param.constraint is not None}
        checked = symbolic.checked
        self.grids = {name: param.constraint for name, param in checked.params.items()
                      if param.grid is not None}
        self.grid_names = {**checked.dims, **checked.consts}
        self.grid_steps: dict[str, str] = {}  # dense value's step -> grid-masked parameter
        self.program = Program()
        self.memo: dict[tuple, Operand] = {}
        self.pair_memo: dict[tuple, tuple[str, str]] = {}
        self.defined: dict[str, Operand] = {}
        self.step_names: set[str] = set(self.definitions)
        self.counter = 0
        self.indices_cache: dict[sp.Basic, tuple] = {}
        self.batched = self._batched_definitions()
        # While planning an alternative: the steps it gets for free (None: every step
        # planned so far counts as free, the right view when nothing is being compared).
        self.free_steps: set[str] | None = None
        self.square_memo: dict[tuple, Operand] = {}  # squared sums: the form chosen
        self.canonical_cache: dict[sp.Expr, tuple[tuple, dict]] = {}
        self.tensor_cache: dict[sp.Basic, bool] = {}

    # ------------------------------------------------------------------ facts
    def _batched_definitions(self) -> set[str]:
        batched: set[str] = set()
        for name, definition in self.definitions.items():
            if self._mentions_batched(definition.body, batched):
                batched.add(name)
        return batched

    def _mentions_batched(self, expr: sp.Basic, batched: set[str]) -> bool:
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Indexed):
                label = str(node.base.label)
                if node.base in self.inputs or (label in batched
                                                and self.definitions[label].base == node.base):
                    return True
            elif isinstance(node, sp.Symbol) and str(node) in batched \
                    and self._definition_symbol(node):
                return True
        return False

    def _definition_symbol(self, node: sp.Basic) -> bool:
        definition = self.definitions.get(str(node))
        return definition is not None and definition.base == node

    def indices_of(self, expr: sp.Basic) -> tuple:
        """Axes of expr's value: the batch if it depends on v, then its free indices
        (cached: the planner asks for the same expressions' axes many times)."""
        if expr not in self.indices_cache:
            free = self.order(expr, _free_indices(expr))
            batch = (BATCH,) if self._mentions_batched(expr, self.batched) else ()
            self.indices_cache[expr] = batch + free
        return self.indices_cache[expr]

    def size(self, index: sp.Basic) -> int:
        if index == BATCH:
            return self.batch_size
        return int((index.upper - index.lower + 1).subs(self.defaults))

    @staticmethod
    def order(expr: sp.Basic, indices: set) -> tuple:
        """A canonical axis order: by where each index subscripts tensors, then by name."""
        signature: dict = {i: [] for i in indices}
        for node in sp.preorder_traversal(expr):
            if isinstance(node, sp.Indexed):
                for axis, index in enumerate(node.indices):
                    if index in signature:
                        signature[index].append((str(node.base.label), axis))
        return tuple(sorted(indices, key=lambda i: (sorted(signature[i]), str(i))))

    # ------------------------------------------------------------------ memo keys
    def _canonical(self, expr: sp.Expr) -> tuple[tuple, dict]:
        """A hashable key of expr with free indices renamed _F0.. (canonical order) and
        bound ones after their depth of nesting; equal keys mean equal values up to that
        renaming (cached: the cost estimates ask for the same keys many times)."""
        if expr not in self.canonical_cache:
            self.canonical_cache[expr] = self._canonical_uncached(expr)
        key, to_placeholder = self.canonical_cache[expr]
        return key, dict(to_placeholder)

    def _canonical_uncached(self, expr: sp.Expr) -> tuple[tuple, dict]:
        free = self.order(expr, _free_indices(expr))
        to_placeholder = {index: sp.Idx(f"_F{k}", (index.lower, index.upper))
                          for k, index in enumerate(free)}

        def rename(node: sp.Basic, names: dict, depth: int):
            """One pass building tuples, not SymPy objects (whose construction dominates
            otherwise): free indices to placeholders, a sum's k-th index at nesting depth
            d to (d, k), the arguments of + and * in one order whatever the names."""
            if isinstance(node, sp.Idx):
                return names.get(node, node)
            if isinstance(node, sp.Indexed):
                return ("[]", node.base, tuple(rename(i, names, depth) for i in node.indices))
            if isinstance(node, sp.Sum):
                inner, limits = dict(names), []
                for k, (index, lo, hi) in enumerate(node.limits):
                    inner[index] = ("bound", depth, k, lo, hi)
                    limits.append(inner[index])
                return ("sum", rename(node.function, inner, depth + 1), tuple(limits))
            if not node.args:
                return node
            args = [rename(a, names, depth) for a in node.args]
            if isinstance(node, (sp.Add, sp.Mul)):
                args.sort(key=hash)
            return (node.func, tuple(args))

        return rename(expr, to_placeholder, 0), to_placeholder

    # ------------------------------------------------------------------ steps
    def _new_name(self, hint: str | None = None) -> str:
        if hint is not None and hint not in {s.name for s in self.program.steps}:
            return hint
        self.counter += 1
        return f"_t{self.counter}"

    def volume(self, indices) -> int:
        """The number of elements of a value with these axes, at the planning sizes."""
        return _volume(tuple(self.size(i) for i in set(indices)))

    def _emit(self, code: str, comment: str, name: str | None = None,
              cost: float = 0.0) -> str:
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
        return Operand(self._emit(code, comment, name, self.volume(target)), target)

    like = "_like"  # the template binds a tensor giving dtype and device

    def shape_code(self, index: sp.Basic) -> str:
        if index == BATCH:
            return "_batch"
        size = index.upper - index.lower + 1
        return TorchPrinter(set(), self.scalar_names).doprint(size)

    # ------------------------------------------------------------------ expressions
    def operand(self, expr: sp.Expr, name: str | None = None) -> Operand:
        expr = sp.sympify(expr)
        leaf = self._leaf(expr)
        if leaf is not None:
            return leaf
        key, to_placeholder = self._canonical(expr)
        if key in self.memo:
            back = {p: i for i, p in to_placeholder.items()}
            return self.memo[key].relabel(back)
        if not self._has_tensor(expr):
            code = TorchPrinter(set(), self.scalar_names).doprint(expr)
            result = Operand(f"({code})" if not expr.is_Atom else code, (), False)
        elif isinstance(expr, sp.Sum):
            result = self.contraction(expr, name)
        else:
            result = self.elementwise(expr, name)
        self.memo[key] = result.relabel(to_placeholder)
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
                return self._constrained(label).relabel(
                    dict(zip((_AXIS0, _AXIS1), indices, strict=False)))
            if label in self.params and self.params[label] == expr.base:
                return Operand(f"self.{label}", indices)
            if label in self.definitions and self.definitions[label].base == expr.base:
                operand = self.define(label)
                formal = tuple(self.definitions[label].indices)
                return operand.relabel(dict(zip(formal, indices, strict=True)))
            raise ValueError(f"unknown tensor {label}")  # pragma: no cover
        if isinstance(expr, sp.KroneckerDelta):
            return self._delta(expr)
        if isinstance(expr, sp.Symbol):
            name = str(expr)
            if expr in self.scalar_names:
                return Operand(self.scalar_names[expr], (), False)
            if name in self.params and self.params[name] == expr:
                return Operand(f"self.{name}", ())
            if self._definition_symbol(expr):
                return self.define(name)
        return None

    def _constrained(self, name: str) -> Operand:
        """A constrained parameter's value, computed once per method by its accessor."""
        key = ("constrained", name)
        if key not in self.pair_memo:
            step = self._emit(f"self.{self.accessors[name]}()",
                              f"{name}, constrained (see {self.accessors[name]})", name)
            self.pair_memo[key] = (step, "")
            if name in self.grids:
                self.grid_steps[step] = name
        return Operand(self.pair_memo[key][0], (_AXIS0, _AXIS1))

    def _stencil(self, name: str, transpose: bool = False) -> str:
        """The step holding a grid-masked parameter's [9, D] stencil (of its transpose:
        the same one when the parameter is symmetric), computed once per method."""
        transpose = transpose and not self.grids[name].symmetric
        key = ("stencil", name, transpose)
        if key not in self.pair_memo:
            if transpose:
                height, width, _ = self.grids[name].mask.arguments(self.grid_names)
                code = f"_grid_transpose({self._stencil(name)}, {height}, {width})"
                comment = f"{name}^T as a stencil"
            else:
                code = f"self._{name}_stencil()"
                comment = f"{name}, constrained, as a stencil (see _{name}_stencil)"
            step = self._emit(code, comment, f"_{name}_stencil" + "_t" * transpose,
                              cost=9 * int(self.params[name].shape[0].subs(self.defaults)))
            self.pair_memo[key] = (step, "")
        return self.pair_memo[key][0]

    def _diagonal(self, expr: sp.Indexed) -> Operand:
        """W[i, i] and friends: einsum with a repeated letter (e.g. 'ii->i')."""
        distinct = [sp.Idx(f"_d{k}", (i.lower, i.upper)) for k, i in enumerate(expr.indices)]
        whole = self.operand(expr.base[tuple(distinct)])
        letters: dict = {}
        for index in expr.indices:
            letters.setdefault(index, _LETTERS[len(letters)])
        source = whole.relabel(dict(zip(distinct, expr.indices, strict=True)))
        if whole.code in self.grid_steps and len(expr.indices) == 2:  # the stencil's centre
            key = ("diagonal", whole.code)
            if key not in self.pair_memo:
                code = f"{self._stencil(self.grid_steps[whole.code])}[4]"
                self.pair_memo[key] = (self._emit(code, dsl_str(expr)), "")
            return Operand(self.pair_memo[key][0], expr.indices[:1])
        batch = "n" if BATCH in source.indices else ""
        source_letters = "".join("n" if i == BATCH else letters[i] for i in source.indices)
        unique = tuple(dict.fromkeys(expr.indices))
        out = batch + "".join(letters[i] for i in unique)
        code = f'torch.einsum("{source_letters}->{out}", {source.code})'
        return Operand(self._emit(code, dsl_str(expr), cost=self.volume(source.indices)),
                       ((BATCH,) if batch else ()) + unique)

    def _delta(self, expr: sp.KroneckerDelta) -> Operand:
        """delta(p, q): an identity matrix of the index's size."""
        a, b = expr.args
        code = f"torch.eye({self.shape_code(a)}, dtype={self.like}.dtype, " \
               f"device={self.like}.device)"
        key = ("eye", self.shape_code(a))
        if key not in self.pair_memo:
            self.pair_memo[key] = (self._emit(code, f"identity ({a}, {b})"), "")
        return Operand(self.pair_memo[key][0], (a, b))

    def _has_tensor(self, expr: sp.Basic) -> bool:
        """Whether expr involves a tensor (cached: asked of every subexpression, often)."""
        if expr not in self.tensor_cache:
            self.tensor_cache[expr] = any(
                isinstance(node, (sp.Indexed, sp.KroneckerDelta)) or (
                    isinstance(node, sp.Symbol) and (str(node) in self.params
                                                     or self._definition_symbol(node)))
                for node in sp.preorder_traversal(expr))
        return self.tensor_cache[expr]

    def elementwise(self, expr: sp.Expr, name: str | None) -> Operand:
        """One step for a tree of +, *, powers and functions over tensor leaves."""
        leaves: dict[sp.Expr, Operand] = {}
        squares: list[sp.Sum] = []

        def collect(node: sp.Expr) -> None:
            if not self._has_tensor(node):
                return
            if self._square_terms(node) is not None:
                squares.append(node)  # planned once the other leaves are known
                return
            if isinstance(node, (sp.Indexed, sp.Sum, sp.Symbol, sp.KroneckerDelta)) or (
                    isinstance(node, sp.Function) and node is not expr):
                # functions of tensors get their own step, so each is computed once
                leaves[node] = self.operand(node)
                return
            for arg in node.args:
                collect(arg)

        collect(expr)
        given = {step.name for step in self.program.needed(
            [op.code for op in leaves.values() if op.is_tensor])}
        for square in squares:
            leaves[square] = self._square_of_sum(square, given)
        # the axes the leaves carry: an index the expression names but no leaf's value
        # depends on (score[j] of a score constant in j) is no axis of the result
        carried = set().union(*(op.indices for op in leaves.values() if op.is_tensor))
        target = tuple(i for i in self.indices_of(expr) if i in carried)
        placeholders = {}
        for leaf, operand in leaves.items():
            if operand.is_tensor:
                placeholders[leaf] = sp.Symbol(self.align(operand, target, broadcast=True))
            else:
                placeholders[leaf] = sp.Symbol(operand.code)
        printer = TorchPrinter({p for leaf, p in placeholders.items() if leaves[leaf].is_tensor},
                               self.scalar_names)
        replaced = expr.xreplace(placeholders)
        code = printer.doprint(replaced)
        operations = sum(1 for node in sp.preorder_traversal(replaced) if node.args)
        return Operand(self._emit(code, dsl_str(expr), name,
                                  self.volume(target) * max(operations, 1)), target)

    def _square_terms(self, expr: sp.Expr) -> list[sp.Expr] | None:
        """For sum_p D[p]^2 with D a definition whose body is a sum of terms T_m (the
        score in the SM objective): the terms T_m[p]; else None."""
        if not (isinstance(expr, sp.Sum) and len(expr.limits) == 1):
            return None
        body = expr.function
        if not (isinstance(body, sp.Pow) and body.exp == 2 and isinstance(body.base, sp.Indexed)):
            return None
        label = str(body.base.base.label)
        definition = self.definitions.get(label)
        if definition is None or definition.base != body.base.base \
                or not isinstance(definition.body, sp.Add):
            return None
        terms = []
        for term in definition.body.args:
            for formal, actual in zip(definition.indices, body.base.indices, strict=True):
                term = substitute_index(term, formal, actual)
            terms.append(term)
        return terms

    def _square_of_sum(self, expr: sp.Sum, given: set[str]) -> Operand:
        """sum_p (sum_m T_m[p])^2, either with the inner sum formed ([N, D] for the score)
        and squared, or expanded into sum_{m <= m'} c sum_p T_m[p] T_m'[p], whichever
        costs less beside the steps in `given`. Expanded, each product of two sums is
        one contraction for opt_einsum to order: |W s - v|^2 = s^T (W^T W) s - 2 a.s +
        |v|^2 never forms the [N, D] score (Swersky et al.'s and the GUIDE's reorder)."""
        key, to_placeholder = self._canonical(expr)
        if key in self.square_memo:  # decided before (another method's body)
            return self.square_memo[key].relabel({p: i for i, p in to_placeholder.items()})
        terms = self._square_terms(expr)
        (index, lower, upper), = expr.limits
        formed = self.operand(expr)
        pieces = [make_sum((1 if a == b else 2) * terms[a] * terms[b], [(index, lower, upper)])
                  for a in range(len(terms)) for b in range(a, len(terms))]
        self.free_steps = given
        try:
            expanded = self.operand(sp.Add(*pieces))
        finally:
            self.free_steps = None
        if not expanded.is_tensor or set(expanded.indices) != set(formed.indices):
            self.square_memo[key] = formed.relabel(to_placeholder)
            return formed
        cheaper = self.program.cost([expanded.code], given) < self.program.cost([formed.code],
                                                                                 given)
        chosen = expanded if cheaper else formed
        self.square_memo[key] = chosen.relabel(to_placeholder)
        return chosen

    def _group_elementwise(self, factors: list) -> list:
        """Factors over the same axes multiply elementwise (one step, not an einsum
        operand each): sigmoid(a) (1 - sigmoid(a)) W^2 -> [sigmoid(a) (1 - sigmoid(a))] W^2."""
        groups: dict[tuple, list] = {}
        for factor in factors:
            groups.setdefault(tuple(sorted(map(str, self.indices_of(factor)))), []).append(factor)
        return [sp.Mul(*group) if len(group) > 1 else group[0] for group in groups.values()]

    def _nest_private_indices(self, factors: list, output: tuple) -> list:
        """sum_{k,j} A_j B_kj = sum_j A_j (sum_k B_kj): an index that only one factor
        carries is summed inside that factor first, so the reduction is shared (column
        norms, V V^T) and never repeated per contraction."""
        changed = True
        while changed:
            changed = False
            for k, factor in enumerate(factors):
                others = set().union(*(self.indices_of(f) for j, f in enumerate(factors)
                                       if j != k)) if len(factors) > 1 else set()
                private = [i for i in self.indices_of(factor)
                           if i != BATCH and i not in others and i not in output]
                if private and len(factors) > 1:
                    factors = factors[:k] + [sp.Sum(factor, *[(i, i.lower, i.upper)
                                                             for i in private])] + factors[k + 1:]
                    changed = True
                    break
        return factors

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

    # ------------------------------------------------------------------ contractions
    def contraction(self, expr: sp.Sum, name: str | None) -> Operand:
        """sum over indices of a product: pairwise einsums in opt_einsum's order."""
        scalars, factors, summed = self._flatten(expr)
        factors = self._group_elementwise(factors)
        before = set().union(*(_free_indices(f) for f in factors))
        factors = self._nest_private_indices(factors, self.indices_of(expr))
        nested = before - set().union(*(_free_indices(f) for f in factors))
        operands = [self.operand(f) for f in factors]
        coefficient = sp.Mul(*scalars)
        for f, op in zip(factors, operands, strict=True):
            if not op.is_tensor:
                coefficient = coefficient * f
        tensors = [op for op in operands if op.is_tensor]
        formulas = [f for f, op in zip(factors, operands, strict=True) if op.is_tensor]
        carried = set().union(*(op.indices for op in tensors))
        # sum_j f = (size of j) f when no factor's value depends on j (indices nested
        # into a factor's own sum are summed there)
        for index in dict.fromkeys(summed):
            if index not in carried and index not in nested:
                coefficient = coefficient * (index.upper - index.lower + 1)
        output = tuple(i for i in self.indices_of(expr) if i in carried)
        result = self._contract(tensors, output, dsl_str(expr), None if coefficient != 1 else name,
                                formulas)
        if coefficient != 1:
            scale = TorchPrinter(set(), self.scalar_names).doprint(coefficient)
            if not self._has_tensor(coefficient):
                code = f"{scale} * {result.code}" if coefficient != -1 else f"-{result.code}"
                return Operand(self._emit(code, dsl_str(expr), name,
                                          self.volume(result.indices)), result.indices)
            raise ValueError("tensor coefficient outside its sum")  # pragma: no cover
        return result

    def _split_scalars(self, factors) -> tuple[list, list]:
        scalars = [f for f in factors if not self._has_tensor(f) and not _free_indices(f)]
        rest = [f for f in factors if f not in scalars or _free_indices(f)]
        return scalars, rest

    def _flatten(self, expr: sp.Sum) -> tuple[list, list, list]:
        """Factors of a sum of products, with nested sums merged in where cheaper. A
        nest is tried merged one level and all levels deep: (sum_k s_k sum_h c_kh V_hj)^2
        only pays off once both levels join (then V V^T appears)."""
        scalars, factors = self._split_scalars(sp.Mul.make_args(expr.function))
        summed = [limit[0] for limit in expr.limits]
        changed = True
        while changed:
            changed = False
            for k, factor in enumerate(factors):
                inner = _mergeable(factor)
                if inner is None:
                    continue
                merged = self._merged_factors(inner, factors, summed)
                if merged is None:
                    continue
                options = [merged]
                deep = self._merge_deep(*merged, factors, summed)
                if deep[1] != merged[1]:
                    options.append(deep)
                current = best = self._cost(factors, summed, expr) + self._nested_cost(factor)
                for new_scalars, new_factors, new_summed in options:
                    candidate = factors[:k] + new_factors + factors[k + 1:]
                    nests = {self._canonical(f)[0]: f for f in new_factors if _mergeable(f)}
                    cost = self._cost(candidate, summed + new_summed, expr) + sum(
                        self._nested_cost(f) for f in nests.values())  # copies count once
                    if cost < best:
                        best, choice = cost, (new_scalars, candidate, new_summed)
                if best < current:
                    new_scalars, factors, new_summed = choice
                    scalars, summed = scalars + new_scalars, summed + new_summed
                    changed = True
                    break
        return scalars, factors, summed

    def _merge_deep(self, scalars: list, factors: list, summed: list, context: list,
                    context_summed: list) -> tuple[list, list, list]:
        """`factors` with every nested sum among them merged in too (no cost check)."""
        changed = True
        while changed:
            changed = False
            for k, factor in enumerate(factors):
                inner = _mergeable(factor)
                merged = None if inner is None else self._merged_factors(
                    inner, context + factors, context_summed + summed)
                if merged is not None:
                    scalars = scalars + merged[0]
                    factors = factors[:k] + merged[1] + factors[k + 1:]
                    summed = summed + merged[2]
                    changed = True
                    break
        return scalars, factors, summed

    def _merged_factors(self, inner: list[sp.Sum], context: list, summed: list):
        """The factors of a product of sums, with bound indices renamed apart."""
        taken = {str(i) for f in context for i in _all_indices(f)} | {str(i) for i in summed}
        scalars, factors, new_summed = [], [], []
        for term in inner:
            body, limits = term.function, []
            for index, lo, hi in term.limits:
                fresh = index
                if str(index) in taken:
                    base = str(index.label).rstrip("0123456789")
                    k = 1
                    while f"{base}{k}" in taken:
                        k += 1
                    fresh = sp.Idx(f"{base}{k}", (lo, hi))
                    body = substitute_index(body, index, fresh)
                taken.add(str(fresh))
                limits.append(fresh)
            if isinstance(body, sp.Add):
                return None
            s, f = self._split_scalars(sp.Mul.make_args(body))
            scalars += s
            factors += f
            new_summed += limits
        return scalars, factors, new_summed

    def _equation(self, factors: list, output: tuple) -> tuple[str, list[tuple]]:
        letters: dict = {}
        terms, shapes = [], []
        for factor in factors:
            indices = self.indices_of(factor) if not isinstance(factor, Operand) \
                else factor.indices
            for index in indices:
                letters.setdefault(index, _LETTERS[len(letters)])
            terms.append("".join(letters[i] for i in indices))
            shapes.append(tuple(self.size(i) for i in indices))
        out = "".join(letters.get(i, "") for i in output)
        return ",".join(terms) + "->" + out, shapes

    def _cost(self, factors: list, summed: list, expr: sp.Sum) -> float:
        tensor_factors = [f for f in factors if self._has_tensor(f)]
        if not tensor_factors:
            return 0.0
        equation, shapes = self._equation(tensor_factors, self.indices_of(expr))
        info = _path(equation, tuple(shapes))
        elementwise = sum(_volume(s) for f, s in zip(tensor_factors, shapes, strict=True)
                          if not isinstance(f, (sp.Indexed, sp.Symbol)))
        return float(info.opt_cost) + elementwise

    def _is_free(self, key: tuple) -> bool:
        """Whether the value with memo key `key` costs nothing more to use."""
        if key not in self.memo:
            return False
        return self.free_steps is None or self.program.cost([self.memo[key].code],
                                                            self.free_steps) == 0

    def _nested_cost(self, factor: sp.Expr) -> float:
        """Cost of computing a nested sum on its own, with the sums nested in it
        (nothing for what is already computed)."""
        key, _ = self._canonical(factor)
        if self._is_free(key):
            return 0.0
        inner = factor.args[0] if isinstance(factor, sp.Pow) else factor
        key, _ = self._canonical(inner)
        if self._is_free(key):
            return 0.0
        scalars, factors = self._split_scalars(sp.Mul.make_args(inner.function))
        nests = {self._canonical(f)[0]: f for f in factors if _mergeable(f)}
        return self._cost(factors, [limit[0] for limit in inner.limits], inner) + sum(
            self._nested_cost(f) for f in nests.values())

    def _contract(self, tensors: list[Operand], output: tuple, comment: str,
                  name: str | None, formulas: list[sp.Expr]) -> Operand:
        """Pairwise einsums in opt_einsum's order; each partial result is commented with
        the formula it computes (`formulas` are the factors' own)."""
        if len(tensors) == 1:
            (single,) = tensors
            if set(single.indices) == set(output):  # nothing left to sum
                if single.indices == output and name is None:
                    return single
                return Operand(self._emit(self.align(single, output), comment, name,
                                          self.volume(output)), output)
            if all(i in single.indices for i in output) and \
                    [i for i in single.indices if i in output] == list(output):
                axes = [k for k, i in enumerate(single.indices) if i not in output]
                dims = str(axes[0]) if len(axes) == 1 else f"({', '.join(map(str, axes))})"
                code = f"{single.code}.sum(dim={dims})"
                return Operand(self._emit(code, comment, name, self.volume(single.indices)),
                               output)
        current = self._grid_products(list(zip(tensors, formulas, strict=True)), output)
        current = self._reuse_pairs(current, output)
        tensors = [op for op, _ in current]
        if len(tensors) == 1:
            return self._contract(tensors, output, comment, name, [current[0][1]])
        equation, shapes = self._equation(tensors, output)
        info = _path(equation, tuple(shapes))
        letter_of = {}
        for op, letters in zip(tensors, equation.split("->")[0].split(","), strict=True):
            letter_of.update(zip(op.indices, letters, strict=True))
        steps = info.contraction_list
        for k, (positions, _removed, einsum, _remaining, _blas) in enumerate(steps):
            picked_pairs = [current.pop(p) for p in positions]
            picked = [op for op, _ in picked_pairs]
            _, out_letters = einsum.split("->")
            # each operand's letters from its own axis order (an intermediate's axes follow
            # `_natural_order`, not the order opt_einsum assumed)
            inputs = ",".join("".join(letter_of[i] for i in op.indices) for op in picked)
            letter_to_index = {letter: index for index, letter in letter_of.items()}
            last = k == len(steps) - 1
            if not last:  # an intermediate's axis order is free: follow the inputs'
                out_letters = _natural_order(inputs, out_letters)
            out_indices = tuple(letter_to_index[c] for c in out_letters)
            if last:
                out_indices = output
                out_letters = "".join(next(c for c, i in letter_to_index.items() if i == o)
                                      for o in output)
            removed = {i for op in picked for i in op.indices} - set(out_indices) - {BATCH}
            formula = make_sum(sp.Mul(*[f for _, f in picked_pairs]),
                               [(i, i.lower, i.upper) for i in sorted(removed, key=str)])
            result = self._pairwise(picked, inputs, out_letters, out_indices,
                                    comment if last else dsl_str(formula),
                                    name if last else None)
            current.append((result, formula))
        return current[-1][0]

    def _grid_products(self, current: list[tuple[Operand, sp.Expr]], output: tuple
                       ) -> list[tuple[Operand, sp.Expr]]:
        """Contract a grid-masked matrix M[p, q] with the one operand x that shares q (or
        p) through its stencil: _grid_apply costs 9 D per row of x where a dense product
        costs D^2, and never forms the [D, D] matrix. Applied first, as opt_einsum
        knows only dense costs."""
        changed = True
        while changed and len(current) > 1:
            changed = False
            for a, (matrix, matrix_formula) in enumerate(current):
                name = self.grid_steps.get(matrix.code)
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
                    result = self._grid_apply_split(name, axis == 0, vector, vector_formula,
                                                    index, rest + (kept,), formula)
                    current = [c for k, c in enumerate(current) if k not in (a, sharing[0])]
                    current.append((result, formula))
                    changed = True
                    break
                if changed:
                    break
        return current

    def _grid_apply_split(self, name: str, transpose: bool, vector: Operand,
                          vector_formula: sp.Expr, index: sp.Basic, out: tuple,
                          formula: sp.Expr) -> Operand:
        """M (x - mu) as M x - M mu when the operand is a definition adding batched and
        parameter-only terms: the data needs no gradient, so the backward pass then
        differentiates the shifted products of the small parameter part only."""
        parts = self._batched_parts(vector_formula)
        if parts is None:
            return self._grid_apply(name, transpose, vector, index, out, dsl_str(formula))
        results = []
        for part in parts:
            operand = self.operand(part)
            if index not in operand.indices:  # constant along the summed index
                return self._grid_apply(name, transpose, vector, index, out, dsl_str(formula))
            rest = tuple(i for i in operand.indices if i != index) + out[-1:]
            part_formula = make_sum(formula.function.xreplace({vector_formula: part}),
                                    formula.limits)
            results.append(self._grid_apply(name, transpose, operand, index, rest,
                                            dsl_str(part_formula)))
        code = " + ".join(self.align(r, out, broadcast=True) for r in results)
        return Operand(self._emit(code, dsl_str(formula), cost=self.volume(out)), out)

    def _batched_parts(self, formula: sp.Expr) -> tuple[sp.Expr, sp.Expr] | None:
        """A definition's value at formula's indices split into its batched terms and the
        rest, when it has both (y[i] = x[i] - mu[i] -> x[i], -mu[i]); else None."""
        if not isinstance(formula, sp.Indexed):
            return None
        definition = self.definitions.get(str(formula.base.label))
        if definition is None or definition.base != formula.base \
                or not isinstance(definition.body, sp.Add):
            return None
        body = definition.body
        for formal, actual in zip(definition.indices, formula.indices, strict=True):
            body = substitute_index(body, formal, actual)
        batched = [t for t in sp.Add.make_args(body) if self._mentions_batched(t, self.batched)]
        fixed = [t for t in sp.Add.make_args(body) if t not in batched]
        if not batched or not fixed:
            return None
        return sp.Add(*batched), sp.Add(*fixed)

    def _grid_apply(self, name: str, transpose: bool, vector: Operand, index: sp.Basic,
                    out: tuple, comment: str) -> Operand:
        """One _grid_apply step (memoised by the operand and the axis it sums)."""
        transpose = transpose and not self.grids[name].symmetric
        key = ("grid", name, transpose, vector.code, vector.indices.index(index))
        if key not in self.pair_memo:
            rest = tuple(i for i in vector.indices if i != index)
            height, width, connectivity = self.grids[name].mask.arguments(self.grid_names)
            code = (f"_grid_apply({self._stencil(name, transpose)}, "
                    f"{self.align(vector, rest + (index,))}, {height}, {width}, {connectivity})")
            self.pair_memo[key] = (self._emit(code, comment, cost=9 * self.volume(out)), "")
        return Operand(self.pair_memo[key][0], out)

    def _reuse_pairs(self, current: list[tuple[Operand, sp.Expr]], output: tuple
                     ) -> list[tuple[Operand, sp.Expr]]:
        """Contract first any two operands whose product (summed over the indices no
        other operand needs) is already computed, and free (see `free_steps`):
        sum_{k,j} v_k W_kj s_j reuses the pre-activation a_j = sum_k v_k W_kj, which
        opt_einsum cannot know costs nothing."""
        letters = {}
        for op, _ in current:
            for index in op.indices:
                letters.setdefault(index, _LETTERS[len(letters)])
        found = True
        while found and len(current) > 2:
            found = False
            for a in range(len(current)):
                for b in range(a + 1, len(current)):
                    (x, fx), (y, fy) = current[a], current[b]
                    others = set(output).union(*(op.indices for k, (op, _) in
                                                 enumerate(current) if k not in (a, b)))
                    kept = [i for i in dict.fromkeys(x.indices + y.indices) if i in others]
                    if len(kept) == len(set(x.indices + y.indices)):
                        continue  # an outer product: reusing it saves little, costs layout
                    inputs = ",".join("".join(letters[i] for i in op.indices) for op in (x, y))
                    out_letters = _natural_order(inputs, "".join(letters[i] for i in kept))
                    known = self.pair_memo.get(_pair_key([x, y], inputs, out_letters)[0])
                    if known is None or (self.free_steps is not None and self.program.cost(
                            [known[0]], self.free_steps) > 0):
                        continue  # not computed, or not free where alternatives are weighed
                    removed = set(x.indices + y.indices) - set(kept) - {BATCH}
                    formula = make_sum(fx * fy, [(i, i.lower, i.upper)
                                                 for i in sorted(removed, key=str)])
                    by_letter = {letters[i]: i for i in letters}
                    result = self._pairwise([x, y], inputs, out_letters,
                                            tuple(by_letter[c] for c in out_letters),
                                            dsl_str(formula), None)
                    current = [c for k, c in enumerate(current) if k not in (a, b)]
                    current.append((result, formula))
                    found = True
                    break
                if found:
                    break
        return current

    def _pairwise(self, picked: list[Operand], inputs: str, out_letters: str,
                  out_indices: tuple, comment: str, name: str | None) -> Operand:
        key, canonical = _pair_key(picked, inputs, out_letters)
        letter_index = dict(zip(inputs.replace(",", ""),
                                (i for op in picked for i in op.indices), strict=True))
        if key in self.pair_memo and name is None:
            step, axes = self.pair_memo[key]  # the step's own axis order, canonically
            actual = {c: letter for letter, c in canonical.items()}
            return Operand(step, tuple(letter_index[actual[c]] for c in axes))
        equation = _pretty_equation(inputs, out_letters, picked, out_indices)
        args = ", ".join(op.code for op in picked)
        code = (_as_product(picked, inputs, out_letters)
                or _as_matmul(picked, inputs, out_letters, letter_index, self)
                or f'torch.einsum("{equation}", {args})')
        cost = self.volume({i for op in picked for i in op.indices})
        step = self._emit(code, comment, name, cost)
        self.pair_memo[key] = (step, "".join(canonical[c] for c in out_letters))
        return Operand(step, out_indices)


@functools.lru_cache(maxsize=4096)  # the cost estimates ask for the same paths often
def _path(equation: str, shapes: tuple[tuple, ...]) -> PathInfo:
    """opt_einsum's pairwise order ("auto"); for a few operands, the exhaustive search's
    instead when it needs clearly fewer operations ("auto" then uses branch and bound,
    which misses 'na,nb,ba->n' = (a W) . b). On equal counts "auto" is kept: its orders
    measured faster here (fewer large, non-GEMM intermediates)."""
    info = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="auto")[1]
    if len(shapes) <= 6:
        best = opt_einsum.contract_path(equation, *shapes, shapes=True, optimize="optimal")[1]
        if 5 * best.opt_cost < 4 * info.opt_cost:
            return best
    return info


def _pair_key(picked: list[Operand], inputs: str, out_letters: str
              ) -> tuple[tuple, dict[str, str]]:
    """A pairwise contraction up to the order of its operands, the names of its letters
    and its output's axis order (equal keys, equal values up to a transpose), and the
    renaming of letters to canonical ones."""
    terms = sorted(zip((op.code for op in picked), inputs.split(","), strict=True))
    canonical: dict[str, str] = {}
    for c in "".join(letters for _, letters in terms) + out_letters:
        canonical.setdefault(c, _LETTERS[len(canonical)])
    key = (tuple((code, "".join(canonical[c] for c in letters)) for code, letters in terms),
           "".join(sorted(canonical[c] for c in out_letters)))
    return key, canonical


def _natural_order(inputs: str, out_letters: str) -> str:
    """The output letters in the order they first appear in the inputs, the operand with
    the most axes first: the result then shares the layout of its largest input."""
    terms = sorted(inputs.split(","), key=len, reverse=True)
    seen = "".join(dict.fromkeys("".join(terms)))
    return "".join(c for c in seen if c in out_letters)


def _view(code: str, letters: str, target: str) -> str:
    """`code` (axes `letters`) permuted and unsqueezed to broadcast against `target`."""
    present = [c for c in target if c in letters]
    if present != list(letters):
        order = ", ".join(str(letters.index(c)) for c in present)
        code = f"{code}.permute({order})" if len(letters) > 2 else f"{code}.T"
    if len(present) == len(target):
        return code
    if all(c in letters for c in target[len(target) - len(present):]) and \
            target[len(target) - len(present):] == "".join(present):
        return code  # missing leading axes broadcast by themselves
    index = ", ".join(":" if c in letters else "None" for c in target)
    return f"{code}[{index}]"


def _as_product(picked: list[Operand], inputs: str, out_letters: str) -> str | None:
    """A pairwise step that sums nothing is an elementwise (broadcast) product."""
    terms = inputs.split(",")
    if set("".join(terms)) != set(out_letters) or len(terms) != 2:
        return None
    return " * ".join(_view(op.code, letters, out_letters)
                      for op, letters in zip(picked, terms, strict=True))


def _as_matmul(picked: list[Operand], inputs: str, out_letters: str, letter_index: dict,
               planner: Planner) -> str | None:
    """A contraction of two operands over shared letters S, with no shared letter kept,
    as one matrix product X[F_x, S] @ Y[S, F_y] (reshaped when S or F are blocks)."""
    terms = inputs.split(",")
    if len(terms) != 2:
        return None
    (x, xs), (y, ys) = zip(picked, terms, strict=True)
    summed = [c for c in xs if c in ys]
    if not summed or any(c in out_letters for c in summed):
        return None
    free_x, free_y = [c for c in xs if c not in summed], [c for c in ys if c not in summed]
    if out_letters == "".join(free_y + free_x):
        (x, xs, free_x), (y, ys, free_y) = (y, ys, free_y), (x, xs, free_x)
    if out_letters != "".join(free_x + free_y):
        return None
    block = "".join(c for c in xs if c in summed)
    if "".join(c for c in ys if c in summed) != block:
        return None

    def matrix(op: Operand, letters: str, free: list, first: bool) -> str | None:
        f, s_ = "".join(free), block
        if letters == (f + s_ if first else s_ + f):
            transpose = ""
        elif letters == (s_ + f if first else f + s_):
            transpose = ".T"
        else:
            return None
        if len(letters) == 2:
            return f"{op.code}{transpose}"
        if not free:
            return None
        rows, cols = (f, s_) if letters.startswith(f) else (s_, f)
        shape = ", ".join(_block_size(rows, letter_index, planner) +
                          _block_size(cols, letter_index, planner))
        return f"{op.code}.reshape({shape}){transpose}"

    left, right = matrix(x, xs, free_x, True), matrix(y, ys, free_y, False)
    if left is None or right is None or not free_x or not free_y:
        return None
    code = f"{left} @ {right}"
    if len(free_x) > 1 or len(free_y) > 1:
        dims = ", ".join(_block_size(c, letter_index, planner)[0] for c in out_letters)
        code = f"({code}).reshape({dims})"
    return code


def _block_size(letters: str, letter_index: dict, planner: Planner) -> list[str]:
    """One reshape dimension for a block of letters (their sizes multiplied); -1 for the
    block holding the batch, whose size the other dimensions determine."""
    if any(letter_index[c] == BATCH for c in letters):
        return ["-1"]
    parts = [planner.shape_code(letter_index[c]) for c in letters]
    return [" * ".join(parts)] if parts else []


def _pretty_equation(inputs: str, out_letters: str, picked: list[Operand],
                     out_indices: tuple) -> str:
    """Rename einsum letters after the spec's index names where possible (n = batch)."""
    mapping: dict[str, str] = {}
    used: set[str] = set()
    pairs = []
    for op, letters in zip(picked, inputs.split(","), strict=True):
        pairs += list(zip(letters, op.indices, strict=True))
    pairs += list(zip(out_letters, out_indices, strict=True))
    for letter, index in pairs:
        if letter in mapping:
            continue
        wish = "n" if index == BATCH else str(index)
        if len(wish) != 1 or wish in used or not wish.isalpha():
            wish = next(c for c in "abcdefghijklmopqrstuvwxyz" if c not in used
                        and c not in {str(i) for _, i in pairs})
        mapping[letter] = wish
        used.add(wish)
    return ",".join("".join(mapping[c] for c in t) for t in inputs.split(",")) + "->" + \
        "".join(mapping[c] for c in out_letters)


def _volume(shape: tuple) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


def _all_indices(expr: sp.Basic) -> set:
    found = set(_free_indices(expr))
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Sum):
            found.update(limit[0] for limit in node.limits)
    return found


def _mergeable(factor: sp.Expr) -> list[sp.Sum] | None:
    """A nested sum, or a squared one as two copies, that could join the outer product."""
    if isinstance(factor, sp.Sum):
        return [factor]
    if isinstance(factor, sp.Pow) and factor.exp == 2 and isinstance(factor.base, sp.Sum):
        return [factor.base, factor.base]
    return None


def uses_name(code: str, name: str) -> bool:
    """Whether code mentions the variable `name` (not as an attribute or a longer name)."""
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", code) is not None


def plan(derivation: Derivation, outputs: list[str],
         batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[Program, Planner]:
    """Plan the named definitions (e.g. 'free_energy', 'score') as one shared program."""
    planner = Planner(derivation, batch_size)
    for name in outputs:
        definition = derivation.definitions[name]
        target = ((BATCH,) if name in planner.batched else ()) + tuple(definition.indices)
        operand = planner.define(name)
        planner.program.outputs[name] = (operand, target)
    return planner.program, planner
