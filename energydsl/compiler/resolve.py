"""Stage 2, check: `syntax.Spec` -> `model.CheckedModel`.

Resolves every name, checks arities and index ranges, infers the range of each bound
index from the tensors it subscripts, and rejects names that would clash in the
generated module. Errors are positioned; one diagnostic per faulty declaration.
"""

from __future__ import annotations

import builtins
import keyword
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from energydsl.compiler import syntax as ast
from energydsl.compiler.domains import HIDDEN_DOMAINS, VISIBLE_DOMAINS
from energydsl.compiler.functions import FUNCTIONS
from energydsl.compiler.ir import (
    CheckedModel,
    Const,
    Constraint,
    Dim,
    GridMask,
    Initialiser,
    Let,
    Param,
    Variable,
)
from energydsl.errors import Diagnostic, Span, SpecError, error
from energydsl.estimators import all_estimators

KEYWORDS = ("model", "dim", "const", "visible", "hidden", "param", "let", "energy", "free",
            "density", "sum", "in", "where")

# Names the generated module defines or inherits from torch.nn.Module: a spec name equal
# to one of them would shadow a method. (Names starting with '_' are rejected wholesale.)
RESERVED_ATTRIBUTES = frozenset("""
    self torch math super cls dtype device
    free_energy score laplacian sm_loss sm_terms reconstruct energy log_prob log_partition
    sample precision log_z spec_hash formulas
    visible_size
    T_destination add_module apply bfloat16 buffers call_super_init children compile cpu
    cuda double dump_patches eval extra_repr float forward get_buffer get_extra_state
    get_parameter get_submodule half ipu load_state_dict modules mtia named_buffers
    named_children named_modules named_parameters parameters register_backward_hook
    register_buffer register_forward_hook register_forward_pre_hook
    register_full_backward_hook register_full_backward_pre_hook
    register_load_state_dict_post_hook register_load_state_dict_pre_hook register_module
    register_parameter register_state_dict_post_hook register_state_dict_pre_hook
    requires_grad_ set_extra_state set_submodule share_memory state_dict to to_empty train
    training type xpu zero_grad sm_objective validate
""".split())
# ... and the method every registered estimator adds (dsm_loss, ...)
RESERVED_ATTRIBUTES |= {e.method for e in all_estimators() if e.method is not None}

# Argument and local names of the generated methods that take the visible or hidden
# variables as arguments: a variable of the same name would be shadowed inside them.
METHOD_LOCALS = frozenset("""
    noise noise_std noise_samples generator projections n_projections distribution nu n k
    mean factor offset shape max_states chunk bits flags codes log_det states units device
    weights probabilities u point along hvp perturbed residual count data_logit data_term
    log_nu noise_logit noise_term contrast data_energy logit log_noise_x log_noise_y
    curvature
""".split())

# Locals of the generated methods that also compute `let` definitions (and constrained
# parameters' values) inline: a definition of the same name would overwrite them.
DEFINITION_LOCALS = frozenset("""
    generator mean noise factor offset bits flags codes
""".split())

# Module-level names of the generated module and Python's built-in names: a spec name
# equal to one would shadow it (as the class, a constructor argument or a method local).
MODULE_NAMES = frozenset({"torch", "math"})
PYTHON_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))

# What a name may look like, whatever the grammar accepts: it is pasted into Python code.
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*", re.ASCII)

# Limits that keep compilation bounded. Derivatives through deep compositions of
# nonlinear functions, long chains of definitions or many nested indices grow quickly
# (the Laplacian differentiates twice through everything); these are far beyond the
# models the language is for, and a clear error beats a compile that never ends.
MAX_FUNCTION_NESTING = 4  # nested function calls and powers with a variable exponent
#                            (x^y = exp(y log x)), counted through `let`s
MAX_DEFINITION_DEPTH = 32  # `let`s defined in terms of `let`s
MAX_EXPANDED_SIZE = 5000  # nodes of an expression with every `let` substituted
MAX_INDICES = 10  # indices in scope at once (sum bindings and a `let`'s own)
MAX_DIMENSION = 2**31 - 1
_MAX_LITERAL = 100  # characters of a number literal

# Generated methods a constrained parameter may be exposed as (no generated method
# of the same name exists for a model with such a parameter).
ACCESSOR_NAMES = {"precision"}

INITIALISERS = {"normal": 1, "zeros": 0, "ones": 0, "constant": 1, "uniform": 2}
ATTRIBUTES = {"symmetric": 0, "mask": 1, "diagonally_dominant": 0, "accessor": 1}
DEFAULT_INIT = Initialiser("normal", (0.01,))


