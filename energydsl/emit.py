"""Stage 7, emit: planned program -> the text of a self-contained PyTorch module.

Jinja2 holds the layout (templates/module.py.j2); every expression was already turned
into code by the printer. The output depends only on the spec, so recompiling gives
byte-identical files.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass
from functools import cache

import jinja2

from . import __version__
from .derive import Derivation
from .plan import BATCH, Operand, Planner, Program, plan
from .printing import dsl_str

# Public methods of every generated module: name -> (definition, how to finish, doc).
METHODS = (
    ("free_energy", "free_energy", None, "Free energy F({v}) per sample, shape [N]."),
    ("score", "score", None,
     "Score d log p~({v}) / d{v} = -dF/d{v} per sample, shape [N, {D}]."),
    ("laplacian", "laplacian", None,
     "Laplacian sum_i d^2 log p~({v}) / d{v}_i^2 per sample, shape [N]."),
    ("sm_loss", "sm_objective", "mean",
     "Exact score-matching loss (Hyvarinen 2005), the batch mean of\n"
     "        sum_i 1/2 score_i^2 + d score_i / d{v}_i, constants included."),
)


@dataclass(frozen=True)
class CtorArg:
    name: str
    type: str
    default: str


@dataclass(frozen=True)
class Check:
    code: str
    message: str


@dataclass(frozen=True)
class Line:
    comment: str
    code: str  # `name = value`, wrapped to the line length


@dataclass(frozen=True)
class Method:
    name: str
    doc: str
    prologue: tuple[str, ...]
    steps: tuple[Line, ...]
    result: str


LINE_LENGTH = 100


def wrap_assignment(name: str, code: str, indent: int = 8) -> str:
    """`name = a + b - c`, broken before top-level + and - when longer than a line."""
    line = f"{name} = {code}"
    if indent + len(line) <= LINE_LENGTH:
        return line
    node = ast.parse(code, mode="eval").body
    terms: list[tuple[str, ast.expr]] = []
    while isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub)):
        terms.append(("+" if isinstance(node.op, ast.Add) else "-", node.right))
        node = node.left
    if not terms:
        return line
    pad = " " * (indent + 4)
    parts = [ast.unparse(node)] + [f"{op} {ast.unparse(term)}" for op, term in reversed(terms)]
    return f"{name} = (\n" + "\n".join(pad + p for p in parts) + "\n" + " " * indent + ")"


def wrap_formulas(text: str, width: int = LINE_LENGTH - 4) -> str:
    """Docstring formula lines wrapped at spaces, continuation lines indented."""
    lines = []
    for line in text.split("\n"):
        lines += textwrap.wrap(line, width=width, subsequent_indent=" " * 18,
                               break_long_words=False, break_on_hyphens=False) or [""]
    return "\n".join(lines)


@cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("energydsl", "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )
    return env.get_template("module.py.j2")


def _safe_text(text: str) -> str:
    """Text for a comment or docstring: printable ASCII, no quotes or backslashes that
    could end the docstring or comment early."""
    text = text.replace("\\", "/").replace('"""', "'''")
    return "".join(c if (c.isprintable() and ord(c) < 128) or c == "\n" else "?"
                   for c in text)


def _init_code(param, planner: Planner) -> str:
    shape = ", ".join(f"self.{d}" for d in param.shape)
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
    if kind == "uniform":
        low, high = args
        return f"{low!r} + {high - low!r} * torch.rand({size}, {opts})"
    raise ValueError(kind)  # pragma: no cover


def _finish(operand: Operand, target: tuple, planner: Planner, how: str | None) -> str:
    """The return expression: broadcast to [N, ...] if the value does not depend on v."""
    code = operand.code
    if operand.indices != target:
        if not operand.is_tensor:
            shape = ", ".join(planner.shape_code(i) for i in target)
            code = f"_like.new_full(({shape}{',' if len(target) == 1 else ''}), {code})"
        else:
            code = planner.align(operand, target, broadcast=True)
            shape = ", ".join(planner.shape_code(i) for i in target)
            code = f"{code}.expand({shape})"
    if how == "mean":
        code = f"{code}.mean()"
    return code


def _uses(text: str, name: str) -> bool:
    return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", text) is not None


def _method(name: str, definition: str, how: str | None, doc: str, program: Program,
            planner: Planner, visible: str) -> Method:
    operand, target = program.outputs[definition]
    if BATCH not in target:
        target = (BATCH, *target)
    result = _finish(operand, target, planner, how)
    steps = program.needed([operand.code])
    body = " ".join(step.code for step in steps) + " " + result
    prologue = []
    batch_used = _uses(body, "_batch")
    prologue.append(f"_batch = self._check_input({visible})" if batch_used
                    else f"self._check_input({visible})")
    if _uses(body, "_like"):
        prologue.append(f"_like = {visible}")
    lines = tuple(Line(step.comment, wrap_assignment(step.name, step.code)) for step in steps)
    return Method(name, doc, tuple(prologue), lines, result)


