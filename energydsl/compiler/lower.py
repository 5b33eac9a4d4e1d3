"""Stage 3, lower: `CheckedModel` -> `SymbolicModel`, the spec as SymPy in index form.

Tensors become `IndexedBase`s, bound indices `Idx`s over symbolic dimension sizes and
sums `Sum`s, so nothing here (or downstream) grows with D or K. `let` definitions stay
named: an `Indexed` of a let's base stands for its definition.

SymPy folds numbers exactly as it builds each node, so this is where a spec's arithmetic
goes wrong: a division by zero (`zoo`), a complex value (`sqrt(-1)`, or `sqrt(-v[i]^2 - 1)`
for every v), a number no float64 holds (`1e300 * 1e300`, `1e-300 * 1e-300`) or an exact
power that would take forever (`2^2^2^2^2^2`). Each is a positioned error here rather than
nonsense (or a hang) in generated code.
"""

from __future__ import annotations

import math
import sys

import sympy as sp

from energydsl.compiler import syntax as ast
from energydsl.compiler.bounds import sign_assumptions
from energydsl.compiler.functions import FUNCTIONS, logaddexp, logsumexp, stable_form
from energydsl.compiler.ir import CheckedModel, Definition, SymbolicModel
from energydsl.compiler.lets import depends_on
from energydsl.compiler.notation import dsl_str
from energydsl.errors import Span, SpecError, error, shorten

_FLOAT_MAX = sys.float_info.max
_FLOAT_TINY = 5e-324  # the smallest positive float64 (subnormal); below it a number is 0
_MAX_BITS = 4000  # of an exact rational's numerator or denominator (Python prints ints
#                   of at most 4300 digits; no float64 needs more than 1075 bits)
_MAX_DECADES = 330  # |log10| of a power's value beyond which it is not a float64
MAX_EXPONENT = 1000  # of a power whose base is not a number: x^1000 overflows for |x| >= 2
UNDEFINED = (sp.zoo, sp.nan, sp.oo, sp.S.NegativeInfinity)  # what SymPy folds 1/0, log(0) to