def _describe_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class _Failed(Exception):
    """A use of a name whose declaration already failed: that error stands alone, so the
    declaration using it fails silently (and its own name is then failed too)."""


@dataclass
class _IndexBinding:
    """An index in scope: where it was bound and every place it subscripts a tensor."""

    ident: ast.Ident
    explicit_range: ast.Ident | None
    uses: list[tuple[str, ast.Ident, str, int]] = field(default_factory=list)


@dataclass(frozen=True)
class _Cost:
    """An expression with its `let`s substituted: the deepest nesting of function calls,
    the number of nodes, the longest chain of definitions and the variables it reads."""

    calls: int
    size: int
    depth: int
    variables: frozenset[str]


class _Checker:
    def __init__(self, spec: ast.Spec):
        self.spec = spec
        self.diagnostics: list[Diagnostic] = []
        self.dims: dict[str, Dim] = {}
        self.consts: dict[str, Const] = {}
        self.variables: dict[str, Variable] = {}
        self.params: dict[str, Param] = {}
        self.lets: dict[str, Let] = {}
        self.energies: list[ast.EnergyDecl] = []
        self.declared: dict[str, Span] = {}
        self.index_ranges: dict[ast.Ident, str] = {}
        self.costs: dict[str, _Cost] = {}  # per `let`, its expanded cost
        self.default_accessors: dict[str, Span] = {}  # `<param>_value` methods
        self.failed: dict[str, object] = {}  # name -> its declaration, which failed

    # ------------------------------------------------------------------ driver
    def run(self) -> CheckedModel:
        self._check_identifier(self.spec.model, "the model")
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
        if energy.role != "energy" and hidden:
            name = next(iter(hidden))
            given = "a free energy F(v)" if energy.role == "free_energy" else "a log density"
            raise error(f"{given} cannot have hidden variables; '{name}' is hidden: "
                        "write the joint energy E(v, h) instead", hidden[name].span)
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
    def _check_identifier(self, ident: ast.Ident, what: str,
                          allow_method_names: bool = False) -> None:
        """Every name is pasted into Python code as an identifier, an attribute, a
        constructor argument or a method local: only names that cannot break, shadow or
        inject anything get through."""
        name = ident.name
        if name.startswith("_"):
            raise error(f"'{name}' starts with '_', which is reserved for generated code; "
                        f"choose another name for {what}", ident.span)
        if not IDENTIFIER.fullmatch(name):
            raise error(f"{name!r} is not a valid name for {what}: names are ASCII letters, "
                        "digits and '_', starting with a letter", ident.span)
        if name in KEYWORDS:
            raise error(f"'{name}' is a keyword of the language and cannot name {what}",
                        ident.span)
        if keyword.iskeyword(name) or keyword.issoftkeyword(name):
            raise error(f"'{name}' is a Python keyword and cannot name {what}", ident.span)
        if name in FUNCTIONS:
            raise error(f"'{name}' is a built-in function and cannot name {what}", ident.span)
        if name in MODULE_NAMES:
            raise error(f"'{name}' is a module the generated code imports and cannot name "
                        f"{what}", ident.span)
        if name in PYTHON_BUILTINS:
            raise error(f"'{name}' is a Python built-in name and cannot name {what}: the "
                        "generated module would shadow it", ident.span)
        reserved = RESERVED_ATTRIBUTES - (ACCESSOR_NAMES if allow_method_names else set())
        if name in reserved and what != "the model":
            raise error(f"'{name}' is used by the generated module and cannot name {what}",
                        ident.span)
        if name in METHOD_LOCALS and what.endswith(" variable"):
            raise error(f"'{name}' is an argument or local name of the generated methods "
                        f"and cannot name {what}", ident.span)
        if name in DEFINITION_LOCALS and what in ("a definition", "a constrained parameter"):
            raise error(f"'{name}' is a local name of the generated methods and cannot name "
                        f"{what}", ident.span)

    def _declare(self, ident: ast.Ident, what: str) -> None:
        self._check_identifier(ident, what)
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
                        f"got {_describe_number(value)}", _expr_span(decl.value))
        if value > MAX_DIMENSION:
            raise error(f"dimension '{decl.name.name}' is too large: {_describe_number(value)} "
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
                                f"{_describe_number(left)} / {_describe_number(right)} "
                                "does not", expr.span)
                if expr.op == "^" and right < 0:
                    raise error("a derived dimension cannot use a negative power",
                                expr.right.span)
        elif not isinstance(expr, ast.Name):
            raise error("a dimension is a formula of numbers and dimensions only",
                        _expr_span(expr))

    def _const(self, decl: ast.ConstDecl) -> None:
        self._declare(decl.name, "a constant")
        value = self._evaluate(decl.value, allow_consts=True)
        self.consts[decl.name.name] = Const(decl.name.name, value, decl.name.span)

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
        self.params[decl.name.name] = Param(decl.name.name, shape, init, decl.name.span,
                                            constraint)

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
        if len(shape) != 2 or shape[0] != shape[1]:
            first = decl.attributes[0]
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
                raise error("accessor(...) takes a method name", _expr_span(arg))
            ident = ast.Ident(arg.name, arg.span)
            self._check_identifier(ident, "an accessor method", allow_method_names=True)
            if arg.name in self.declared:
                raise error(f"'{arg.name}' is already declared (line "
                            f"{self.declared[arg.name].line})", arg.span)
            accessor = arg.name
            self.declared[arg.name] = arg.span
        return Constraint("symmetric" in seen, mask, "diagonally_dominant" in seen, accessor)

    def _grid_mask(self, attribute: ast.Attribute, dim: str) -> GridMask:
        call = attribute.args[0]
        if not (isinstance(call, ast.Call) and call.func.name == "grid" and len(call.args) == 3):
            raise error("mask(...) takes grid(height, width, connectivity)", _expr_span(call))
        values, texts = [], []
        for arg in call.args:
            if not isinstance(arg, (ast.Name, ast.Number)):
                raise error("grid(...) arguments are dimensions, constants or numbers",
                            _expr_span(arg))
            value = self._evaluate(arg, allow_consts=True)
            if not float(value).is_integer() or value < 1:
                raise error(f"grid(...) arguments must be positive whole numbers, got "
                            f"{_describe_number(value)}", _expr_span(arg))
            values.append(value)
            # a number goes into the generated code: as Python's own spelling of it
            texts.append(arg.name if isinstance(arg, ast.Name) else str(int(value)))
        height, width, connectivity = values
        if connectivity not in (4, 8):
            raise error(f"grid connectivity must be 4 or 8, got "
                        f"{_describe_number(connectivity)}", _expr_span(call.args[2]))
        if height * width != self.dims[dim].default:
            raise error(f"grid({texts[0]}, {texts[1]}, ...) has {_describe_number(height)} x "
                        f"{_describe_number(width)} pixels but '{dim}' is "
                        f"{self.dims[dim].default}", _expr_span(call))
        return GridMask(*texts)

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
        cost = self._cost(decl.value)
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
        self.costs[decl.name.name] = _Cost(cost.calls, cost.size, cost.depth + 1,
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
        if missing and decl.role == "energy":
            raise error(f"the energy must list every hidden variable; '{missing[0]}' is missing",
                        decl.name.span)
        self._expression(decl.value, {}, where="the energy")
        if decl.args[0].name not in self._cost(decl.value).variables:
            raise error(f"the energy does not depend on '{decl.args[0].name}'",
                        _expr_span(decl.value))

    # ------------------------------------------------------------------ expressions
    def _expression(self, expr: ast.Expr, scope: dict[str, _IndexBinding], where: str) -> None:
        """Check names and arities; record every index use for range inference."""
        if isinstance(expr, ast.Number):
            _number_value(expr)
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
            raise error(f"cannot infer the range of index '{binding.ident.name}': nothing in "
                        f"the sum is indexed by it; write sum({binding.ident.name} in D: ...)",
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
            record = _IndexBinding(binding.index, binding.range)
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
                            ("variable", self.variables), ("parameter", self.params),
                            ("definition", self.lets)):
            if name in table:
                return kind
        return "name"

    def _cost(self, expr: ast.Expr) -> _Cost:
        """What differentiating `expr` costs, with every `let` it uses substituted (from the
        costs recorded per `let`, so a shared definition is measured once): fail where
        it exceeds a limit."""
        if isinstance(expr, ast.Number):
            return _Cost(0, 1, 0, frozenset())
        if isinstance(expr, (ast.Name, ast.Indexed)):
            name = expr.name if isinstance(expr, ast.Name) else expr.base.name
            if name in self.costs:
                return self.costs[name]
            return _Cost(0, 1, 0, frozenset({name} & set(self.variables)))
        if isinstance(expr, ast.Call):
            inner = self._cost(expr.args[0])
            cost = _Cost(inner.calls + 1, inner.size + 1, inner.depth, inner.variables)
        elif isinstance(expr, ast.Unary):
            inner = self._cost(expr.operand)
            cost = _Cost(inner.calls, inner.size + 1, inner.depth, inner.variables)
        elif isinstance(expr, ast.Binary):
            left, right = self._cost(expr.left), self._cost(expr.right)
            # x^y with y a function of the variables is exp(y log x): a nested function
            calls = max(left.calls, right.calls) + (expr.op == "^" and bool(right.variables))
            cost = _Cost(calls, left.size + right.size + 1,
                         max(left.depth, right.depth), left.variables | right.variables)
        elif isinstance(expr, ast.SumExpr):
            inner = self._cost(expr.body)
            cost = _Cost(inner.calls, inner.size + 1, inner.depth, inner.variables)
        else:  # pragma: no cover - the parser builds nothing else
            raise TypeError(f"unexpected node {expr!r}")
        if cost.calls > MAX_FUNCTION_NESTING:
            raise error(f"functions nested more than {MAX_FUNCTION_NESTING} deep (counting "
                        "powers with a variable exponent, and through 'let' definitions): the "
                        "derivatives of so deep a composition grow too large",
                        expr.func.span if isinstance(expr, ast.Call) else expr.span)
        if cost.size > MAX_EXPANDED_SIZE:
            raise error(f"this expression is too large with its definitions substituted "
                        f"(more than {MAX_EXPANDED_SIZE} terms and factors): the compiler "
                        "differentiates through every 'let'", _expr_span(expr))
        return cost

    # ------------------------------------------------------------------ constant folding
    def _evaluate(self, expr: ast.Expr, allow_consts: bool) -> int | float:
        """Value of a dimension or constant formula (numbers, dims, earlier constants)."""
        if isinstance(expr, ast.Number):
            return _number_value(expr)
        if isinstance(expr, ast.Name):
            if expr.name in self.dims:
                return self.dims[expr.name].default
            if allow_consts and expr.name in self.consts:
                return self.consts[expr.name].default
            self._not_failed(expr.name)
            what = "dimensions and numbers" if not allow_consts else \
                "numbers, dimensions and constants"
            raise error(f"'{expr.name}' cannot appear here: only {what} can", expr.span)
        if isinstance(expr, ast.Unary):
            value = self._evaluate(expr.operand, allow_consts)
            return -value if expr.op == "-" else value
        if isinstance(expr, ast.Binary):
            left = self._evaluate(expr.left, allow_consts)
            right = self._evaluate(expr.right, allow_consts)
            if expr.op == "^" and _power_too_large(left, right):
                raise error("this constant is out of range (far beyond 1e308)", expr.span)
            try:
                if expr.op == "+":
                    value = left + right
                elif expr.op == "-":
                    value = left - right
                elif expr.op == "*":
                    value = left * right
                elif expr.op == "/":
                    value = left / right
                    if float(value).is_integer() and isinstance(left, int) \
                            and isinstance(right, int):
                        value = int(value)
                else:
                    value = left ** right
            except ZeroDivisionError:
                raise error("cannot evaluate this constant: division by zero",
                            expr.span) from None
            except (OverflowError, ValueError, TypeError):
                raise error("this constant is out of range (beyond 1e308)", expr.span) from None
            if isinstance(value, complex):
                raise error("this constant is not a real number", expr.span)
            if not _finite(value):
                raise error("this constant is out of range (beyond 1e308)", expr.span)
            return value
        raise error("only numbers, dimensions and constants can appear here", _expr_span(expr))


def _finite(value: int | float) -> bool:
    """Whether `value` is a finite float64 (a Python int may be far larger)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _power_too_large(base: int | float, exponent: int | float) -> bool:
    """Whether base ** exponent is beyond float64, judged before computing it (an exact
    integer power like 10 ** 10 ** 9 would take minutes and gigabytes)."""
    if isinstance(base, complex) or isinstance(exponent, complex) or abs(base) <= 1:
        return False
    return exponent > 0 and exponent * math.log10(abs(base)) > 309


def _shown(text: str) -> str:
    """A number's text for a message: thousands of digits are cut short."""
    return text if len(text) <= 24 else f"{text[:12]}...{text[-6:]} ({len(text)} characters)"


def _number_value(number: ast.Number) -> int | float:
    """The value of a literal, which must be a float64 (so the generated code, which
    computes in floating point, means the same number)."""
    text = number.text
    if len(text) > _MAX_LITERAL:
        raise error(f"number {_shown(text)} is too long (more than {_MAX_LITERAL} "
                    "characters)", number.span)
    value: int | float = int(text) if text.isdigit() else float(text)
    if not _finite(value):
        raise error(f"number {_shown(text)} is out of range (beyond 1e308)", number.span)
    if value == 0 and any(c in "123456789" for c in text.split("e")[0].split("E")[0]):
        raise error(f"number {_shown(text)} is too small: it is 0 in floating point",
                    number.span)
    return value


def _expr_span(expr: ast.Expr) -> Span:
    return expr.span


def check(spec: ast.Spec) -> CheckedModel:
    """Resolve and check a parsed spec; raise SpecError listing every faulty declaration."""
    return _Checker(spec).run()
