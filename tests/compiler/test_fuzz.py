"""Fuzzing the compiler: no input makes it crash, hang or show a traceback.

Every input, however mangled, must end in a compiled module or in a SpecError whose every
diagnostic formats as `path:line:col: error: ...` followed by the source line and a caret;
through the CLI, in exit status 1 with nothing but such diagnostics on stderr. Hypothesis
draws random token streams from the grammar's own tokens, random declarations, and
mutations of every spec in specs/ (tokens deleted, duplicated, swapped or replaced,
truncation, stray Unicode, huge numbers); fixed cases cover deep nesting, huge numbers
and very long files. Random *valid* specs (tests/spec_generator.py), and random layer
chains with sums over pairs of units, must compile and agree with autograd. The examples
are derandomized, so the suite is deterministic; set ENERGYDSL_FUZZ_EXAMPLES=N for N
fresh random examples per test (a longer fuzzing run).
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spec_generator import pair_and_chain_specs, power_of_sum_specs, valid_specs

from energydsl.compiler.driver import compile_source
from energydsl.compiler.functions import FUNCTIONS
from energydsl.compiler.ir import Compiled
from energydsl.compiler.parse import MAX_DEPTH
from energydsl.errors import SpecError

from support import ROOT, SPECS

SPEC_TEXTS = {path.name: path.read_text() for path in sorted(SPECS.glob("*.edsl"))}
GRAMMAR = (ROOT / "energydsl" / "compiler" / "grammar" / "energy.lark").read_text()
PATH = "fuzz.edsl"

_EXAMPLES = int(os.environ.get("ENERGYDSL_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int, seconds: float = 10) -> settings:
    """`examples` deterministic examples, each bounded by a deadline (a hang fails), or
    ENERGYDSL_FUZZ_EXAMPLES random ones."""
    return settings(max_examples=_EXAMPLES or examples, derandomize=not _EXAMPLES,
                    deadline=timedelta(seconds=seconds), database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


# ---------------------------------------------------------------------------- the property

_HEAD = re.compile(r"(?P<path>.+):(?P<line>\d+):(?P<column>\d+): error: \S.*")


def assert_well_formed(exc: SpecError, text: str, path: str = PATH) -> str:
    """Every diagnostic is positioned inside the text and formats as a head line, the
    source line (unprintable characters shown as '?') and a caret under the column."""
    lines = text.split("\n")
    assert exc.diagnostics, "a SpecError without diagnostics"
    for diagnostic in exc.diagnostics:
        span = diagnostic.span
        assert span is not None, f"unpositioned diagnostic: {diagnostic.message}"
        assert 1 <= span.line <= len(lines), (span, len(lines))
        assert 1 <= span.column <= len(lines[span.line - 1]) + 1, (span, lines[span.line - 1])
        head, shown, caret = diagnostic.format(path, text).split("\n")
        match = _HEAD.fullmatch(head)
        assert match, head
        assert (int(match["line"]), int(match["column"])) == (span.line, span.column)
        assert "\n" not in diagnostic.message and "Traceback" not in diagnostic.message
        assert shown.startswith("    ") and shown.isprintable()
        assert re.fullmatch(r" {4,}\^~*", caret), caret
    return exc.format(path, text)


def compile_or_error(text: str) -> Compiled | str:
    """The compiled module, or the formatted diagnostics; any other exception (a crash
    in the compiler, SymPy or Lark) propagates and fails the test. What compiles must
    also show as LaTeX and pass `check` (or refuse sizes it cannot afford, clearly)."""
    try:
        compiled = compile_source(text, PATH)
    except SpecError as exc:
        return assert_well_formed(exc, text)
    shows_and_checks(compiled)
    return compiled


def shows_and_checks(compiled: Compiled) -> None:
    from energydsl.check.checks import check_compiled
    from energydsl.compiler.show import render
    from energydsl.errors import UsageError

    assert render(compiled.derivation, as_latex=True).startswith("model ")
    try:
        report = check_compiled(compiled)
    except UsageError as exc:  # e.g. too many quadrature nodes for the check's sizes
        assert "use smaller hidden sizes" in str(exc)
        return
    assert report.ok, report.table()


def first_error(text: str) -> str:
    result = compile_or_error(text)
    assert isinstance(result, str), "expected a diagnostic, but the spec compiled"
    return result


# ---------------------------------------------------------------------------- strategies

# The grammar's literal tokens (keywords and punctuation), straight from the grammar.
LITERALS = sorted(set(re.findall(r'"([^"\n]+)"', GRAMMAR)))
SPEC_NAMES = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", "".join(SPEC_TEXTS.values()))))
NAMES = st.sampled_from(sorted({*SPEC_NAMES, *FUNCTIONS, "grid", "__import__", "self",
                                "torch", "math", "score", "int", "h", "E", "_t1", "mean_h"})
                        ) | st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
HUGE = ["1e400", "1e-400", "9" * 5000, "1" + "0" * 400, "0." + "0" * 500 + "1", "1e308",
        "2^2^2^2^2^2", "10^400", "(-8)^(1/3)", "1/0", "0/0", "log(0)", "sqrt(-1)"]
NUMBERS = st.sampled_from(["0", "1", "2", "0.5", ".5", "1.", "2e3", "08", "3/4", *HUGE]) \
    | st.integers(0, 10**6).map(str)
TOKENS = st.sampled_from(LITERALS) | NAMES | NUMBERS | st.sampled_from(["\n", "# note\n"])

HEADER = """\
model M
dim D = 3
dim K = 2
const c = 1.5
visible v : real[D]
hidden h : binary[K]
param W[D, K]
param b[D]
"""


@st.composite
def token_streams(draw: st.DrawFn) -> str:
    """Random tokens of the language, after nothing, `model M` or a whole header (so
    the checker and later stages see some of them too)."""
    prefix = draw(st.sampled_from(["", "model M\n", HEADER]))
    return prefix + " ".join(draw(st.lists(TOKENS, max_size=60)))


_EXPR_LEAVES = NUMBERS | st.sampled_from(["v[i]", "h[j]", "W[i, j]", "b[i]", "c", "D", "K",
                                          "v[j]", "W[j, i]", "h", "v", "x[i]"])


def _expressions() -> st.SearchStrategy[str]:
    def extend(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return (st.tuples(inner, st.sampled_from("+-*/^"), inner).map(" ".join)
                | inner.map(lambda e: f"-{e}") | inner.map(lambda e: f"({e})")
                | st.tuples(st.sampled_from([*FUNCTIONS, "grid", "nope"]), inner)
                .map(lambda t: f"{t[0]}({t[1]})")
                | st.tuples(st.sampled_from(["i", "j", "i, j", "i in D", "j in K", "i in c"]),
                            inner).map(lambda t: f"sum({t[0]}: {t[1]})"))
    return st.recursive(_EXPR_LEAVES, extend, max_leaves=10)


@st.composite
def random_declarations(draw: st.DrawFn) -> str:
    """Syntactically plausible declarations with random names, shapes and bodies: most
    are wrong in some way the checker, lowering or marginalisation must report."""
    expr = _expressions()
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["let", "energy", "free", "log", "param", "hidden", "dim"]))
        e = draw(expr)
        if kind == "let":
            lines.append(f"let {draw(NAMES)}{draw(st.sampled_from(['', '[i]', '[i, j]']))}"
                         f" = {e}")
        elif kind == "energy":
            lines.append(f"energy E({draw(st.sampled_from(['v', 'v, h', 'h', 'v, v']))}) = {e}")
        elif kind == "free":
            lines.append(f"free energy F(v) = {e}")
        elif kind == "log":
            lines.append(f"log density p(v) = {e}")
        elif kind == "param":
            lines.append(f"param {draw(NAMES)}{draw(st.sampled_from(['', '[D]', '[K, K]']))}"
                         f"{draw(st.sampled_from(['', ' ~ normal(-1)', ' where symmetric']))}")
        elif kind == "hidden":
            domain = draw(st.sampled_from(["binary", "spin", "real", "positive", "complex"]))
            lines.append(f"hidden {draw(NAMES)} : {domain}[K]")
        else:
            lines.append(f"dim {draw(NAMES)} = {e}")
    return HEADER + "\n".join(lines) + "\n"


TOKEN_RE = re.compile(r"#[^\n]*|\s+|[A-Za-z_][A-Za-z0-9_]*"
                      r"|[0-9]+\.?[0-9]*(?:[eE][+-]?[0-9]+)?|\.[0-9]+|.", re.S)
LOOKALIKES = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "x": "\u0445",
              "i": "\u0456", "1": "\uff11", "-": "\u2212"}


def mutate(tokens: list[str], kind: str, a: int, b: int, replacement: str) -> list[str]:
    """One mutation of a token list at positions a and b (taken modulo its length)."""
    tokens = list(tokens)
    if not tokens:
        return [replacement]
    a, b = a % len(tokens), b % len(tokens)
    if kind == "delete":
        del tokens[a]
    elif kind == "duplicate":
        tokens.insert(a, tokens[a])
    elif kind == "swap":
        tokens[a], tokens[b] = tokens[b], tokens[a]
    elif kind == "replace":
        tokens[a] = replacement
    elif kind == "insert":
        tokens.insert(a, replacement)
    elif kind == "truncate":
        tokens = tokens[:a]
    elif kind == "lookalike":
        tokens[a] = "".join(LOOKALIKES.get(c, c) for c in tokens[a])
    return tokens


MUTATIONS = ["delete", "duplicate", "swap", "replace", "insert", "truncate", "lookalike"]


@st.composite
def mutated_specs(draw: st.DrawFn) -> str:
    """A spec from specs/ with one to three mutations."""
    tokens = TOKEN_RE.findall(SPEC_TEXTS[draw(st.sampled_from(sorted(SPEC_TEXTS)))])
    for _ in range(draw(st.integers(1, 3))):
        replacement = draw(TOKENS | st.characters() | st.text(max_size=3))
        tokens = mutate(tokens, draw(st.sampled_from(MUTATIONS)), draw(st.integers(0, 10**4)),
                        draw(st.integers(0, 10**4)), replacement)
    return "".join(tokens)


# ---------------------------------------------------------------------------- properties

@fuzz_settings(150, seconds=60)  # a compiled input is also shown and checked
@given(token_streams())
def test_random_token_streams(text: str) -> None:
    compile_or_error(text)


@fuzz_settings(60, seconds=60)  # a compiled input is also shown and checked
@given(random_declarations())
def test_random_declarations(text: str) -> None:
    compile_or_error(text)


@fuzz_settings(40, seconds=60)  # a compiled input is also shown and checked
@given(mutated_specs())
def test_mutated_specs(text: str) -> None:
    compile_or_error(text)


@fuzz_settings(18, seconds=60)
@given(valid_specs())
def test_random_valid_specs_compile_and_agree_with_autograd(spec) -> None:
    from energydsl.check.checks import check_compiled

    compiled = compile_source(spec.text, "generated.edsl")
    report = check_compiled(compiled, {dim: 1 for dim in spec.continuous_dims})
    assert report.ok, f"{spec.text}\n{report.table()}"


@fuzz_settings(12, seconds=60)
@given(power_of_sum_specs())
def test_powers_of_sums_agree_with_autograd(spec) -> None:
    """sm_loss (and everything else derived) of F with powers of sums, against autograd:
    a sum over an axis the summand lacks must count that axis's size."""
    from energydsl.check.checks import check_compiled

    report = check_compiled(compile_source(spec.text, "powers.edsl"))
    assert report.ok, f"{spec.text}\n{report.table()}"


