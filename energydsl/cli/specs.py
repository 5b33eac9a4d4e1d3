"""`energydsl compile`, `check` and `show`: specs in, modules, reports and formulas out."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from energydsl import catalogue
from energydsl.cli.failures import EXIT_ERROR, EXIT_OK, Failure, err
from energydsl.errors import SpecError, UsageError

MAX_CHECK_SIZE = 64  # the check is exact: autograd per dimension, enumeration, quadrature


def _read(path: str) -> str:
    """The text of a spec argument: a file, or a shipped spec's name (energydsl.catalogue)."""
    from energydsl.compiler.sources import read_spec

    try:
        return read_spec(catalogue.resolve(path))
    except SpecError as exc:
        missing = not Path(path).exists()
        err(exc.format(path, None) + (catalogue.hint(path) if missing else ""))
        raise Failure from None


def _display_path(path: str) -> str:
    """The spec path as written into generated code: relative to the working directory
    when inside it, so recompiling from the project root is byte-identical; a shipped
    spec's name as given. Symbolic links are kept first (specs/ links to energydsl/specs,
    and the golden files name specs/), then resolved."""
    if catalogue.is_name(path):
        return path
    for spec, cwd in ((Path(os.path.abspath(path)), Path(os.getcwd())),
                      (Path(path).resolve(), Path.cwd().resolve())):
        try:
            return spec.relative_to(cwd).as_posix()
        except ValueError:
            pass
    return Path(path).resolve().name


# Names a generated module must not take: it would shadow them on import from its
# directory (Python's own modules, the packages energydsl and its users import).
_SHADOWED = frozenset(getattr(sys, "stdlib_module_names", ())) | {
    "torch", "numpy", "sympy", "lark", "jinja2", "matplotlib", "opt_einsum", "tqdm", "sklearn",
    "scipy", "energydsl", "generated", "setup", "conftest", "test", "tests"}


def module_name(spec_path: str) -> str:
    """<stem>.py for a spec, with the stem made a valid Python module name; UsageError
    when nothing of the stem is left or the name would shadow a module on import."""
    stem = Path(spec_path).stem.strip()
    name = "".join(c if c.isascii() and (c.isalnum() or c == "_") else "_" for c in stem)
    if not name.strip("_"):
        raise UsageError(f"{spec_path}: error: cannot name the generated module after this "
                         "file: its name has no ASCII letters or digits; rename the spec")
    if name[0].isdigit():
        name = f"model_{name}"
    if name.startswith("__") and name.endswith("__"):
        raise UsageError(f"{spec_path}: error: the generated module would be named "
                         f"'{name}.py', a name Python gives a special meaning; rename the spec")
    if name in _SHADOWED:
        raise UsageError(f"{spec_path}: error: the generated module would be named "
                         f"'{name}.py', which would shadow the module '{name}' when "
                         "imported; rename the spec")
    return name


def run_name(model: str) -> str:
    """The default run directory's name for a spec path or a model name."""
    stem = Path(model).stem
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in stem).strip("_") or "run"


def output_directory(text: str, flag: str = "-o") -> Path:
    """An output directory that exists and is writable, or can be created inside the
    nearest existing one (created only when something is written)."""
    path = Path(text)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {text}: error: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {text}: error: {existing} is not writable")
    return path


def _print_warnings(compiled, path: str, source: str) -> None:
    for warning in compiled.warnings:
        err(warning.format(path, source))


def _compile_spec(path: str, time_limit: float):
    from energydsl.compiler.driver import compile_source

    source = _read(path)
    try:
        compiled = compile_source(source, _display_path(path), time_limit=time_limit or None)
    except SpecError as exc:
        err(exc.format(path, source))
        raise Failure from None
    _print_warnings(compiled, path, source)
    return compiled