class _Lowerer:
    def __init__(self, checked: CheckedModel):
        self.checked = checked
        self.dims = {name: sp.Symbol(name, integer=True, positive=True) for name in checked.dims}
        self.consts = {name: sp.Symbol(name, real=True) for name in checked.consts}
        self.tensors: dict[str, sp.Basic] = {}
        for variable in [checked.visible, *checked.hidden.values()]:
            self.tensors[variable.name] = self._base(variable.name, variable.shape)
        for param in checked.params.values():
            positive = param.constraint is not None and param.constraint.positive
            self.tensors[param.name] = self._base(
                param.name, param.shape, **({"positive": True} if positive else {}))
        for const in checked.vector_consts.values():  # read like a parameter, never learnt
            self.tensors[const.name] = self._base(const.name, const.shape)
        for let in checked.lets.values():
            self.tensors[let.name] = self._base(let.name, let.shape)

    def _base(self, name: str, shape: tuple[str, ...], **assumptions: bool) -> sp.Basic:
        assumptions = assumptions or {"real": True}
        if not shape:
            return sp.Symbol(name, **assumptions)
        return sp.IndexedBase(name, shape=tuple(self.dims[d] for d in shape), **assumptions)

    def _idx(self, ident: ast.Ident) -> sp.Idx:
        return sp.Idx(ident.name, self.dims[self.checked.index_ranges[ident]])

    def expr(self, node: ast.Expr, scope: dict[str, sp.Idx]) -> sp.Expr:
        """The SymPy form of `node`; every number SymPy folds on the way must be a real
        float64, so the generated code computes what the spec says."""
        result = self._expr(node, scope)
        if not isinstance(node, (ast.Number, ast.Name, ast.Indexed)):
            result = _round_long_numbers(result)
            _check_numbers(result, node.span, top_level_only=True)
            if isinstance(node, ast.Call) or (isinstance(node, ast.Binary) and node.op == "^"):
                _check_real(result, node.span)
        return result

    def _expr(self, node: ast.Expr, scope: dict[str, sp.Idx]) -> sp.Expr:
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
            mixture = self._log_of_exponentials(node, scope)
            if mixture is not None:
                return mixture
            return stable_form(FUNCTIONS[node.func.name].build(self.expr(node.args[0], scope)))
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
            _check_power(left, right, node)
            return left**right
        if isinstance(node, ast.SumExpr):
            inner, limits = self._bind(node, scope)
            if node.reduction == "logsumexp":
                return logsumexp(self.expr(node.body, inner), limits)
            return sp.Sum(self.expr(node.body, inner), *limits)
        raise TypeError(f"unexpected node {node!r}")  # pragma: no cover

    def _bind(self, node: ast.SumExpr, scope: dict[str, sp.Idx]) -> tuple[dict, list]:
        """The scope inside a reduction, and its limits."""
        inner = dict(scope)
        limits = []
        for binding in node.bindings:
            idx = self._idx(binding.index)
            inner[binding.index.name] = idx
            limits.append((idx, 0, idx.upper))
        return inner, limits

    def _log_of_exponentials(self, node: ast.Call, scope: dict[str, sp.Idx]
                             ) -> sp.Expr | None:
        """log(sum(k: exp(e[k]))) -> logsumexp(k: e[k]) and log(exp(a) + exp(b)) ->
        logaddexp(a, b), read off the spec's text: once SymPy has built exp(log(w) + x)
        it is w exp(x), and the exponent is lost unless w is known positive."""
        if node.func.name != "log":
            return None
        (arg,) = node.args

        def exponent(term: ast.Expr) -> ast.Expr | None:
            if isinstance(term, ast.Call) and term.func.name == "exp":
                return term.args[0]
            return None

        if isinstance(arg, ast.SumExpr) and arg.reduction == "sum":
            body = exponent(arg.body)
            if body is None:
                return None
            inner, limits = self._bind(arg, scope)
            return logsumexp(self.expr(body, inner), limits)
        terms: list[ast.Expr] = []
        pending = [arg]
        while pending:  # the terms of a chain of additions
            term = pending.pop()
            if isinstance(term, ast.Binary) and term.op == "+":
                pending += [term.right, term.left]
            else:
                terms.append(term)
        bodies = [exponent(t) for t in terms]
        if len(terms) < 2 or any(b is None for b in bodies):
            return None
        exponents = [self.expr(b, scope) for b in bodies if b is not None]
        result = exponents[0]
        for exponent in exponents[1:]:
            result = logaddexp(result, exponent)
        return result

    def _energy(self) -> sp.Expr:
        """E(v, h), or F(v); a log density log p~(v) gives F = -log p~."""
        value = self.expr(self.checked.energy.value, {})
        _check_numbers(value, self.checked.energy.value.span)
        return -value if self.checked.energy.role == "log_density" else value

    def _check_depends_on_visible(self, energy: sp.Expr,
                                  definitions: dict[str, Definition]) -> None:
        """The checker saw the visible variable in the energy's text; after SymPy's
        simplification (`0 * v[i]`, `v[i] - v[i]`) it must still be there, or there is
        nothing to differentiate and no per-sample free energy."""
        visible = self.tensors[self.checked.visible.name]
        by_base = {d.base: d for d in definitions.values()}
        if depends_on(energy, visible, by_base.get):
            return
        decl = self.checked.energy
        raise error(f"the energy does not depend on '{self.checked.visible.name}' once "
                    f"simplified: it is {shorten(dsl_str(energy))}", decl.value.span)

    def run(self) -> SymbolicModel:
        definitions = {}
        for let in self.checked.lets.values():
            indices = tuple(self._idx(i) for i in let.indices)
            scope = {i.name: idx for i, idx in zip(let.indices, indices, strict=True)}
            body = self.expr(let.value, scope)
            _check_numbers(body, let.value.span)
            # the let's symbol knows its sign: exp(a[k]) > 0 is seen through `let alpha`
            self.tensors[let.name] = self._base(let.name, let.shape, **sign_assumptions(body))
            definitions[let.name] = Definition(self.tensors[let.name], indices, body)
        energy = self._energy()
        self._check_depends_on_visible(energy, definitions)
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
            energy=energy,
            taken_names=taken,
            index_pools=self._pools(),
            symmetric=frozenset(self.tensors[p.name] for p in checked.params.values()
                                if p.constraint is not None and p.constraint.symmetric),
            vector_consts={name: self.tensors[name] for name in checked.vector_consts},
        )

    def _pools(self) -> dict[sp.Expr, list[str]]:
        pools: dict[sp.Expr, list[str]] = {}
        idents = sorted(self.checked.index_ranges, key=lambda i: (i.span.line, i.span.column))
        for ident in idents:
            names = pools.setdefault(self.dims[self.checked.index_ranges[ident]], [])
            if ident.name not in names:
                names.append(ident.name)
        return pools