@fuzz_settings(10, seconds=60)
@given(pair_and_chain_specs())
def test_pair_sums_and_layer_chains_agree_with_autograd(spec) -> None:
    """Stacked layers and sums over pairs of units, symmetric or not, inline or through
    lets: the planner's pair layouts, its Jacobian chains and its product grouping (which
    once printed (M + M^T) * V as M^T + M * V) against autograd."""
    from energydsl.check.checks import check_compiled

    report = check_compiled(compile_source(spec.text, "pairs.edsl"))
    assert report.ok, f"{spec.text}\n{report.table()}"


# ---------------------------------------------------------------------------- fixed cases

BASE = "model M\ndim D = 3\nvisible v : real[D]\n"


def _energy(expression: str) -> str:
    return BASE + f"free energy F(v) = sum(i: {expression})\n"


def _nested(opening: str, closing: str, depth: int, core: str = "v[i]") -> str:
    return opening * depth + core + closing * depth


TOO_DEEP = f"expression nested too deeply (more than {MAX_DEPTH} levels"

FIXED = {
    # deep nesting: a positioned error, never a RecursionError
    "500 unary minus": (_energy(_nested("-", "", 500) + "^2"), TOO_DEEP),
    "500 function calls": (_energy(_nested("tanh(", ")", 500) + "^2"), TOO_DEEP),
    "500 sums": (BASE + "free energy F(v) = " + "".join(f"sum(i{k} in D: " for k in range(500))
                 + "v[i0]^2" + ")" * 500 + "\n", TOO_DEEP),
    "500 powers": (_energy("v[i]" + "^1" * 500), TOO_DEEP),
    "10,000 terms": (_energy("v[i]^2" + " + v[i]" * 10_000), TOO_DEEP),
    "functions 5 deep": (_energy(_nested("tanh(", ")", 5) + "^2"),
                         "functions nested more than 4 deep"),
    "1000 chained lets": (BASE + "let a0[i] = v[i]\n"
                          + "".join(f"let a{k}[i] = 2 * a{k - 1}[i]\n" for k in range(1, 1000))
                          + "free energy F(v) = sum(i: a999[i]^2)\n",
                          "is defined through a chain of more than 32 definitions"),
    "lets doubling in size": (BASE + "let a0[i] = v[i]\n"
                              + "".join(f"let a{k}[i] = a{k - 1}[i] + a{k - 1}[i]\n"
                                        for k in range(1, 20))
                              + "free energy F(v) = sum(i: a19[i]^2)\n", "is too large with"),
    "12 indices in scope": (BASE + "free energy F(v) = " + "".join(
        f"sum(i{k}: " for k in range(12)) + "*".join(f"v[i{k}]" for k in range(12)) + ")" * 12
        + "\n", "more than 10 indices are in scope"),
    # huge and tiny numbers
    "1e400": (_energy("1e400 * v[i]^2"), "number 1e400 is out of range"),
    "1e-400": (_energy("1e-400 * v[i]^2"), "number 1e-400 is too small"),
    "5000 digits": (_energy("9" * 5000 + " * v[i]^2"), "(5000 characters) is too long"),
    "5000-digit dimension": ("model M\ndim D = " + "9" * 5000 + "\n", "is too long"),
    "huge dimension": ("model M\ndim D = 1e300\n", "dimension 'D' is too large"),
    "10^400 constant": (BASE + "const c = 10^400\n", "this constant is out of range"),
    "tower of powers": (_energy("2^2^2^2^2^2 * v[i]^2"), "this power is out of floating-point"),
    "overflowing product": (_energy("1e300 * 1e300 * v[i]^2"), "out of floating-point range"),
    "huge exponent": (_energy("v[i]^1e20"), "exponent 100000000000000000000 is too large"),
    "division by zero": (_energy("v[i]^2 / 0"), "this expression is infinite or undefined"),
    "log of zero": (_energy("log(0) * v[i]^2"), "this expression is infinite or undefined"),
    "complex number": (_energy("sqrt(-1) * v[i]^2"), "this expression is not a real number"),
    "cancelled visible": (_energy("v[i] - v[i]"), "the energy does not depend on 'v' once"),
    # odd characters
    "lookalike letter": (_energy("\u0430 * v[i]^2"), "unexpected character '\u0430' (U+0430"),
    "Arabic-Indic digit": ("model M\ndim D = \u0663\n", "unexpected character"),
    "NUL byte": (BASE + "\0", "unexpected character '\\x00'"),
    "byte order mark": ("\ufeff" + BASE, "unexpected character '\\ufeff'"),
    "lone surrogate": (_energy("v[i]^2 \ud800"), "unexpected character '\\ud800'"),
    "escape sequence": (BASE + "free energy F(v) = \x1b[31m\n", "unexpected character '\\x1b'"),
    "empty file": ("", "unexpected end of file; expected 'model'"),
    "only a comment": ("# nothing here\n", "unexpected end of file; expected 'model'"),
}


