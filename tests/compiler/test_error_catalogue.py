"""The error catalogue, docs/errors.md: every example fails with exactly the message shown,
every entry says how to fix it, and every error the compiler can raise for a spec has an entry.

After a deliberate change to a message,
`pytest tests/compiler/test_error_catalogue.py --update-golden` rewrites the catalogue's
message blocks from the compiler (then read the diff).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from energydsl.compiler.driver import compile_source
from energydsl.errors import DEFAULT_TIME_LIMIT, MAX_SPEC_CHARS, SpecError

from support import ROOT

CATALOGUE = ROOT / "docs" / "errors.md"
EXAMPLE_PATH = "example.edsl"  # every message block is printed as for a file of this name

# The compiler stages whose `error(...)` / `self.fail(...)` calls report mistakes in a spec.
STAGES = ("parse", "resolve", "resolve_params", "names", "constants", "limits", "lower",
          "marginalise", "driver",
          "domains/discrete", "domains/continuous")
ERROR_FUNCTIONS = {"error", "fail", "UnitFailure"}
MIN_FRAGMENT = 8  # call sites whose literal parts are all shorter are not checked

# Call sites no spec can reach, as (module, longest literal fragment of the message): each
# is a guard kept for safety. The completeness test fails when one of them gains an example
# (remove it here then) or no longer exists.
EXEMPT = {
    # Lark's LALR parser raises only UnexpectedCharacters and UnexpectedToken (UnexpectedEOF
    # is the Earley parser's); this is the fallback for any other UnexpectedInput.
    ("parse", "syntax error: "),
    # The grammar's NAME token is ASCII letters, digits and '_', and a leading '_' is
    # refused first, so every name that parses matches IDENTIFIER.
    ("names", ": names are ASCII letters, digits and '_', starting with a letter"),
    # The exponent was folded and checked as an expression of its own first ("this
    # expression is not a real number").
    ("lower", "this exponent is not a real number"),
    # After the unit's index is substituted and the unit replaced by a symbol, no indexed
    # use of that unit is left to find.
    ("marginalise", "cannot marginalise '"),
    # Catch-alls for a SymPy exception while splitting the energy into units or deriving a
    # unit's sum or integral: no spec found that makes SymPy raise there.
    ("marginalise", "cannot marginalise the hidden variables: SymPy could not split the "
                    "energy into per-unit terms ("),
    ("marginalise", "': SymPy could not derive the sum or integral over it of exp(-("),
    # A Gamma-type integral whose power of h is 1 or more is reported as divergent before
    # SymPy sees it; for the others SymPy's condition is never one that simplifies to false.
    ("marginalise", "the integral over hidden variable '"),
}


# ---------------------------------------------------------------------------- the catalogue
@dataclass
class Entry:
    number: str  # "3.2"
    title: str
    line: int  # of the heading, 1-based
    spec: str
    message: str
    message_lines: tuple[int, int]  # the message block's content, as a slice of the lines
    fixes: list[str]


_HEADING = re.compile(r"### (\d+\.\d+) (.+)")


def parse_catalogue(text: str) -> list[Entry]:
    """The `### N.M Title` entries, each with its first ```edsl and ```text blocks and its
    lines starting 'Fix:'."""
    lines = text.split("\n")
    entries: list[Entry] = []
    current: dict | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):  # any heading ends the entry before it
            current = None
            heading = _HEADING.fullmatch(line)
            if heading:
                current = {"number": heading[1], "title": heading[2], "line": index + 1,
                           "edsl": None, "text": None, "fixes": []}
                entries.append(current)  # type: ignore[arg-type]
        elif line.startswith("```") and line != "```":
            kind, start = line[3:], index + 1
            index = lines.index("```", start)  # the closing fence
            if current is not None and kind in ("edsl", "text") and current[kind] is None:
                current[kind] = (start, index)
        elif current is not None and line.startswith("Fix:"):
            current["fixes"].append(line)
        index += 1
    result = []
    for raw in entries:
        assert raw["edsl"] and raw["text"], f"entry {raw['number']} lacks an edsl or text block"
        spec_start, spec_end = raw["edsl"]
        text_start, text_end = raw["text"]
        result.append(Entry(raw["number"], raw["title"], raw["line"],
                            "\n".join(lines[spec_start:spec_end]) + "\n",
                            "\n".join(lines[text_start:text_end]),
                            (text_start, text_end), raw["fixes"]))
    return result


ENTRIES = parse_catalogue(CATALOGUE.read_text(encoding="utf-8"))


# Entries shown with `--time-limit`: their examples would take minutes without one.
TIME_LIMITS = {"Compile takes longer than the time limit": 1.0}
# Entries whose example is too large to print: the spec shown, then what the entry says
# follows it.
EXTENDED = {"Spec longer than the size limit": "#" + "x" * MAX_SPEC_CHARS + "\n"}


def compiler_message(entry: Entry) -> str:
    """What energydsl prints for the entry's spec in a file named example.edsl."""
    spec = entry.spec + EXTENDED.get(entry.title, "")
    try:
        compile_source(spec, EXAMPLE_PATH,
                       time_limit=TIME_LIMITS.get(entry.title, DEFAULT_TIME_LIMIT))
    except SpecError as exc:
        return exc.format(EXAMPLE_PATH, spec)
    raise AssertionError(f"entry {entry.number} ({entry.title}): the example compiles")


