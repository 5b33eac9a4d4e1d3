"""The `energydsl` command line: compile, check and show specs.

The only module that prints. Exit status: 0 success, 1 a spec error or a failed
check, 2 a wrong command line, 3 an internal error (a bug). Heavy imports (torch,
SymPy) happen inside the handlers so `--help` answers at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from . import __version__
from .errors import SpecError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3

DESCRIPTION = """\
energydsl compiles an energy-based model written as a short spec (an energy E(v, h) with
its hidden units, or a free energy F(v)) into a self-contained PyTorch module. It
marginalises the hidden units and derives the free energy, score, Laplacian and exact
score-matching loss symbolically, and emits vectorised code for them.
"""

EPILOG = """\
examples:
  energydsl compile specs/gbrbm.edsl            write generated/gbrbm.py
  energydsl compile specs/*.edsl -o build/      compile several specs into build/
  energydsl check specs/gbrbm.edsl              compare derived quantities with autograd
  energydsl show specs/gbrbm.edsl --latex       print the derived formulas as LaTeX
"""


class _Failure(Exception):
    """A reported failure (already printed): exit with status 1."""


def _err(message: str) -> None:
    print(message, file=sys.stderr)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        _err(f"{path}: error: no such file")
    except IsADirectoryError:
        _err(f"{path}: error: is a directory, not a spec file")
    except UnicodeDecodeError as exc:
        _err(f"{path}: error: not UTF-8 text ({exc.reason} at byte {exc.start})")
    except OSError as exc:
        _err(f"{path}: error: cannot read: {exc.strerror}")
    raise _Failure


def _display_path(path: str) -> str:
    """The spec path as written into generated code: relative to the working directory
    when inside it, so recompiling from the project root is byte-identical."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.name


def module_name(spec_path: str) -> str:
    """generated/<stem>.py, with the stem made a valid Python module name."""
    stem = Path(spec_path).stem
    name = "".join(c if c.isalnum() or c == "_" else "_" for c in stem)
    if not name or name[0].isdigit():
        name = f"model_{name}"
    return name


def write_atomically(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _compile_spec(path: str):
    from .driver import compile_source

    source = _read(path)
    try:
        return compile_source(source, _display_path(path))
    except SpecError as exc:
        _err(exc.format(path, source))
        raise _Failure from None


def _for_each(paths: Sequence[str], action: Callable[[str], None]) -> int:
    """Run `action` on every spec, continuing past failures; name each failure."""
    failed = []
    for path in paths:
        try:
            action(path)
        except _Failure:
            failed.append(path)
    if failed and len(paths) > 1:
        _err(f"energydsl: {len(failed)} of {len(paths)} specs failed: {', '.join(failed)}")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    def action(path: str) -> None:
        compiled = _compile_spec(path)
        if args.output == "-":
            sys.stdout.write(compiled.source)
            return
        target = Path(args.output) / f"{module_name(path)}.py"
        write_atomically(target, compiled.source)
        print(f"{path} -> {target} (class {compiled.derivation.name})")

    return _for_each(args.specs, action)


def _parse_sizes(items: list[str]) -> dict[str, int]:
    sizes = {}
    for item in items:
        name, _, value = item.partition("=")
        if not name or not value.isdigit() or int(value) < 1:
            raise argparse.ArgumentTypeError(f"--size expects NAME=POSITIVE_INTEGER, got {item!r}")
        sizes[name] = int(value)
    return sizes


def cmd_check(args: argparse.Namespace) -> int:
    from .checking import check_compiled

    def action(path: str) -> None:
        compiled = _compile_spec(path)
        checked = compiled.derivation.model.symbolic.checked
        unknown = [n for n in args.sizes if n not in checked.dims]
        if unknown:
            _err(f"{path}: error: --size names unknown dimension '{unknown[0]}'")
            raise _Failure
        report = check_compiled(compiled, args.sizes, seed=args.seed,
                                tolerance=args.tolerance)
        sizes = ", ".join(f"{k}={v}" for k, v in report.sizes.items())
        print(f"{path}: {report.model} at {sizes}, float64, against autograd on the "
              "spec's energy")
        print(report.table())
        if not report.ok:
            _err(f"{path}: error: derived quantities disagree with the reference")
            raise _Failure
        print(f"{path}: all {len(report.rows)} checks passed")

    return _for_each(args.specs, action)


def cmd_show(args: argparse.Namespace) -> int:
    from .show import render

    def action(path: str) -> None:
        compiled = _compile_spec(path)
        print(render(compiled.derivation, as_latex=args.latex))

    return _for_each(args.specs, action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energydsl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"energydsl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "compile", help="compile specs into PyTorch modules",
        description="Compile each spec into DIR/<spec name>.py. Output files are written "
                    "atomically; a spec with errors writes nothing.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (.edsl)")
    p.add_argument("-o", "--output", default="generated", metavar="DIR",
                   help="output directory (default: generated; '-' prints to stdout)")
    p.set_defaults(handler=cmd_compile)

    p = commands.add_parser(
        "check", help="check derived quantities against autograd",
        description="Compile each spec, then compare the generated free energy, score, "
                    "Laplacian, score-matching loss and its parameter gradients with "
                    "autograd on the spec's own energy (hidden units enumerated or "
                    "integrated numerically), in float64 at small sizes. Exit status 1 "
                    "on any mismatch.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (.edsl)")
    p.add_argument("--size", dest="size_items", action="append", default=[],
                   metavar="NAME=N", help="override a dimension for the check (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--tolerance", type=float, default=1e-7,
                   help="relative tolerance (default 1e-7)")
    p.set_defaults(handler=cmd_check)

    p = commands.add_parser(
        "show", help="print the derived formulas",
        description="Print the energy, free energy, score, Laplacian and score-matching "
                    "objective derived from a spec, in the spec's notation or as LaTeX.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (.edsl)")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of spec notation")
    p.set_defaults(handler=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if hasattr(args, "size_items"):
        try:
            args.sizes = _parse_sizes(args.size_items)
        except argparse.ArgumentTypeError as exc:
            parser.error(str(exc))
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _err("energydsl: interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # noqa: BLE001 - anything else is our bug, not the user's
        _err("energydsl: internal error: this is a bug in energydsl, not in your spec.\n"
             "Please report it with the spec and this trace:\n" + traceback.format_exc())
        return EXIT_BUG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