@pytest.mark.parametrize("name", list(FIXED))
def test_fixed_cases(name: str) -> None:
    text, expected = FIXED[name]
    assert expected in first_error(text)


def test_very_long_files_compile() -> None:
    """10,000 `let` lines and a 1 MB comment are fine, and quick."""
    lets = "".join(f"let a{k} = {k}\n" for k in range(10_000))
    compiled = compile_or_error(BASE + lets + "free energy F(v) = 1/2 * sum(i: v[i]^2)\n")
    assert isinstance(compiled, Compiled)
    compiled = compile_or_error(BASE + "#" + "x" * 1_000_000 + "\n"
                                + "free energy F(v) = 1/2 * sum(i: v[i]^2)\n")
    assert isinstance(compiled, Compiled)


def test_whitespace_variants_compile_to_the_same_module() -> None:
    """CRLF line endings, tabs and form feeds are whitespace: same module."""
    text = SPEC_TEXTS["gbrbm.edsl"]
    expected = compile_source(text, PATH).source
    for variant in (text.replace("\n", "\r\n"), text.replace(" ", "\t"),
                    text.replace("\n", "\n\f")):
        assert compile_source(variant, PATH).source == expected


def test_error_after_a_form_feed_points_at_the_right_line() -> None:
    """Lines are counted at newlines only: a form feed (whitespace to the parser) must
    not shift the line shown under the message."""
    text = "model M\f\ndim D = 3\nvisible v : real[D]\nfree energy F(v) = sum(i: v[i] $)\n"
    head, shown, caret = first_error(text).split("\n")
    assert head.startswith(f"{PATH}:4:")
    assert shown.strip().startswith("free energy F(v)")


