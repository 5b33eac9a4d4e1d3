"""Stage 7, emit: derived definitions -> the text of a self-contained PyTorch module.

Jinja2 holds the layout (templates/module.py.j2); the planner and printer already
turned every expression into code, `methods` arranged them into method bodies. The
output depends only on the spec, so recompiling gives byte-identical files.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache

import jinja2
import sympy as sp

from energydsl import __version__
from energydsl.compiler import syntax as ast
from energydsl.compiler.domains import DOMAINS
from energydsl.compiler.emit.layout import LINE_LENGTH, checked_body, signature
from energydsl.compiler.emit.torch_printer import TorchPrinter
from energydsl.compiler.functions import kinked_in
from energydsl.compiler.ir import (
    Conditionals,
    Definition,
    Derivation,
    Method,
    Param,
    PlannedModule,
    VectorConst,
)
from energydsl.compiler.notation import dsl_str, latex
from energydsl.compiler.plan.methods import ANCHOR_BUFFER
from energydsl.compiler.plan.methods import bare as _bare
from energydsl.compiler.sympy_functions import JacobianSquares, RowSpaceFactor
from energydsl.errors import shorten
from energydsl.estimators import all_estimators

DEFAULT_MAX_STATES = 2**20  # hidden states an enumerated normaliser visits by default
RUNTIME = (
    "_circulant_layout", "_circulant_pairs", "_row_space", "_square_sum", "_scale_and_square",
    "_jacobian_squares")
"""The helpers a generated module may call, each written into the module when a method
calls it (templates/runtime/NAME.py.j2, `runtime_source`), so the module stays
self-contained."""


@dataclass(frozen=True)
class CtorArg:
    name: str
    type: str
    default: str


@dataclass(frozen=True)
class Check:
    code: str
    message: str


def runtime_source(name: str) -> str:
    """The source of the runtime helper `name` (one of RUNTIME) as a module holds it."""
    return _environment().get_template(f"runtime/{name}.py.j2").render()


@cache
def _environment() -> jinja2.Environment:
    """The module's templates, and each estimator's partial as `estimators/<file>`."""
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader([
            jinja2.PackageLoader("energydsl.compiler.emit", "templates"),
            jinja2.PrefixLoader({
                "estimators": jinja2.PackageLoader("energydsl.estimators", "templates")}),
        ]),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render(template: str, **context) -> str:
    """A template's text, without its final newline (the caller lays out blocks)."""
    return _environment().get_template(template).render(
        signature=signature, **context).rstrip("\n")


def method_text(method: Method) -> str:
    """A planned method as text (the partial method.py.j2)."""
    return render("method.py.j2", head=signature(method.name, method.params, method.returns),
                  doc=method.doc, body=checked_body(method))


def estimator_texts(visible: str, dim: str, normalised: bool, domain: str) -> list[str]:
    """The methods of the registered estimators that apply to the data (`domain`, the
    visible variable's), from their partials (templates/estimators)."""
    return [render(f"estimators/{estimator.template}", v=visible, dim=dim,
                   normalised=normalised)
            for estimator in all_estimators()
            if estimator.template is not None and estimator.applies_to(domain)]


def safe_text(text: str) -> str:
    """Text for a comment or docstring: printable ASCII, no backslashes (escapes) and no
    double quotes (three end a docstring early; so does one just before its end)."""
    text = text.replace("\\", "/").replace('"', "'")
    return "".join(c if (c.isprintable() and ord(c) < 128) or c == "\n" else "?"
                   for c in text)


def safe_line(text: str) -> str:
    """Text for a one-line comment: as `safe_text`, and no line break, which would end the
    comment and make the rest of the text code."""
    return safe_text(text).replace("\n", "?")


def safe_format_text(text: str) -> str:
    """Text for the literal part of an f-string: as `safe_line`, braces doubled so none
    is taken for an expression to evaluate."""
    return safe_line(text).replace("{", "{{").replace("}", "}}")