def _magnitude(number: sp.Expr) -> float | None:
    """|number| as a float (inf when beyond float64), or None if it is not real."""
    if number.is_Rational:
        try:
            return abs(number.p) / number.q
        except OverflowError:
            return math.inf
    if number.has(*UNDEFINED):
        return math.inf
    try:
        value = complex(sp.N(number, 20))
    except (TypeError, ValueError, OverflowError):
        return math.inf
    if value.imag != 0:
        return None
    return abs(value.real)


def _long(number: sp.Expr) -> bool:
    return isinstance(number, sp.Rational) and \
        max(abs(number.p), number.q).bit_length() > _MAX_BITS


def _round_long_numbers(expr: sp.Expr) -> sp.Expr:
    """Exact fractions SymPy folded beyond _MAX_BITS (0.111...^13 with 99 digits) rounded
    to the float64 the generated code computes anyway, as their shortest decimal; those
    beyond float64's range are left for _check_number to refuse. Top level only, like
    _check_numbers: deeper numbers were rounded when their own node was built."""
    long = {factor for term in sp.Add.make_args(expr) for factor in sp.Mul.make_args(term)
            if _long(factor)}
    rounded = {}
    for number in long:
        try:
            value = number.p / number.q  # correctly rounded
        except OverflowError:
            continue
        if value != 0:
            rounded[number] = sp.Rational(repr(value))
    return expr.xreplace(rounded) if rounded else expr


def _not_real(span: Span, variables: bool) -> SpecError:
    of = "an expression that is never positive" if variables else "a negative number"
    return error(f"this expression is not a real number: it takes the square root, log or "
                 f"fractional power of {of}", span)


def _check_real(expr: sp.Expr, span: Span) -> None:
    """A function or power SymPy can tell is never real (sqrt(-v[i]^2 - 1), log(-exp(x)))
    would be NaN in every generated method: the energy must be real."""
    if expr.has(sp.I) or expr.is_extended_real is False:
        raise _not_real(span, not expr.is_number)


def _check_number(number: sp.Expr, span: Span) -> None:
    """A folded number must be a real, finite, non-vanishing float64."""
    if number.has(*UNDEFINED):
        raise error("this expression is infinite or undefined (a division by zero, or a "
                    "function outside its domain such as log(0))", span)
    magnitude = _magnitude(number)
    if magnitude is None:
        raise _not_real(span, variables=False)
    if magnitude > _FLOAT_MAX:
        raise error("a number in this expression is out of floating-point range (beyond "
                    "1e308)", span)
    if magnitude < _FLOAT_TINY and number.is_zero is False:  # underflows to 0
        raise error("a number in this expression is too small: it is 0 in floating point",
                    span)


def _check_numbers(expr: sp.Expr, span: Span, top_level_only: bool = False) -> None:
    """Check the numbers SymPy folded into `expr`: with `top_level_only`, those a node
    just created (the expression itself if it is a number, else each term's numeric
    coefficient; cheap, done at every node so nothing huge is built on), else all."""
    if top_level_only:
        if expr.is_number:
            _check_number(expr, span)
            return
        for term in sp.Add.make_args(expr):
            for factor in sp.Mul.make_args(term):
                if factor.is_Number or factor in UNDEFINED:
                    _check_number(factor, span)
        return
    for node in sp.preorder_traversal(expr):
        if node.is_Number or node in UNDEFINED:
            _check_number(node, span)


def _check_power(base: sp.Expr, exponent: sp.Expr, node: ast.Binary) -> None:
    """Refuse, before SymPy computes it exactly, a power whose value (or numeric
    coefficient: (c x)^n = c^n x^n) is no float64, and a huge exponent of a variable."""
    if not exponent.is_number:
        return
    power = _magnitude(exponent)
    if power is None:
        raise error("this exponent is not a real number", node.right.span)
    if not base.is_number and power > MAX_EXPONENT:
        raise error(f"exponent {shorten(dsl_str(exponent), 30)} is too large (at most "
                    f"{MAX_EXPONENT} in absolute value)", node.right.span)
    coefficient = base if base.is_number else base.as_coeff_Mul()[0]
    size = _magnitude(coefficient)
    if size is None or size in (0, 1):
        return
    decades = float(sp.N(exponent).as_real_imag()[0]) * math.log10(size)
    if decades > _MAX_DECADES:
        raise error("this power is out of floating-point range (beyond 1e308)", node.span)
    if decades < -_MAX_DECADES:
        raise error("a number in this expression is too small: it is 0 in floating point",
                    node.span)


def lower(checked: CheckedModel) -> SymbolicModel:
    """Translate the checked spec into SymPy index form (sizes stay symbolic)."""
    return _Lowerer(checked).run()