# ---------------------------------------------------------------------------- the CLI

def _cli_cases() -> dict[str, str]:
    """Failing specs for the CLI: some fixed cases and seeded mutations of every spec."""
    cases = {f"fixed_{k}": FIXED[name][0] for k, name in enumerate(
        ["500 unary minus", "500 function calls", "1e400", "5000 digits", "tower of powers",
         "division by zero", "lookalike letter", "NUL byte", "empty file",
         "lets doubling in size"])}
    rng = random.Random(8)
    for name, text in SPEC_TEXTS.items():
        tokens = TOKEN_RE.findall(text)
        for k in range(3):
            kind = rng.choice(["delete", "duplicate", "swap", "truncate", "lookalike"])
            mutated = mutate(tokens, kind, rng.randrange(len(tokens)),
                             rng.randrange(len(tokens)), "")
            cases[f"{Path(name).stem}_{kind}_{k}"] = "".join(mutated)
    return cases


def test_cli_reports_every_failure_without_a_traceback(tmp_path: Path) -> None:
    """One `python -m energydsl compile` over many specs: exit status 1, and stderr holds
    exactly the in-process diagnostics of each failing spec, never a traceback."""
    expected = {}
    paths = []
    for name, text in _cli_cases().items():
        path = tmp_path / f"{name}.edsl"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        paths.append(str(path))
        result = compile_or_error(text)
        if isinstance(result, str):
            expected[str(path)] = result.replace(PATH, str(path))
    assert len(expected) >= 15
    process = subprocess.run([sys.executable, "-m", "energydsl", "compile", *paths, "-o",
                              str(tmp_path / "out")], capture_output=True, text=True,
                             timeout=300, cwd=ROOT)
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stderr and "internal error" not in process.stderr
    for diagnostics in expected.values():
        assert diagnostics in process.stderr
    failed = process.stderr.rstrip("\n").split("\n")[-1]
    assert failed.startswith(f"energydsl: {len(expected)} of {len(paths)} specs failed")


def test_cli_exit_status_for_one_deeply_nested_spec(tmp_path: Path) -> None:
    text = FIXED["500 function calls"][0]
    (tmp_path / "deep.edsl").write_text(text)
    process = subprocess.run([sys.executable, "-m", "energydsl", "compile", "deep.edsl",
                              "-o", "out"], capture_output=True, text=True, timeout=300,
                             cwd=tmp_path)
    assert process.returncode == 1
    assert process.stderr == first_error(text).replace(PATH, "deep.edsl") + "\n"
    assert not (tmp_path / "out").exists()