def wrap_formulas(text: str, width: int = LINE_LENGTH - 4) -> str:
    """Docstring formula lines wrapped at spaces, continuation lines indented."""
    lines = []
    for line in text.split("\n"):
        lines += textwrap.wrap(line, width=width, subsequent_indent=" " * 18,
                               break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join(lines)


def _stored_shape(param: Param) -> tuple[str, ...]:
    """The raw parameter's shape: a grid-masked [D, D] matrix keeps only its [9, D] stencil
    (entry (o, p) is raw[p, p + offset o]; see _grid_stencil), so its memory grows with D,
    not D^2."""
    if param.grid is not None:
        return ("9", f"self.{param.shape[0]}")
    return tuple(f"self.{d}" for d in param.shape)


def _param_doc(param: Param) -> str:
    shape = f"{param.name} [{', '.join(param.shape)}]"
    if param.grid is not None:
        return f"{shape} (stored as its stencil, [9, {param.shape[0]}])"
    return shape


def _init_code(param: Param) -> str:
    shape = ", ".join(_stored_shape(param))
    size = f"({shape},)" if len(param.shape) == 1 else f"({shape})"
    opts = "dtype=dtype, device=device"
    kind, args = param.init.kind, param.init.args
    if kind == "normal":
        return f"{args[0]!r} * torch.randn({size}, {opts})"
    if kind == "zeros":
        return f"torch.zeros({size}, {opts})"
    if kind == "ones":
        return f"torch.ones({size}, {opts})"
    if kind == "constant":
        return f"torch.full({size}, {args[0]!r}, {opts})"
    low, high = args  # uniform
    return f"{low!r} + {high - low!r} * torch.rand({size}, {opts})"


def _shape_texts(const: VectorConst) -> tuple[str, str]:
    """The constant's shape as code, `(self.D, self.K)`, and as its dimensions' names."""
    comma = "," if len(const.shape) == 1 else ""
    return (f"({', '.join(f'self.{d}' for d in const.shape)}{comma})",
            f"({', '.join(const.shape)}{comma})")


def _values_text(const: VectorConst) -> str:
    """The spec's value as Python: the list of entries, or the number filling it."""
    if isinstance(const.value, tuple):
        return f"[{', '.join(map(repr, const.value))}]"
    return repr(const.value)


def _buffer_code(const: VectorConst) -> str:
    """A vector constant as a buffer of the module (moved and saved with it, never
    learnt): the constructor's tensor, else the spec's value (_constant in the template).
    A long list of entries is wrapped."""
    shape, dims = _shape_texts(const)
    name = const.name
    head = f'"{name}", _constant("{name}", {name}, {shape}, "{dims}", dtype, device, '
    values = _values_text(const)
    if 12 + len(head) + len(values) + 1 > LINE_LENGTH:
        lines = textwrap.wrap(values[1:-1] + ",", width=LINE_LENGTH - 16,
                              break_long_words=False, break_on_hyphens=False)
        values = "[\n" + "".join(f"{' ' * 16}{line}\n" for line in lines) + " " * 12 + "]"
    return f"self.register_buffer(\n            {head}{values})\n        )"


def constant_text(const: VectorConst) -> str:
    """`s[D] = [0.5, 1.0, 2.0]` or `T[D, K] = 0.0 in every entry` (a long list cut short)."""
    every = "" if isinstance(const.value, tuple) else " in every entry"
    return f"{const.name}[{', '.join(const.shape)}] = {shorten(_values_text(const), 60)}{every}"


def _dim_formula(expr: ast.Expr) -> str:
    if isinstance(expr, ast.Number):
        return str(int(expr.text))  # Python's spelling: '08' is no Python literal
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Unary):
        return f"{expr.op}{_dim_formula(expr.operand)}"
    if isinstance(expr, ast.Binary):
        op = {"^": "**", "/": "//"}.get(expr.op, expr.op)
        return f"({_dim_formula(expr.left)} {op} {_dim_formula(expr.right)})"
    raise ValueError(expr)  # pragma: no cover


_DOMINANT_NOTE = ("strictly diagonally dominant with a positive diagonal, hence positive "
                  "definite for every raw value (Gershgorin)")


def _wrap_doc(doc: str) -> str:
    return "\n        ".join(textwrap.wrap(doc, width=88))