def _for_each(paths: Sequence[str], action: Callable[[str], None], what: str = "") -> int:
    """Run `action` on every spec, continuing past failures; name each failure. With
    `what`, a progress bar over several specs (on a terminal only)."""
    from energydsl.cli.progress import above_bars, bar

    failed = []
    shown = bar(paths, desc=what, unit="spec", disable=None if what and len(paths) > 1
                else True)
    with above_bars():
        for path in shown:
            try:
                action(path)
            except Failure:
                failed.append(path)
    if failed and len(paths) > 1:
        err(f"energydsl: {len(failed)} of {len(paths)} specs failed: {', '.join(failed)}")
    return EXIT_ERROR if failed else EXIT_OK


def cmd_compile(args: argparse.Namespace) -> int:
    from energydsl.files import write_atomically

    to_stdout = args.output == "-"
    if not to_stdout:
        names = {path: module_name(path) for path in args.specs}
        directory = output_directory(args.output)

    def action(path: str) -> None:
        compiled = _compile_spec(path, args.time_limit)
        if to_stdout:
            sys.stdout.write(compiled.source)
            return
        target = directory / f"{names[path]}.py"
        try:
            write_atomically(target, compiled.source)
        except OSError as exc:
            err(f"{target}: error: cannot write: {exc.strerror or exc}")
            raise Failure from None
        print(f"{path} -> {target} (class {compiled.derivation.name})")

    return _for_each(args.specs, action)


def cmd_check(args: argparse.Namespace) -> int:
    from energydsl.check.checks import check_compiled
    from energydsl.cli.progress import counter

    def action(path: str) -> None:
        compiled = _compile_spec(path, args.time_limit)
        problem = compiled.derivation.model.symbolic.checked.size_error(args.sizes)
        if problem:
            raise UsageError(f"{path}: error: --size: {problem}")
        for name, value in args.sizes.items():
            if value > MAX_CHECK_SIZE:
                raise UsageError(f"{path}: error: --size {name}={value}: the check is exact "
                                 f"(autograd per dimension, enumeration, quadrature); use "
                                 f"sizes of at most {MAX_CHECK_SIZE}")
        steps = counter(desc=path, unit=" check")

        def step(group: str) -> None:
            steps.set_postfix_str(group, refresh=False)
            steps.update()

        try:
            report = check_compiled(compiled, args.sizes, seed=args.seed,
                                    tolerance=args.tolerance, progress=step)
        except UsageError as exc:
            raise UsageError(f"{path}: error: {exc}") from None
        finally:
            steps.close()
        sizes = ", ".join(f"{k}={v}" for k, v in report.sizes.items())
        print(f"{path}: {report.model} at {sizes}, float64, against autograd on the "
              "spec's energy")
        print(report.table())
        if not report.ok:
            err(f"{path}: error: derived quantities disagree with the reference")
            raise Failure
        print(f"{path}: all {len(report.rows)} checks passed")

    return _for_each(args.specs, action, "check")


def cmd_show(args: argparse.Namespace) -> int:
    from energydsl.compiler.show import render

    def action(path: str) -> None:
        compiled = _compile_spec(path, args.time_limit)
        print(render(compiled.derivation, as_latex=args.latex))

    return _for_each(args.specs, action)


def cmd_specs(args: argparse.Namespace) -> int:
    """List the shipped specs, one line each, or print where they are (--path)."""
    folder = catalogue.directory()
    if args.path:
        print(folder)
        return EXIT_OK
    specs = catalogue.shipped()
    if not specs:
        err(f"energydsl: error: no shipped specs in {folder}: the installation is incomplete")
        return EXIT_ERROR
    width = max(map(len, specs))
    print(f"{len(specs)} specs shipped in {folder}:")
    for name, path in specs.items():
        print(f"  {name:<{width}}  {catalogue.description(path, 96 - width)}")
    print("A name goes wherever a spec file does: energydsl show dem, energydsl train dem; "
          "copy a file to edit it.")
    return EXIT_OK
