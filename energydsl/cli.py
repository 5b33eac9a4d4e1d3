"""The `energydsl` command line: compile, check and show specs; train, sample, report
and compare models.

The only module that prints. Exit status: 0 success, 1 a spec error, a failed check or a
run that could not go on, 2 a wrong command line (a bad flag value, an unusable output
path, an option the objective does not take), 3 an internal error (a bug). Heavy imports
(torch, SymPy) happen inside the handlers so `--help` answers at once. SIGTERM exits like
Ctrl-C, so no half-written file is left behind.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from energydsl import __version__
from energydsl.errors import DEFAULT_TIME_LIMIT, SpecError, TrainingError, UsageError
from energydsl.estimators import NAMES as ESTIMATORS

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
MAX_TIME_LIMIT = 1e6  # seconds (the timer takes no more)
MAX_CHECK_SIZE = 64  # the check is exact: autograd per dimension, enumeration, quadrature
MAX_SAMPLES = 10_000  # images in one sample grid

DESCRIPTION = """\
energydsl compiles an energy-based model written as a short spec (an energy E(v, h) with
its hidden units, or a free energy F(v)) into a self-contained PyTorch module. It
marginalises the hidden units and derives the free energy, score, Laplacian and exact
score-matching loss symbolically, and emits vectorised code for them. It also trains the
compiled models (and a companion library of VAEs, GANs, flows and autoregressive models)
on data, samples from them, and writes reports and comparison tables.
"""

EPILOG = """\
examples:
  energydsl compile specs/gbrbm.edsl            write generated/gbrbm.py
  energydsl compile specs/*.edsl -o build/      compile several specs into build/
  energydsl check specs/gbrbm.edsl              compare derived quantities with autograd
  energydsl show specs/gbrbm.edsl --latex       print the derived formulas as LaTeX
  energydsl train specs/gbrbm.edsl --objective pcd --epochs 5 --out runs/gbrbm
  energydsl train realnvp --epochs 5 --out runs/realnvp   a companion model
  energydsl sample runs/gbrbm -n 64                        samples as an image grid
  energydsl report runs/gbrbm                              plots and index.md

exit status: 0 ok, 1 spec error / failed check / failed run, 2 wrong arguments, 3 a bug
"""


class _Failure(Exception):
    """A reported failure (already printed): exit with status 1."""


def _err(message: str) -> None:
    print(message, file=sys.stderr)


# ---------------------------------------------------------------- argument types


def _number(text: str, kind: type, low: float, high: float, what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (low <= value <= high) or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return int(_number(text, int, 1, 2**63 - 1, "a positive integer"))


def seed(text: str) -> int:
    return int(_number(text, int, 0, 2**31 - 1, "an integer in [0, 2^31)"))


def positive_float(text: str) -> float:
    return float(_number(text, float, sys.float_info.min, math.inf, "a positive number"))


def time_limit(text: str) -> float:
    return float(_number(text, float, 0, MAX_TIME_LIMIT,
                         f"seconds between 0 (no limit) and {MAX_TIME_LIMIT:g}"))


def _parse_assignments(items: list[str], flag: str, kind: type) -> dict:
    """NAME=VALUE pairs of --size (positive integers) or --option (finite numbers)."""
    found = {}
    expected = "POSITIVE_INTEGER" if kind is int else "NUMBER"
    for item in items:
        name, _, text = item.partition("=")
        try:
            if not name.isidentifier():
                raise argparse.ArgumentTypeError
            found[name] = positive_int(text) if kind is int else _number(
                text, float, -math.inf, math.inf, "a finite number")
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{flag} expects NAME={expected}, got "
                                             f"{item!r}") from None
    return found


# ---------------------------------------------------------------- specs


def _read(path: str) -> str:
    from energydsl.compiler.sources import read_spec

    try:
        return read_spec(path)
    except SpecError as exc:
        _err(exc.format(path, None))
        raise _Failure from None


def _display_path(path: str) -> str:
    """The spec path as written into generated code: relative to the working directory
    when inside it, so recompiling from the project root is byte-identical."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return resolved.name


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


def _output_directory(text: str, flag: str = "-o") -> Path:
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
        _err(warning.format(path, source))


def _compile_spec(path: str, time_limit: float):
    from energydsl.compiler.driver import compile_source

    source = _read(path)
    try:
        compiled = compile_source(source, _display_path(path), time_limit=time_limit or None)
    except SpecError as exc:
        _err(exc.format(path, source))
        raise _Failure from None
    _print_warnings(compiled, path, source)
    return compiled


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
    from energydsl.files import write_atomically

    to_stdout = args.output == "-"
    if not to_stdout:
        names = {path: module_name(path) for path in args.specs}
        directory = _output_directory(args.output)

    def action(path: str) -> None:
        compiled = _compile_spec(path, args.time_limit)
        if to_stdout:
            sys.stdout.write(compiled.source)
            return
        target = directory / f"{names[path]}.py"
        try:
            write_atomically(target, compiled.source)
        except OSError as exc:
            _err(f"{target}: error: cannot write: {exc.strerror or exc}")
            raise _Failure from None
        print(f"{path} -> {target} (class {compiled.derivation.name})")

    return _for_each(args.specs, action)


def cmd_check(args: argparse.Namespace) -> int:
    from energydsl.check.checks import check_compiled

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
        try:
            report = check_compiled(compiled, args.sizes, seed=args.seed,
                                    tolerance=args.tolerance)
        except UsageError as exc:
            raise UsageError(f"{path}: error: {exc}") from None
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
    from energydsl.compiler.show import render

    def action(path: str) -> None:
        compiled = _compile_spec(path, args.time_limit)
        print(render(compiled.derivation, as_latex=args.latex))

    return _for_each(args.specs, action)


# ---------------------------------------------------------------- runs


def cmd_train(args: argparse.Namespace) -> int:
    from energydsl.train.loop import RunConfig, resumed_config, train

    given = {"data": args.data, "objective": args.objective, "epochs": args.epochs,
             "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
             "max_pixels": args.max_pixels}
    given = {k: v for k, v in given.items() if v is not None}
    if args.size_items:
        given["sizes"] = args.sizes
    if args.option_items:
        given["options"] = args.options
    if args.detect_anomaly:
        given["detect_anomaly"] = True
    out = Path(args.out or Path("runs") / run_name(args.model))
    try:
        config = resumed_config(out, given) if args.resume else None
        if config is not None and config.model != args.model:
            raise UsageError(f"{out}: error: this run trained {config.model}, not "
                             f"{args.model}; use another --out")
        config = config or RunConfig(model=args.model, **given)
        train(config, out, resume=args.resume, overwrite=args.overwrite)
    except SpecError as exc:
        from energydsl.compiler.sources import read_spec_or_none

        _err(exc.format(args.model, read_spec_or_none(args.model)))
        return EXIT_ERROR
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"checkpoint: {out / 'checkpoint.pt'}")
    return EXIT_OK


def _image_path(text: str) -> Path:
    """-o for an image: a format matplotlib writes, in a directory that can exist."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(text)
    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise UsageError(f"-o {text}: error: unknown image format '{path.suffix or '(none)'}'"
                         f"; use one of {', '.join('.' + f for f in sorted(formats))}")
    if path.exists() and path.is_dir():
        raise UsageError(f"-o {text}: error: is a directory")
    _output_directory(str(path.parent))
    return path


def cmd_sample(args: argparse.Namespace) -> int:
    from energydsl.train.loop import CHECKPOINT, load_checkpoint, model_from_checkpoint
    from energydsl.train.report import draw_samples, image_grid

    output = _image_path(args.output) if args.output else None
    target = Path(args.checkpoint)
    path = target / CHECKPOINT if target.is_dir() else target
    model, config, data_map = model_from_checkpoint(load_checkpoint(path), path)
    model.eval()
    samples = draw_samples(model, data_map, args.n, args.steps, args.method, args.seed)
    output = output or path.parent / "samples.png"
    image_grid(samples, data_map.shape, output, f"{args.n} samples of {config.model}")
    print(f"{args.n} samples -> {output}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from energydsl.train.report import write_report

    out = write_report(Path(args.run), steps=args.steps)
    print(f"report -> {out / 'index.md'}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from energydsl.files import write_atomically
    from energydsl.train.compare import ENTRIES, compare, table

    out = _output_directory(args.out, "--out")
    entries = ENTRIES[:args.limit] if args.limit else ENTRIES
    rows = compare(out, entries, epochs=args.epochs, ais_chains=args.ais_chains,
                   ais_temperatures=args.ais_temperatures, seed=args.seed)
    text = table(rows)
    header = ("Held-out log-likelihood of the digits test split (270 images, 8x8), "
              "per image; continuous models through the dequantisation bound, binarised "
              f"models on the binarised digits. Command: `energydsl compare"
              f"{'' if args.epochs is None else f' --epochs {args.epochs}'}`.\n\n")
    write_atomically(out / "RESULTS.md", header + text + "\n")
    print(text)
    print(f"table -> {out / 'RESULTS.md'}")
    return EXIT_OK


# ---------------------------------------------------------------- the parser


def _add_time_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-limit", type=time_limit, default=DEFAULT_TIME_LIMIT,
                   metavar="SECONDS",
                   help=f"give up compiling a spec after this long, with an error (default "
                        f"{DEFAULT_TIME_LIMIT:g}; 0: no limit)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="energydsl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"energydsl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "compile", help="compile specs into PyTorch modules",
        description="Compile each spec into DIR/<spec name>.py. Output files are written "
                    "atomically; a spec with errors writes nothing. Models that the "
                    "compiler can see are not normalisable get a warning.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (.edsl)")
    p.add_argument("-o", "--output", default="generated", metavar="DIR",
                   help="output directory (default: generated; '-' prints to stdout)")
    _add_time_limit(p)
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
                   metavar="NAME=N",
                   help=f"override a dimension for the check, at most {MAX_CHECK_SIZE} "
                        "(repeatable)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("--tolerance", type=positive_float, default=1e-7,
                   help="relative tolerance (default 1e-7)")
    _add_time_limit(p)
    p.set_defaults(handler=cmd_check)

    p = commands.add_parser(
        "show", help="print the derived formulas",
        description="Print the energy, free energy, score, Laplacian and score-matching "
                    "objective derived from a spec, in the spec's notation or as LaTeX.")
    p.add_argument("specs", nargs="+", metavar="SPEC", help="spec files (.edsl)")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of spec notation")
    _add_time_limit(p)
    p.set_defaults(handler=cmd_show)

    p = commands.add_parser(
        "train", help="train a spec or a companion model on data",
        description="Train MODEL (a spec file, compiled in memory, or a companion model "
                    "name such as vae, realnvp, made, gan) on a dataset. Checks every "
                    "argument and tries the objective once before training. Shows a "
                    "progress bar, prints train and validation loss per epoch, and writes "
                    "OUT/checkpoint.pt atomically after every epoch (plain data, safe to "
                    "share) and OUT/history.json. Stops on a non-finite or diverging loss "
                    "keeping the last good checkpoint. Deterministic for a fixed --seed. "
                    "Runs unchanged under torchrun --nproc_per_node=N "
                    "(DistributedDataParallel). With --resume, the run's own settings are "
                    "kept; --lr and --epochs may change.")
    p.add_argument("model", metavar="MODEL", help="a spec (.edsl) or a companion model name")
    p.add_argument("--data", default=None,
                   help="dataset: digits (default), patches (8x8 grey patches of "
                        "scikit-learn's photos), or mnist:DIR (the IDX files in DIR)")
    p.add_argument("--objective", default=None,
                   choices=ESTIMATORS,
                   help="estimator for a spec (default sm); companion models use their own")
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="global batch size (default 64)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=seed, default=None, help="random seed (default 0)")
    p.add_argument("--size", dest="size_items", action="append", default=[],
                   metavar="NAME=N", help="a spec dimension or model argument (repeatable)")
    p.add_argument("--option", dest="option_items", action="append", default=[],
                   metavar="NAME=X",
                   help="an estimator option, e.g. noise_std=0.3, k=5, nu=10 (repeatable)")
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="most image values read from IDX files (default 100,000,000)")
    p.add_argument("--out", default=None, help="run directory (default runs/<model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a run already in OUT (otherwise refused)")
    p.add_argument("--detect-anomaly", action="store_true",
                   help="torch.autograd anomaly detection, to find where a NaN appears")
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser(
        "sample", help="draw samples from a trained model as an image grid",
        description="Draw samples from the model in CHECKPOINT (a checkpoint.pt or its "
                    "run directory): exact where the model allows (Gaussians, small RBMs, "
                    "flows, autoregressive models), else block Gibbs on the derived "
                    "conditionals or MALA on the derived score. Writes an image grid.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("-n", type=lambda t: int(_number(t, int, 1, MAX_SAMPLES,
                                                    f"an integer in [1, {MAX_SAMPLES}]")),
                   default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=positive_int, default=500,
                   help="MCMC steps when needed (500)")
    p.add_argument("--method", default="auto", choices=["auto", "gibbs", "mala", "hmc",
                                                        "langevin"],
                   help="sampler (default auto: exact, else Gibbs, else MALA)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default=None,
                   help="image path, .png, .pdf, .svg, ... (default RUN/samples.png)")
    p.set_defaults(handler=cmd_sample)

    p = commands.add_parser(
        "report", help="plots of a training run with an index.md",
        description="Write RUN/report/: loss curves, samples, learned filters, the three "
                    "score-matching terms of latent models over training, and for the "
                    "masked Gaussian its precision against the empirical one.")
    p.add_argument("run", metavar="CHECKPOINT_OR_RUN")
    p.add_argument("--steps", type=positive_int, default=500,
                   help="MCMC steps for the samples")
    p.set_defaults(handler=cmd_report)

    p = commands.add_parser(
        "compare", help="train every model on the digits and tabulate held-out likelihood",
        description="Train each seed energy model (with its natural estimators) and each "
                    "companion model with a likelihood on the digits training split, with "
                    "fixed budgets, and write OUT/RESULTS.md: held-out log-likelihood in "
                    "nats and bits per dimension, exact where the model allows, by AIS "
                    "for the other energy models, the importance-weighted bound for the "
                    "VAE, with training times. Run from the project root (specs/).")
    p.add_argument("--out", default="runs/compare", help="directory (default runs/compare)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="override every model's epoch budget (e.g. 1 for a smoke run)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N models")
    p.add_argument("--ais-chains", type=positive_int, default=200,
                   help="AIS chains (default 200)")
    p.add_argument("--ais-temperatures", type=positive_int, default=500,
                   help="AIS temperatures (default 500)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.set_defaults(handler=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from energydsl.files import exit_on_sigterm

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "size_items"):
            args.sizes = _parse_assignments(args.size_items, "--size", int)
        if hasattr(args, "option_items"):
            args.options = _parse_assignments(args.option_items, "--option", float)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    exit_on_sigterm()
    try:
        return args.handler(args)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except TrainingError as exc:
        _err(str(exc))
        return EXIT_ERROR
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