def _accessor_text(param: Param, names) -> str:
    """The methods giving a constrained parameter's value from its raw parameter (for a
    grid mask, the value's stencil and the dense matrix made from it: products with it
    cost 9 D per row, and the dense [D, D] value is built only where a method needs the
    matrix itself; `names`: the dimensions and constants, attributes of the module)."""
    constraint = param.constraint
    assert constraint is not None
    notes = ["symmetric, (raw + raw^T) / 2"] if constraint.symmetric else []
    notes += ["positive, softplus(raw) elementwise"] if constraint.positive else []
    context = {"param": param.name, "accessor": constraint.accessor,
               "symmetric": constraint.symmetric, "dominant": constraint.diagonally_dominant,
               "positive": constraint.positive,
               "value": "value" if constraint.symmetric else "raw"}
    if param.grid is None:
        notes += [_DOMINANT_NOTE] if constraint.diagonally_dominant else []
        doc = _wrap_doc(f"{param.name} from its raw parameter: " + "; ".join(notes) + ".")
        return render("accessor.py.j2", doc=doc, **context)
    height, width, _ = param.grid.arguments(names)
    notes.append("zero outside the grid neighbourhood of each pixel")
    notes += [_DOMINANT_NOTE] if constraint.diagonally_dominant else []
    name = param.name
    stencil_doc = _wrap_doc(
        f"{name} from its raw parameter, both as [9, D] stencils (entry (o, p) is {name}[p, "
        f"p + offset o], see _grid_stencil): " + "; ".join(notes) + ".")
    dense_doc = _wrap_doc(f"{name} as a dense [D, D] matrix: its stencil (_{name}_stencil) "
                          "scattered into place.")
    return render("grid_accessor.py.j2", height=height, width=width, stencil_doc=stencil_doc,
                  dense_doc=dense_doc, **context)


def _summary(derivation: Derivation) -> str:
    checked = derivation.model.symbolic.checked
    visible = checked.visible
    space = {"real": "R", "binary": "{0, 1}", "spin": "{-1, +1}"}[visible.domain]
    parts = [f"energy-based model of {visible.name} in {space}^{visible.shape[0]}"]
    for hidden in checked.hidden.values():
        parts.append(f"hidden {hidden.name} {hidden.domain}^{hidden.shape[0]}")
    return ", ".join(parts) + "."


def formulas(derivation: Derivation, conditionals: Conditionals | None = None) -> str:
    """The model's formulas in spec notation (for docstrings and `show`)."""
    model = derivation.model
    lines = []
    role = model.symbolic.checked.energy.role
    if model.energy is not None:
        lines.append(f"Energy:       E = {dsl_str(model.energy)}")
    elif role == "log_density":
        lines.append(f"Log density:  log p~ = {dsl_str(-derivation.free_energy)}")
    for const in model.symbolic.checked.vector_consts.values():
        lines.append(f"Constant:     {constant_text(const)}")
    for definition_name, definition in model.symbolic.definitions.items():
        indices = f"[{', '.join(map(str, definition.indices))}]" if definition.indices else ""
        lines.append(f"Definition:   {definition_name}{indices} = {dsl_str(definition.body)}")
    lines.append(f"Free energy:  F = {dsl_str(derivation.free_energy)}")
    if "flip_gain" in derivation.definitions:  # discrete data: flips, not derivatives
        p = derivation.index
        lines.append(f"Flip gain:    flip_gain[{p}] = F(v flipped at {p}) - F(v) = "
                     f"{dsl_str(derivation.definitions['flip_gain'].body)}")
        for key, title in (("rm_objective", "RM objective"), ("pl_objective", "PL objective")):
            lines.append(f"{title}: {dsl_str(derivation.definitions[key].body)}   "
                         "(batch mean)")
    else:
        lines.append(f"Score:        score[{derivation.index}] = {dsl_str(derivation.score)}")
        lines.append(f"Laplacian:    laplacian = {dsl_str(derivation.laplacian)}")
        derived = derived_definitions(derivation)
        for name, definition in derived:
            indices = f"[{', '.join(map(str, definition.indices))}]" if definition.indices else ""
            lines.append(f"Derived:      {name}{indices} = {dsl_str(definition.body)}")
        if derivation.laplacian.has(JacobianSquares) or any(
                d.body.has(RowSpaceFactor) for _, d in derived):
            lines.append("Note:         R(A) is any H x H matrix with R^T R = A A^T (derivatives "
                         "taken in A's row space)")
        if derivation.laplacian.has(JacobianSquares):
            lines.append("Note:         jacobian_squares(R(A); steps) sums, per sample, "
                         "sum(h: w[h] sum(a: J[a, h]^2)) at each 'square w' step, with J "
                         "starting as R(A): 'scale s' is J[a, h] s[h], 'matmul V' is J V^T "
                         "('matmul_t V': J V)")
        lines.append(f"SM objective: {dsl_str(derivation.sm_objective)}   (batch mean)")
    for condition in model.conditions:
        lines.append(f"Requires:     {dsl_str(condition)}")
    kinked = kinked_in(derivation.free_energy,
                       *[d.body for d in model.symbolic.definitions.values()])
    if kinked:
        lines.append(f"Note:         {', '.join(kinked)} not differentiable everywhere: the "
                     "derivatives hold almost everywhere (at a kink, as autograd's)")
    if conditionals is not None:
        for name, conditional in conditionals.hidden.items():
            index = conditional.unit.index
            lines.append(f"Conditional:  E[{name}[{index}] | v] = {dsl_str(conditional.mean)}")
        if conditionals.sm_terms is not None:
            for key, value in conditionals.sm_terms.items():
                lines.append(f"SM term:      {key} = {dsl_str(value)}")
        if conditionals.visible is not None:
            visible = conditionals.visible
            name = model.symbolic.checked.visible.name
            lines.append(f"Conditional:  {name} | hidden ~ N(P^-1 b, P^-1) with "
                         f"P[{visible.index}, {visible.second}] = {dsl_str(visible.precision)}, "
                         f"b[{visible.index}] = {dsl_str(visible.linear)}")
        if conditionals.gaussian_precision is not None and conditionals.gaussian_indices:
            p, q = conditionals.gaussian_indices
            lines.append(f"Gaussian:     precision[{p}, {q}] = "
                         f"{dsl_str(conditionals.gaussian_precision)}")
    return "\n".join(lines)


