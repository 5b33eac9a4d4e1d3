"""Stage 1, parse: spec text -> `syntax.Spec`.

A Lark LALR parser over grammar/energy.lark; the Transformer only builds AST
dataclasses with positions. Lark's exceptions become positioned `SpecError`s.
"""

from __future__ import annotations

import functools

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.tree import Meta

from energydsl.compiler import syntax as ast
from energydsl.errors import Span, error

# Readable names for the grammar's named terminals in "expected ..." messages.
_TERMINAL_NAMES = {"NAME": "a name", "NUMBER": "a number", "$END": "end of file"}

# The deepest expression accepted, in nested operators, calls and sums (parentheses alone
# add nothing). Every later stage (the Transformer, the checker, SymPy, the printers)
# recurses over expressions, so much deeper input would end in a RecursionError; no spec
# a person writes comes near it.
MAX_DEPTH = 64
_EXPRESSION_RULES = frozenset({"add", "sub", "mul", "div", "pow", "neg", "pos", "call", "sum",
                               "logsumexp", "indexed"})

# Tokens quoted in messages are cut to this length (a number may have thousands of digits).
_MAX_QUOTED = 40


GRAMMAR = "grammar/energy.lark"  # inside this package (ships in the wheel as package data)


@functools.cache
def _lark() -> Lark:
    return Lark.open_from_package("energydsl.compiler", GRAMMAR, parser="lalr",
                                  propagate_positions=True, maybe_placeholders=True)


def _span(meta: Meta | Token) -> Span:
    if isinstance(meta, Token):
        return Span(meta.line or 1, meta.column or 1, max(len(str(meta)), 1))
    if getattr(meta, "empty", False):
        return Span(1, 1)
    length = meta.end_column - meta.column if meta.line == meta.end_line else 1
    return Span(meta.line, meta.column, max(length, 1))


def _ident(token: Token) -> ast.Ident:
    return ast.Ident(str(token), _span(token))


@v_args(meta=True)
class _ToAst(Transformer):
    """Builds `syntax` dataclasses; no checks here."""

    # -- declarations
    def start(self, meta, children):
        return ast.Spec(model=children[0], declarations=tuple(children[1:]))

    def model_decl(self, meta, children):
        return _ident(children[0])

    def dim_decl(self, meta, children):
        return ast.DimDecl(_ident(children[0]), children[1], _span(meta))

    def const_decl(self, meta, children):
        name, shape, value = children
        return ast.ConstDecl(_ident(name), value, _span(meta), shape or ())

    def _var(self, role, meta, children):
        name, domain, shape = children
        return ast.VarDecl(role, _ident(name), _ident(domain), shape or (), _span(meta))

    def visible_decl(self, meta, children):
        return self._var("visible", meta, children)

    def hidden_decl(self, meta, children):
        return self._var("hidden", meta, children)

    def param_decl(self, meta, children):
        name, shape, init, attributes = children
        return ast.ParamDecl(_ident(name), shape or (), init, attributes or (), _span(meta))

    def let_decl(self, meta, children):
        name, indices, value = children
        return ast.LetDecl(_ident(name), indices or (), value, _span(meta))

    def energy_decl(self, meta, children):
        name, *args, value = children
        return ast.EnergyDecl("energy", _ident(name), tuple(map(_ident, args)), value, _span(meta))

    def free_energy_decl(self, meta, children):
        name, arg, value = children
        return ast.EnergyDecl("free_energy", _ident(name), (_ident(arg),), value, _span(meta))

    def log_density_decl(self, meta, children):
        name, *args, value = children
        return ast.EnergyDecl("log_density", _ident(name), tuple(map(_ident, args)), value,
                              _span(meta))

    def shape(self, meta, children):
        return tuple(map(_ident, children))

    index_names = shape

    def list_literal(self, meta, children):
        return ast.ListLiteral(tuple(child for child in children if child is not None),
                               _span(meta))

    def init(self, meta, children):
        name, args = children
        return ast.Init(_ident(name), args or (), _span(meta))

    def call_args(self, meta, children):
        return tuple(child for child in children if child is not None)

    def attributes(self, meta, children):
        return tuple(children)

    def attribute(self, meta, children):
        name, args = children
        return ast.Attribute(_ident(name), args or (), _span(meta))

    # -- expressions
    def _binary(self, op, meta, children):
        return ast.Binary(op, children[0], children[1], _span(meta))

    def add(self, meta, children):
        return self._binary("+", meta, children)

    def sub(self, meta, children):
        return self._binary("-", meta, children)

    def mul(self, meta, children):
        return self._binary("*", meta, children)

    def div(self, meta, children):
        return self._binary("/", meta, children)

    def pow(self, meta, children):
        return self._binary("^", meta, children)

    def neg(self, meta, children):
        return ast.Unary("-", children[0], _span(meta))

    def pos(self, meta, children):
        return ast.Unary("+", children[0], _span(meta))

    def number(self, meta, children):
        return ast.Number(str(children[0]), _span(children[0]))

    def name(self, meta, children):
        return ast.Name(str(children[0]), _span(children[0]))

    def indexed(self, meta, children):
        base, *indices = children
        return ast.Indexed(_ident(base), tuple(map(_ident, indices)), _span(meta))

    def call(self, meta, children):
        func, args = children
        return ast.Call(_ident(func), args, _span(meta))

    def sum(self, meta, children):
        *bindings, body = children
        return ast.SumExpr(tuple(bindings), body, _span(meta))

    def logsumexp(self, meta, children):
        *bindings, body = children
        return ast.SumExpr(tuple(bindings), body, _span(meta), "logsumexp")

    def binding(self, meta, children):
        index, range_ = children
        return ast.Binding(_ident(index), _ident(range_) if range_ is not None else None)