def emit(derivation: Derivation, spec_path: str) -> str:
    """Render the generated module's source text."""
    symbolic = derivation.model.symbolic
    checked = symbolic.checked
    visible = checked.visible.name
    visible_dim = checked.visible.shape[0]
    outputs = [definition for _, definition, _, _ in METHODS]
    program, planner = plan(derivation, outputs)

    ctor_args = [CtorArg(d.name, "int", str(d.default)) for d in checked.dims.values()
                 if d.derived_from is None]
    ctor_args += [CtorArg(c.name, "float" if isinstance(c.default, float) else "int",
                          repr(c.default)) for c in checked.consts.values()]
    ctor_checks = [Check(f"isinstance({a.name}, int) and {a.name} >= 1",
                         f'f"{a.name} must be a positive integer, got {{{a.name}!r}}"')
                   for a in ctor_args if a.type == "int" and a.name in checked.dims]
    for condition in derivation.model.conditions:
        code = planner_printer(planner, condition, local=True)
        ctor_checks.append(Check(code, repr(_safe_text(
            f"the model is normalisable only if {dsl_str(condition)}"))))
    ctor_lines = []
    for dim in checked.dims.values():
        if dim.derived_from is None:
            ctor_lines.append(f"self.{dim.name} = {dim.name}")
        else:
            ctor_lines.append(f"self.{dim.name} = {_dim_formula(dim.derived_from)}")
    for const in checked.consts.values():
        ctor_lines.append(f"self.{const.name} = {const.name}")
    for param in checked.params.values():
        ctor_lines.append(f"self.{param.name} = torch.nn.Parameter(\n"
                          f"            {_init_code(param, planner)}\n        )")

    fmt = {"v": visible, "D": visible_dim}
    methods = [_method(name, definition, how, doc.format(**fmt), program, planner, visible)
               for name, definition, how, doc in METHODS]
    summary = _summary(derivation)
    text = _template().render(
        version=__version__,
        spec_path=_safe_text(spec_path),
        model=checked,
        summary=summary,
        formulas=wrap_formulas(_safe_text(formulas(derivation))),
        uses_math=any("math." in line.code for m in methods for line in m.steps)
        or any("math." in c.code for c in ctor_checks),
        ctor_doc=", ".join(f"{a.name}={a.default}" for a in ctor_args) or "none",
        params_doc=", ".join(f"{p.name} [{', '.join(p.shape)}]" for p in checked.params.values())
        or "none",
        visible=visible,
        visible_dim=visible_dim,
        first_param=next(iter(checked.params), None),
        ctor_args=ctor_args,
        ctor_checks=ctor_checks,
        ctor_lines=ctor_lines,
        methods=methods,
    )
    return text


def planner_printer(planner: Planner, expr, local: bool = False) -> str:
    """Code for a condition or scalar formula over dims and constants."""
    from .printer import TorchPrinter

    names = dict(planner.scalar_names)
    if local:
        names = {symbol: code.removeprefix("self.") for symbol, code in names.items()}
    return TorchPrinter(set(), names).doprint(expr)


def _dim_formula(expr) -> str:
    from . import syntax as ast

    if isinstance(expr, ast.Number):
        return expr.text
    if isinstance(expr, ast.Name):
        return expr.name
    if isinstance(expr, ast.Unary):
        return f"{expr.op}{_dim_formula(expr.operand)}"
    if isinstance(expr, ast.Binary):
        op = {"^": "**", "/": "//"}.get(expr.op, expr.op)
        return f"({_dim_formula(expr.left)} {op} {_dim_formula(expr.right)})"
    raise ValueError(expr)  # pragma: no cover


def _summary(derivation: Derivation) -> str:
    model = derivation.model
    checked = model.symbolic.checked
    visible = checked.visible
    parts = [f"energy-based model of {visible.name} in R^{visible.shape[0]}"]
    for hidden in checked.hidden.values():
        parts.append(f"hidden {hidden.name} {hidden.domain}^{hidden.shape[0]}")
    return ", ".join(parts) + "."


def formulas(derivation: Derivation) -> str:
    """The model's formulas in spec notation (for docstrings and `show`)."""
    model = derivation.model
    lines = []
    if model.energy is not None:
        lines.append(f"Energy:       E = {dsl_str(model.energy)}")
    for definition_name, definition in model.symbolic.definitions.items():
        indices = f"[{', '.join(map(str, definition.indices))}]" if definition.indices else ""
        lines.append(f"Definition:   {definition_name}{indices} = {dsl_str(definition.body)}")
    lines.append(f"Free energy:  F = {dsl_str(derivation.free_energy)}")
    lines.append(f"Score:        score[{derivation.index}] = {dsl_str(derivation.score)}")
    lines.append(f"Laplacian:    laplacian = {dsl_str(derivation.laplacian)}")
    lines.append(f"SM objective: {dsl_str(derivation.sm_objective)}   (batch mean)")
    for condition in model.conditions:
        lines.append(f"Requires:     {dsl_str(condition)}")
    return "\n".join(lines)