def derived_definitions(derivation: Derivation) -> list[tuple[str, Definition]]:
    """The definitions the derivation added that its score and Laplacian read, directly
    or through each other (a deep model's Jacobians, second-order terms and adjoints), in
    the order they are defined: what a reader of those two formulas needs."""
    own = derivation.model.symbolic.definitions
    derived = {name: d for name, d in derivation.definitions.items() if name not in own}
    wanted: set[str] = set()
    pending = [derivation.score, derivation.laplacian]
    while pending:
        for node in sp.preorder_traversal(pending.pop()):
            name = str(node.label) if isinstance(node, sp.IndexedBase) else (
                str(node) if isinstance(node, sp.Symbol) else None)
            if name in derived and name not in wanted:
                wanted.add(name)
                pending.append(derived[name].body)
    return [(name, d) for name, d in derived.items() if name in wanted]


def _latex_left(definition: Definition) -> str:
    """A definition's left-hand side, printed as its uses on the right are."""
    base = definition.base
    return latex(base[tuple(definition.indices)] if definition.indices else base)


def latex_formulas(derivation: Derivation) -> Iterator[tuple[str, str]]:
    """The model's formulas as (name, LaTeX) pairs (for `show --latex` and notebooks)."""
    model = derivation.model
    if model.energy is not None:
        yield "energy", f"E = {latex(model.energy)}"
    for name, const in model.symbolic.checked.vector_consts.items():
        symbol = latex(model.symbolic.vector_consts[name])
        space = r" \times ".join(const.shape)
        value = (f"({', '.join(map(repr, const.value))})" if isinstance(const.value, tuple)
                 else rf"{const.value!r} \text{{ in every entry}}")
        yield name, rf"{symbol} \in \mathbb{{R}}^{{{space}}} = {value}"
    for name, definition in model.symbolic.definitions.items():
        yield name, f"{_latex_left(definition)} = {latex(definition.body)}"
    yield "free energy", f"F = {latex(derivation.free_energy)}"
    yield "score", f"\\psi_{{{derivation.index}}} = {latex(derivation.score)}"
    yield "laplacian", f"\\Delta \\log \\tilde p = {latex(derivation.laplacian)}"
    for name, definition in derived_definitions(derivation):
        yield name, f"{_latex_left(definition)} = {latex(definition.body)}"
    yield "sm objective", f"J = \\mathbb{{E}}\\left[{latex(derivation.sm_objective)}\\right]"
    for condition in model.conditions:
        yield "requires", latex(condition)
    kinked = kinked_in(derivation.free_energy,
                       *[d.body for d in model.symbolic.definitions.values()])
    if kinked:
        yield "note", (rf"\text{{{', '.join(kinked)}: derivatives almost everywhere "
                       r"(at a kink, as autograd's)}")


