"""Stage 2, check: `syntax.Spec` -> `model.CheckedModel`.

Resolves every name, checks arities and index ranges, infers the range of each bound
index from the tensors it subscripts, and rejects names that would clash in the
generated module. Errors are positioned; one diagnostic per faulty declaration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from energydsl.compiler import syntax as ast
from energydsl.compiler.constants import describe_number, evaluate, number_value
from energydsl.compiler.domains import HIDDEN_DOMAINS, VISIBLE_DOMAINS
from energydsl.compiler.functions import FUNCTIONS
from energydsl.compiler.ir import (
    CheckedModel,
    Const,
    Dim,
    Let,
    Param,
    Variable,
    VectorConst,
)
from energydsl.compiler.limits import (
    MAX_DEFINITION_DEPTH,
    MAX_INDICES,
    Cost,
    expanded_cost,
)
from energydsl.compiler.names import (
    check_identifier,
)
from energydsl.compiler.resolve_params import ParamResolver
from energydsl.errors import Diagnostic, Span, SpecError, error

MAX_DIMENSION = 2**31 - 1




class _Failed(Exception):
    """A use of a name whose declaration already failed: that error stands alone, so the
    declaration using it fails silently (and its own name is then failed too)."""


@dataclass
class _IndexBinding:
    """An index in scope: where it was bound and every place it subscripts a tensor."""

    ident: ast.Ident
    explicit_range: ast.Ident | None
    reduction: str = "sum"  # what binds it (the name its error messages use)
    uses: list[tuple[str, ast.Ident, str, int]] = field(default_factory=list)


class _Checker(ParamResolver):
    def __init__(self, spec: ast.Spec):
        self.spec = spec
        self.diagnostics: list[Diagnostic] = []
        self.dims: dict[str, Dim] = {}
        self.consts: dict[str, Const] = {}
        self.vector_consts: dict[str, VectorConst] = {}
        self.variables: dict[str, Variable] = {}
        self.params: dict[str, Param] = {}
        self.lets: dict[str, Let] = {}
        self.energies: list[ast.EnergyDecl] = []
        self.declared: dict[str, Span] = {}
        self.index_ranges: dict[ast.Ident, str] = {}
        self.costs: dict[str, Cost] = {}  # per `let`, its expanded cost
        self.default_accessors: dict[str, Span] = {}  # `<param>_value` methods
        self.failed: dict[str, object] = {}  # name -> its declaration, which failed

    # ------------------------------------------------------------------ driver
    def run(self) -> CheckedModel:
        check_identifier(self.spec.model, "the model")
        handlers: dict[type, Callable] = {
            ast.DimDecl: self._dim,
            ast.ConstDecl: self._const,
            ast.VarDecl: self._variable,
            ast.ParamDecl: self._param,
            ast.LetDecl: self._let,
            ast.EnergyDecl: self._energy,
        }
        for declaration in self.spec.declarations:
            try:
                handlers[type(declaration)](declaration)
            except (SpecError, _Failed) as exc:
                if isinstance(exc, SpecError):
                    self.diagnostics.extend(exc.diagnostics)
                if self._kind(declaration.name.name) == "name":  # not declared after all
                    self.failed[declaration.name.name] = declaration
        model = None
        try:
            model = self._assemble()
        except SpecError as exc:
            self.diagnostics.extend(exc.diagnostics)
        except _Failed:
            pass
        if self.diagnostics:
            raise SpecError(self.diagnostics)
        assert model is not None
        return model

    def _assemble(self) -> CheckedModel:
        visible = [v for v in self.variables.values() if v.role == "visible"]
        hidden = {v.name: v for v in self.variables.values() if v.role == "hidden"}
        end = self.spec.model.span
        if not visible:
            if any(getattr(d, "role", None) == "visible" for d in self.failed.values()):
                raise _Failed()
            raise error("the model declares no visible variable (e.g. 'visible v : real[D]')", end)
        if len(visible) > 1:
            raise error(f"only one visible variable is supported; '{visible[1].name}' is a "
                        "second one", visible[1].span)
        if not self.energies:
            raise error("the model has no energy: write 'energy E(v, h) = ...', "
                        "'free energy F(v) = ...' or 'log density p(v) = ...'", end)
        for variable in [visible[0], *hidden.values()]:
            if len(variable.shape) != 1:
                raise error(f"{variable.role} variable '{variable.name}' must be a vector, "
                            f"e.g. '{variable.role} {variable.name} : {variable.domain}[D]'",
                            variable.span)
        if len(self.energies) > 1:
            raise error("the model has more than one energy", self.energies[1].name.span)
        energy = self.energies[0]
        if not energy.joint and hidden:
            name = next(iter(hidden))
            given, instead = ("a free energy F(v)", "the joint energy E(v, h)") \
                if energy.role == "free_energy" else ("a log density p(v)",
                                                      "the joint log density p(v, h)")
            raise error(f"{given} cannot have hidden variables; '{name}' is hidden: "
                        f"write {instead} instead", hidden[name].span)
        self._check_generated_names()
        return CheckedModel(
            name=self.spec.model.name,
            dims=self.dims,
            consts=self.consts,
            visible=visible[0],
            hidden=hidden,
            params=self.params,
            lets=self.lets,
            energy=energy,
            index_ranges=self.index_ranges,
            vector_consts=self.vector_consts,
        )

    def _check_generated_names(self) -> None:
        """Methods named after spec names (`mean_h`, `sample_h`, `W_value`) must not clash
        with a declared name: the parameter or constant would hide the method."""
        generated: dict[str, str] = {}
        for variable in self.variables.values():
            for prefix in ("mean", "sample"):
                generated[f"{prefix}_{variable.name}"] = f"{prefix}_{variable.name}(...)"
        for accessor, span in self.default_accessors.items():
            if accessor in self.declared or accessor in generated:
                param = accessor.removesuffix("_value")
                raise error(f"the value of constrained parameter '{param}' is exposed as "
                            f"method '{accessor}', which clashes with another name; choose "
                            "the method's name with 'accessor(...)'", span)
        for name, span in self.declared.items():
            if name in generated:
                raise error(f"'{name}' is the name of the generated method {generated[name]} "
                            "and cannot name anything else", span)

    # ------------------------------------------------------------------ names
    def _declare(self, ident: ast.Ident, what: str) -> None:
        check_identifier(ident, what)
        if ident.name in self.declared:
            first = self.declared[ident.name]
            raise error(f"'{ident.name}' is already declared (line {first.line})", ident.span)
        if ident.name == self.spec.model.name:
            raise error(f"'{ident.name}' is the model's name", ident.span)
        self.declared[ident.name] = ident.span

    # ------------------------------------------------------------------ declarations
    def _dim(self, decl: ast.DimDecl) -> None:
        self._declare(decl.name, "a dimension")
        derived = None if isinstance(decl.value, ast.Number) else decl.value
        if derived is not None:
            self._integer_formula(derived)
        value = self._evaluate(decl.value, allow_consts=False)
        if not (float(value).is_integer() and value >= 1):
            raise error(f"dimension '{decl.name.name}' must be a positive integer, "
                        f"got {describe_number(value)}", _expr_span(decl.value))
        if value > MAX_DIMENSION:
            raise error(f"dimension '{decl.name.name}' is too large: {describe_number(value)} "
                        f"(at most {MAX_DIMENSION})", _expr_span(decl.value))
        self.dims[decl.name.name] = Dim(decl.name.name, int(value), derived, decl.name.span)

    def _integer_formula(self, expr: ast.Expr) -> None:
        """A derived dimension is computed again in the generated constructor with
        integer arithmetic (`/` becomes `//`): it may only use whole numbers, dimensions,
        + - *, exact division and whole non-negative powers, so both agree."""
        if isinstance(expr, ast.Number):
            if not expr.text.isdigit():
                raise error(f"a derived dimension is computed with whole numbers; write "
                            f"{expr.text} as a whole number", expr.span)
        elif isinstance(expr, ast.Unary):
            self._integer_formula(expr.operand)
        elif isinstance(expr, ast.Binary):
            self._integer_formula(expr.left)
            self._integer_formula(expr.right)
            if expr.op in "/^":
                left = self._evaluate(expr.left, allow_consts=False)
                right = self._evaluate(expr.right, allow_consts=False)
                if expr.op == "/" and right != 0 and left % right != 0:
                    raise error(f"a derived dimension must divide exactly, but "
                                f"{describe_number(left)} / {describe_number(right)} "
                                "does not", expr.span)
                if expr.op == "^" and right < 0:
                    raise error("a derived dimension cannot use a negative power",
                                expr.right.span)
        elif not isinstance(expr, ast.Name):
            raise error("a dimension is a formula of numbers and dimensions only",
                        _expr_span(expr))

    def _const(self, decl: ast.ConstDecl) -> None:
        self._declare(decl.name, "a constant")
        name = decl.name.name
        if decl.shape:
            self.vector_consts[name] = self._vector_const(decl)
            return
        if isinstance(decl.value, ast.ListLiteral):
            raise error(f"a list of values makes a vector constant, which needs its shape: "
                        f"'const {name}[D] = [...]'", decl.value.span)
        value = self._evaluate(decl.value, allow_consts=True)
        self.consts[name] = Const(name, value, decl.name.span)

    def _vector_const(self, decl: ast.ConstDecl) -> VectorConst:
        """`const s[D] = [...]`, as many entries as D's default, or `const T[D, K] = c`,
        one value filling it: each a constant formula, like a scalar constant's."""
        name, shape = decl.name.name, self._shape(decl.shape)
        if not isinstance(decl.value, ast.ListLiteral):
            fill = float(self._evaluate(decl.value, allow_consts=True))
            return VectorConst(name, shape, fill, decl.name.span)
        if len(shape) != 1:
            raise error(f"a list of values gives a constant with one axis, but '{name}' has "
                        f"shape [{', '.join(shape)}]; fill it with one value instead: "
                        f"'const {name}[{', '.join(shape)}] = 0.0'", decl.value.span)
        entries = tuple(float(self._evaluate(item, allow_consts=True))
                        for item in decl.value.items)
        size = self.dims[shape[0]].default
        if len(entries) != size:
            raise error(f"'{name}' lists {len(entries)} value{'s' if len(entries) != 1 else ''}"
                        f" but its dimension {shape[0]} is {size}", decl.value.span)
        return VectorConst(name, shape, entries, decl.name.span)

    def _shape(self, shape: tuple[ast.Ident, ...]) -> tuple[str, ...]:
        for dim in shape:
            self._not_failed(dim.name)
            if dim.name not in self.dims:
                hint = " (declare it with 'dim')" if dim.name not in self.declared else ""
                raise error(f"'{dim.name}' is not a dimension{hint}", dim.span)
        return tuple(dim.name for dim in shape)

    def _variable(self, decl: ast.VarDecl) -> None:
        self._declare(decl.name, f"a {decl.role} variable")
        domain = decl.domain.name
        allowed = VISIBLE_DOMAINS if decl.role == "visible" else HIDDEN_DOMAINS
        if domain not in allowed:
            raise error(f"unknown domain '{domain}' for a {decl.role} variable; expected "
                        + " or ".join(f"'{d}'" for d in allowed), decl.domain.span)
        shape = self._shape(decl.shape)
        self.variables[decl.name.name] = Variable(decl.name.name, decl.role, domain, shape,
                                                  decl.name.span)

    def _let(self, decl: ast.LetDecl) -> None:
        self._declare(decl.name, "a definition")
        scope: dict[str, _IndexBinding] = {}
        for index in decl.indices:
            if index.name in scope:
                raise error(f"index '{index.name}' appears twice in '{decl.name.name}'",
                            index.span)
            scope[index.name] = _IndexBinding(index, None)
        if len(scope) > MAX_INDICES:
            raise error(f"'{decl.name.name}' has more than {MAX_INDICES} indices",
                        decl.indices[MAX_INDICES].span)
        self._expression(decl.value, scope, where=f"'{decl.name.name}'")
        cost = expanded_cost(decl.value, self.costs, self.variables)
        if cost.depth + 1 > MAX_DEFINITION_DEPTH:
            raise error(f"'{decl.name.name}' is defined through a chain of more than "
                        f"{MAX_DEFINITION_DEPTH} definitions; the compiler differentiates "
                        "through every one of them", decl.name.span)
        shape = []
        for index in decl.indices:
            binding = scope[index.name]
            if not binding.uses:
                raise error(f"index '{index.name}' of '{decl.name.name}' does not appear in "
                            "its definition", index.span)
            shape.append(self._resolve_range(binding))
        self.lets[decl.name.name] = Let(decl.name.name, decl.indices, tuple(shape), decl.value,
                                        decl.name.span)
        self.costs[decl.name.name] = Cost(cost.calls, cost.size, cost.depth + 1,
                                           cost.variables)

    def _energy(self, decl: ast.EnergyDecl) -> None:
        self.energies.append(decl)
        self._declare(decl.name, "the energy")
        seen: set[str] = set()
        for position, arg in enumerate(decl.args):
            variable = self.variables.get(arg.name)
            if variable is None:
                self._not_failed(arg.name)
                raise error(f"'{arg.name}' is not a declared variable", arg.span)
            if arg.name in seen:
                raise error(f"'{arg.name}' appears twice among the energy's arguments", arg.span)
            seen.add(arg.name)
            if position == 0 and variable.role != "visible":
                raise error(f"the first argument of the energy must be the visible variable, "
                            f"not the hidden '{arg.name}'", arg.span)
            if position > 0 and variable.role != "hidden":
                raise error(f"'{arg.name}' is visible; only the first argument may be",
                            arg.span)
        missing = [v.name for v in self.variables.values()
                   if v.role == "hidden" and v.name not in seen]
        if missing and decl.joint:
            what = "energy" if decl.role == "energy" else "log density"
            raise error(f"the {what} must list every hidden variable; '{missing[0]}' is "
                        "missing", decl.name.span)
        self._expression(decl.value, {}, where="the energy")
        cost = expanded_cost(decl.value, self.costs, self.variables)
        if decl.args[0].name not in cost.variables:
            raise error(f"the energy does not depend on '{decl.args[0].name}'",
                        _expr_span(decl.value))

    # ------------------------------------------------------------------ expressions
    def _expression(self, expr: ast.Expr, scope: dict[str, _IndexBinding], where: str) -> None:
        """Check names and arities; record every index use for range inference."""
        if isinstance(expr, ast.Number):
            number_value(expr)
        elif isinstance(expr, ast.Name):
            self._scalar_name(expr, where)
        elif isinstance(expr, ast.Indexed):
            self._indexed(expr, scope, where)
        elif isinstance(expr, ast.Call):
            name = expr.func.name
            if name not in FUNCTIONS:
                raise error(f"unknown function '{name}'; the language has "
                            + ", ".join(FUNCTIONS), expr.func.span)
            if len(expr.args) != 1:
                raise error(f"'{name}' takes 1 argument, got {len(expr.args)}", expr.span)
            self._expression(expr.args[0], scope, where)
        elif isinstance(expr, ast.Unary):
            self._expression(expr.operand, scope, where)
        elif isinstance(expr, ast.Binary):
            self._expression(expr.left, scope, where)
            self._expression(expr.right, scope, where)
        elif isinstance(expr, ast.SumExpr):
            self._sum(expr, scope, where)
        else:  # pragma: no cover - the parser builds nothing else
            raise TypeError(f"unexpected node {expr!r}")

    def _scalar_name(self, expr: ast.Name, where: str) -> None:
        name = expr.name
        if name in self.dims or name in self.consts:
            return
        shape = self._tensor_shape(name, expr.span, where)
        if shape:
            raise error(f"'{name}' has {len(shape)} "
                        f"ind{'ices' if len(shape) != 1 else 'ex'} but is used as {name}",
                        expr.span)

    def _tensor_shape(self, name: str, span: Span, where: str) -> tuple[str, ...]:
        if name in self.variables:
            variable = self.variables[name]
            if variable.role == "hidden" and where != "the energy":
                raise error(f"hidden variable '{name}' can only appear in the energy", span)
            return variable.shape
        if name in self.params:
            return self.params[name].shape
        if name in self.vector_consts:
            return self.vector_consts[name].shape
        if name in self.lets:
            return self.lets[name].shape
        if name in self.dims or name in self.consts:
            raise error(f"'{name}' is a scalar and cannot be indexed", span)
        self._not_failed(name)
        raise error(f"unknown name '{name}'", span)

    def _indexed(self, expr: ast.Indexed, scope: dict[str, _IndexBinding], where: str) -> None:
        name = expr.base.name
        shape = self._tensor_shape(name, expr.base.span, where)
        if len(shape) != len(expr.indices):
            used = f"{name}[{', '.join(i.name for i in expr.indices)}]"
            if not shape:
                raise error(f"'{name}' is a scalar but is used as {used}", expr.span)
            raise error(f"'{name}' has {len(shape)} ind{'ices' if len(shape) != 1 else 'ex'} "
                        f"but is used as {used}", expr.span)
        for axis, index in enumerate(expr.indices):
            if [i.name for i in expr.indices].count(index.name) > 1:
                raise error(f"index '{index.name}' appears twice in {name}[...]; a diagonal "
                            "is not supported", index.span)
            binding = scope.get(index.name)
            if binding is None:
                raise error(f"index '{index.name}' is not bound by a sum"
                            + (f" nor an index of {where}" if where.startswith("'") else ""),
                            index.span)
            self._use(binding, shape[axis], index, name, axis)

    def _use(self, binding: _IndexBinding, dim: str, index: ast.Ident, tensor: str,
             axis: int) -> None:
        """Record a use; report at once if it contradicts the range known so far."""
        known = binding.explicit_range.name if binding.explicit_range else None
        origin = "as declared"
        if known is None and binding.uses:
            known, first, first_tensor, first_axis = binding.uses[0]
            origin = f"axis {first_axis + 1} of '{first_tensor}' at {first.span.line}:" \
                     f"{first.span.column}"
        if known is not None and known != dim:
            raise error(f"dimension mismatch: index '{index.name}' ranges over {known} ({origin}) "
                        f"but indexes axis {axis + 1} of '{tensor}', of size {dim}", index.span)
        binding.uses.append((dim, index, tensor, axis))

    def _resolve_range(self, binding: _IndexBinding) -> str:
        if binding.explicit_range is not None:
            dim = binding.explicit_range.name
        elif binding.uses:
            dim = binding.uses[0][0]
        else:
            name, reduction = binding.ident.name, binding.reduction
            raise error(f"cannot infer the range of index '{name}': nothing in the "
                        f"{reduction} is indexed by it; write {reduction}({name} in D: ...)",
                        binding.ident.span)
        self.index_ranges[binding.ident] = dim
        return dim

    def _sum(self, expr: ast.SumExpr, scope: dict[str, _IndexBinding], where: str) -> None:
        inner = dict(scope)
        new: list[_IndexBinding] = []
        for binding in expr.bindings:
            name = binding.index.name
            if name in inner:
                taken = "an enclosing sum" if name in scope else "this sum"
                raise error(f"index '{name}' is already bound by {taken}", binding.index.span)
            if binding.range is not None and binding.range.name not in self.dims:
                self._not_failed(binding.range.name)
                raise error(f"'{binding.range.name}' is not a dimension", binding.range.span)
            if name in self.declared:
                raise error(f"index '{name}' has the name of a declared "
                            f"{self._kind(name)}", binding.index.span)
            record = _IndexBinding(binding.index, binding.range, expr.reduction)
            inner[name] = record
            new.append(record)
            if len(inner) > MAX_INDICES:
                raise error(f"more than {MAX_INDICES} indices are in scope here; split the "
                            "expression with 'let'", binding.index.span)
        self._expression(expr.body, inner, where)
        for record in new:
            self._resolve_range(record)

    def _not_failed(self, name: str) -> None:
        """Stop silently at a name whose declaration was already reported."""
        if name in self.failed:
            raise _Failed()

    def _kind(self, name: str) -> str:
        for kind, table in (("dimension", self.dims), ("constant", self.consts),
                            ("constant", self.vector_consts), ("variable", self.variables),
                            ("parameter", self.params), ("definition", self.lets)):
            if name in table:
                return kind
        return "name"

    # ------------------------------------------------------------------ constant folding
    def _evaluate(self, expr: ast.Expr, allow_consts: bool) -> int | float:
        """Value of a dimension or constant formula (numbers, dims, earlier constants)."""
        return evaluate(expr, {n: d.default for n, d in self.dims.items()},
                        {n: c.default for n, c in self.consts.items()} if allow_consts else None,
                        self._not_failed,
                        {n: c.shape for n, c in self.vector_consts.items()})


def _expr_span(expr: ast.Expr) -> Span:
    return expr.span


def check(spec: ast.Spec) -> CheckedModel:
    """Resolve and check a parsed spec; raise SpecError listing every faulty declaration."""
    return _Checker(spec).run()