def _quote(text: str) -> str:
    """A token for a message, cut short if it is very long."""
    if len(text) > _MAX_QUOTED:
        text = text[:_MAX_QUOTED - 3] + "..."
    return f"'{text}'"


def _end_of_file(source: str) -> Span:
    """Just past the last non-blank character, counting lines as Lark does (by newline
    characters only, unlike str.splitlines)."""
    lines = source.rstrip().split("\n")
    return Span(len(lines), len(lines[-1]) + 1)


def _check_depth(tree: Tree) -> None:
    """Reject an expression nested deeper than MAX_DEPTH before anything recurses over it
    (with an explicit stack: this walk itself must not hit the recursion limit)."""
    stack: list[tuple[Tree, int]] = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        depth += node.data in _EXPRESSION_RULES
        if depth > MAX_DEPTH:
            meta = node.meta
            span = Span(meta.line, meta.column) if not getattr(meta, "empty", True) else Span(1, 1)
            raise error(f"expression nested too deeply (more than {MAX_DEPTH} levels of "
                        "operators, calls or sums); name parts of it with "
                        "'let'", span)
        stack.extend((child, depth) for child in node.children if isinstance(child, Tree))


def _describe_expected(expected: set[str]) -> str:
    names = []
    for terminal in sorted(expected):
        if terminal in _TERMINAL_NAMES:
            names.append(_TERMINAL_NAMES[terminal])
            continue
        try:
            pattern = _lark().get_terminal(terminal).pattern
        except KeyError:
            names.append(terminal.lower())
            continue
        names.append(f"'{pattern.value}'" if pattern.type == "str" else terminal.lower())
    names = sorted(set(names))
    if len(names) == 1:
        return names[0]
    return "one of " + ", ".join(names)


def _syntax_error(exc: UnexpectedInput, source: str):
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        char = source[position] if position < len(source) else "?"
        hint = ""
        if not char.isascii():  # e.g. a Cyrillic 'а' that looks like a Latin 'a'
            hint = f" (U+{ord(char):04X}; names and numbers are ASCII letters, digits and '_')"
        return error(f"unexpected character {char!r}{hint}", Span(exc.line, exc.column))
    if isinstance(exc, UnexpectedEOF):
        return error(f"unexpected end of file; expected "
                     f"{_describe_expected({str(t) for t in exc.expected})}",
                     _end_of_file(source))
    if isinstance(exc, UnexpectedToken):
        token = exc.token
        if token.type == "$END":
            span = _end_of_file(source)
            found = "end of file"
        else:
            span = _span(token)
            found = _quote(str(token))
        expected = getattr(exc, "accepts", None) or exc.expected
        return error(f"unexpected {found}; expected {_describe_expected(expected)}", span)
    return error(f"syntax error: {exc}", Span(getattr(exc, "line", 1), getattr(exc, "column", 1)))


def parse(source: str) -> ast.Spec:
    """Parse spec text; raise SpecError with the position of the first syntax error."""
    try:
        tree = _lark().parse(source)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, source) from None
    _check_depth(tree)
    return _ToAst().transform(tree)