def python_string(text: str, indent: int = 4, width: int = 84) -> str:
    """A Python string literal of `text`; a long one as implicitly concatenated pieces,
    broken at spaces where possible, one per line at `indent`."""
    if len(repr(text)) + indent <= width:
        return repr(text)
    pieces = textwrap.wrap(text, width - indent - 6, drop_whitespace=False,
                           replace_whitespace=False, break_on_hyphens=False)
    if "".join(pieces) != text:  # pragma: no cover - textwrap keeps every character
        pieces = [text[k:k + 60] for k in range(0, len(text), 60)]
    pad = " " * indent
    return "(\n" + "\n".join(pad + repr(p) for p in pieces) + "\n" + " " * (indent - 4) + ")"


def python_lines(lines: list[str], indent: int = 0) -> str:
    """A tuple literal of strings at `indent`, one element (and its pieces) per line."""
    inner = " " * (indent + 4)
    return "(\n" + "".join(f"{inner}{python_string(line, indent + 8)},\n"
                           for line in lines) + " " * indent + ")"


def _repr_code(names: list[str]) -> str:
    """`extra_repr`'s return value: an f-string of name=value pairs, in pieces when long."""
    if not names:
        return '""'
    pairs = [f"{name}={{self.{name}!r}}" for name in names]
    text = ", ".join(pairs)
    if len(text) <= 70:
        return f'f"{text}"'
    pieces = [f'f"{pair}, "' for pair in pairs[:-1]] + [f'f"{pairs[-1]}"']
    return "(\n" + "".join(f"            {p}\n" for p in pieces) + "        )"