_HEAD = re.compile(rf"{re.escape(EXAMPLE_PATH)}(?::\d+:\d+)?: error: (.*)")


def catalogue_messages() -> list[str]:
    """The message of every diagnostic in the catalogue (the part after 'error: ')."""
    return [head[1] for entry in ENTRIES for line in entry.message.split("\n")
            if (head := _HEAD.fullmatch(line))]


# ---------------------------------------------------------------------------- the compiler
@dataclass(frozen=True)
class CallSite:
    module: str
    line: int
    fragments: tuple[str, ...]  # the message template's literal parts, in order

    @property
    def key(self) -> tuple[str, str]:
        return self.module, max(self.fragments, key=len)

    def pattern(self) -> re.Pattern:
        """The whole template, its interpolated parts matching anything."""
        return re.compile("(.*)".join(map(re.escape, self.fragments)), re.DOTALL)


def _fragments(node: ast.expr) -> list[str | None]:
    """The literal parts of a message expression, None for each interpolated part."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [part for value in node.values for part in _fragments(value)]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _fragments(node.left) + _fragments(node.right)
    return [None]


def error_call_sites() -> list[CallSite]:
    """Every `error(MESSAGE, ...)`, `fail(MESSAGE, ...)` and `self.fail(MESSAGE, ...)` in the
    compiler stages, with its message template."""
    sites = []
    for module in STAGES:
        path = ROOT / "energydsl" / "compiler" / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and node.args):
                continue
            func = node.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
            if name not in ERROR_FUNCTIONS:
                continue
            parts, literal = [], ""
            for part in _fragments(node.args[0]):  # merge adjacent literals
                if part is None:
                    parts.append(literal)
                    literal = ""
                else:
                    literal += part
            parts.append(literal)
            if max(map(len, parts)) >= MIN_FRAGMENT:
                sites.append(CallSite(module, node.lineno, tuple(parts)))
    return sites


# ---------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("entry", ENTRIES, ids=[f"{e.number} {e.title}" for e in ENTRIES])
def test_example_prints_the_message_shown(entry, update_golden):
    if update_golden:
        pytest.skip("rewriting the catalogue instead (test_update_catalogue)")
    assert compiler_message(entry) == entry.message, \
        f"docs/errors.md:{entry.line}: entry {entry.number} ({entry.title}); if the message " \
        "changed on purpose, rerun with --update-golden"


def test_every_entry_says_how_to_fix_it():
    assert len(ENTRIES) >= 50
    for entry in ENTRIES:
        assert entry.fixes and all(len(fix) > len("Fix: ") + 3 for fix in entry.fixes), \
            f"entry {entry.number} ({entry.title}) has no 'Fix:' line"


def test_entries_are_numbered_listed_and_distinct():
    text = CATALOGUE.read_text(encoding="utf-8")
    contents = text.split("\n## Contents\n", 1)[1].split("\n## ", 1)[0]
    numbers = [tuple(map(int, e.number.split("."))) for e in ENTRIES]
    assert numbers == sorted(set(numbers))
    for entry in ENTRIES:
        assert f"[{entry.number} {entry.title}](#" in contents, f"{entry.number} not in Contents"
    messages = [entry.message for entry in ENTRIES]
    assert len(set(messages)) == len(messages), "two entries show the same message"


def test_every_error_of_the_compiler_has_an_entry(update_golden):
    """Each call site's longest literal fragment appears in a catalogue message, and its whole
    template matches one; EXEMPT lists exactly the sites no spec reaches."""
    if update_golden:
        pytest.skip("the catalogue is being rewritten")
    messages = catalogue_messages()
    sites = error_call_sites()
    assert len(sites) > 80  # the parse found the call sites
    missing, stale = [], []
    for site in sites:
        longest = max(site.fragments, key=len)
        covered = any(longest in message for message in messages) and any(
            site.pattern().fullmatch(message) for message in messages)
        if site.key in EXEMPT:
            if covered:
                stale.append(site)
        elif not covered:
            missing.append(site)
    assert not missing, "errors without a catalogue entry (add one to docs/errors.md):\n" + \
        "\n".join(f"  energydsl/compiler/{s.module}.py:{s.line}: {'...'.join(s.fragments)}"
                  for s in missing)
    assert not stale, "exempt errors that now have an entry (remove them from EXEMPT):\n" + \
        "\n".join(f"  energydsl/compiler/{s.module}.py:{s.line}" for s in stale)
    unknown = EXEMPT - {site.key for site in sites}
    assert not unknown, f"EXEMPT names call sites that no longer exist: {sorted(unknown)}"


def test_update_catalogue(update_golden):
    """With --update-golden: rewrite every message block from the compiler."""
    if not update_golden:
        pytest.skip("only with --update-golden")
    lines = CATALOGUE.read_text(encoding="utf-8").split("\n")
    for entry in reversed(ENTRIES):  # from the end, so earlier line numbers stay valid
        start, end = entry.message_lines
        lines[start:end] = compiler_message(entry).split("\n")
    Path(CATALOGUE).write_text("\n".join(lines), encoding="utf-8")