def emit(derivation: Derivation, conditionals: Conditionals, planned: PlannedModule,
         spec_path: str) -> str:
    """Render the generated module's source text from the planned methods and the
    partials of the fixed ones."""
    symbolic = derivation.model.symbolic
    checked = symbolic.checked
    normalised = conditionals.gaussian_precision is not None

    ctor_args = [CtorArg(d.name, "int", str(d.default)) for d in checked.dims.values()
                 if d.derived_from is None]
    ctor_args += [CtorArg(c.name, "float" if isinstance(c.default, float) else "int",
                          repr(c.default)) for c in checked.consts.values()]
    ctor_args += [CtorArg(c.name, "torch.Tensor | None", "None")
                  for c in checked.vector_consts.values()]
    ctor_checks = [Check(f"isinstance({a.name}, int) and {a.name} >= 1",
                         f'f"{a.name} must be a positive integer, got {{{a.name}!r}}"')
                   for a in ctor_args if a.type == "int" and a.name in checked.dims]
    local_names = {s: n for n, s in symbolic.consts.items()}
    local_names.update({s: n for n, s in symbolic.dims.items()})
    for condition in derivation.model.conditions:
        code = _bare(TorchPrinter(set(), local_names).doprint(condition))
        message = safe_format_text(
            f"the model is normalisable only if {dsl_str(condition)}, got ")
        values = ", ".join(f"{s}={{{s}!r}}" for s in sorted(map(str, condition.free_symbols)))
        ctor_checks.append(Check(code, "f" + repr(message + values)))
    ctor_lines = []
    for dim in checked.dims.values():
        if dim.derived_from is None:
            ctor_lines.append(f"self.{dim.name} = {dim.name}")
        else:
            ctor_lines.append(f"self.{dim.name} = {_bare(_dim_formula(dim.derived_from))}")
    for const in checked.consts.values():
        ctor_lines.append(f"self.{const.name} = {const.name}")
    ctor_lines += [_buffer_code(c) for c in checked.vector_consts.values()]
    accessors: list[str] = []
    grid_mask = False
    scalars = {**checked.dims, **checked.consts}
    for param in checked.params.values():
        if param.constraint is not None and param.constraint.positive:
            # the initialiser gives the value: raw = softplus^-1(value), stably
            ctor_lines.append(f"_value = {_init_code(param)}")
            ctor_lines.append(f"self.{param.name} = torch.nn.Parameter(\n"
                              "            _value + torch.log(-torch.expm1(-_value))\n        )")
        else:
            ctor_lines.append(f"self.{param.name} = torch.nn.Parameter(\n"
                              f"            {_init_code(param)}\n        )")
        if param.constraint is not None:
            accessors.append(_accessor_text(param, scalars))
            if param.grid is not None:
                grid_mask = True
                args = ", ".join(param.grid.arguments(scalars))
                ctor_lines.append(f"_grid = _grid_stencil({args}, self.{param.shape[0]}, "
                                  "device=device)")
                for k, part in enumerate(("index", "inside")):  # [9, D] each
                    ctor_lines.append(f'self.register_buffer("_{param.name}_{part}", '
                                      f"_grid[{k}], persistent=False)")
    if planned.anchor == ANCHOR_BUFFER:
        ctor_lines.append(f'self.register_buffer("{ANCHOR_BUFFER}", torch.empty(0, dtype=dtype, '
                          'device=device), persistent=False)')
    if not normalised:
        ctor_lines.append("# log Z for noise-contrastive estimation (nce_loss), learnt too\n"
                          "        self.log_z = torch.nn.Parameter(torch.zeros((), dtype=dtype, "
                          "device=device))")
    v, size = checked.visible.name, checked.visible.shape[0]
    texts = accessors + [method_text(m) for m in planned.core]
    discrete = DOMAINS[checked.visible.domain].discrete
    if not discrete:  # v + score(v): data with a gradient
        texts.append(render("reconstruct.py.j2", v=v, dim=size))
    texts += [method_text(m) for m in planned.latent]
    if planned.gaussian is not None:
        texts += [method_text(planned.gaussian), render("gaussian.py.j2", v=v, dim=size)]
    if discrete:  # binary or spin data: log Z by the smaller layer's states
        texts += [method_text(m) for m in planned.enumeration]
        bits = planned.hidden_bits if planned.enumeration else ""
        count = " * ".join(([planned.hidden_categories] if planned.hidden_categories else [])
                           + (["2**hidden_units"] if bits and bits != "0" else [])) or "1"
        texts.append(render("discrete_enumeration.py.j2", v=v, dim=size, anchor=planned.anchor,
                            visible_value=DOMAINS[checked.visible.domain].enumerated("flags"),
                            hidden_bits=bits, hidden_count=count,
                            max_states=DEFAULT_MAX_STATES))
    elif planned.enumeration:
        texts += [method_text(m) for m in planned.enumeration]
        texts.append(render("enumeration.py.j2", v=v, dim=size, anchor=planned.anchor,
                            bits=planned.hidden_bits, categories=planned.hidden_categories,
                            max_states=DEFAULT_MAX_STATES))
    texts += estimator_texts(v, size, normalised, checked.visible.domain)
    return _environment().get_template("module.py.j2").render(
        version=__version__,
        spec_path=safe_line(spec_path),
        model=checked,
        summary=_summary(derivation),
        formulas=wrap_formulas(safe_text(formulas(derivation, conditionals))),
        formulas_literal=python_lines(formulas(derivation).split("\n"), 4),
        latex_literal="(\n" + "".join(
            f"        ({name!r}, {python_string(text, 12)}),\n"
            for name, text in latex_formulas(derivation)) + "    )",
        repr_code=_repr_code([a.name for a in ctor_args if a.type in ("int", "float")]),
        ctor_doc=", ".join(f"{a.name}={a.default}" for a in ctor_args) or "none",
        params_doc="\n    ".join(textwrap.wrap(
            "Parameters: " + (", ".join(_param_doc(p) for p in checked.params.values())
                              or "none") + ".", width=88)),
        constants_doc="\n    ".join(textwrap.wrap(
            "Constants (buffers, not learnt; None means the spec's value): "
            + "; ".join(map(constant_text, checked.vector_consts.values())) + ".", width=88))
        if checked.vector_consts else "",
        visible=checked.visible.name,
        hidden_units={name: h.domain for name, h in checked.hidden.items()},
        visible_domain=checked.visible.domain,
        visible_dim=checked.visible.shape[0],
        anchor=planned.anchor,
        ctor_args=ctor_args,
        ctor_checks=ctor_checks,
        ctor_lines=ctor_lines,
        methods=texts,
        uses_math=any("math." in text for text in texts),
        uses_cholesky=any("self._cholesky(" in text for text in texts),
        runtime=[name for name in RUNTIME if any(f"{name}(" in text for text in texts)],
        grid_mask=grid_mask,
    )
