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
from .errors import DEFAULT_TIME_LIMIT, SpecError

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
  energydsl train specs/gbrbm.edsl --objective pcd --epochs 5 --out runs/gbrbm
  energydsl train realnvp --epochs 5 --out runs/realnvp   a companion model
  energydsl sample runs/gbrbm -n 64                        samples as an image grid
  energydsl report runs/gbrbm                              plots and index.md
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


def _compile_spec(path: str, time_limit: float):
    from .driver import compile_source

    source = _read(path)
    try:
        return compile_source(source, _display_path(path), time_limit=time_limit or None)
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
        compiled = _compile_spec(path, args.time_limit)
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
        compiled = _compile_spec(path, args.time_limit)
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
        compiled = _compile_spec(path, args.time_limit)
        print(render(compiled.derivation, as_latex=args.latex))

    return _for_each(args.specs, action)


def _add_time_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-limit", type=float, default=DEFAULT_TIME_LIMIT, metavar="SECONDS",
                   help=f"give up compiling a spec after this long, with an error (default "
                        f"{DEFAULT_TIME_LIMIT:g}; 0: no limit)")


def _parse_options(items: list[str]) -> dict[str, float]:
    options = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            options[name] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--option expects NAME=NUMBER, got {item!r}") from None
    return options


def cmd_train(args: argparse.Namespace) -> int:
    from .training import RunConfig, TrainingError, train

    config = RunConfig(model=args.model, data=args.data, objective=args.objective,
                       epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       seed=args.seed, sizes=args.sizes, options=args.options,
                       detect_anomaly=args.detect_anomaly)
    out = Path(args.out or Path("runs") / module_name(args.model))
    try:
        train(config, out, resume=args.resume)
    except TrainingError as exc:
        _err(str(exc))
        return EXIT_ERROR
    except SpecError as exc:
        _err(exc.format(args.model, Path(args.model).read_text(encoding="utf-8")))
        return EXIT_ERROR
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks
        print(f"checkpoint: {out / 'checkpoint.pt'}")
    return EXIT_OK


def cmd_sample(args: argparse.Namespace) -> int:
    from .report import draw_samples, image_grid
    from .training import CHECKPOINT, TrainingError, load_checkpoint, model_from_checkpoint

    target = Path(args.checkpoint)
    path = target / CHECKPOINT if target.is_dir() else target
    try:
        model, config, prepared = model_from_checkpoint(load_checkpoint(path), path)
    except TrainingError as exc:
        _err(str(exc))
        return EXIT_ERROR
    model.eval()
    samples = draw_samples(model, prepared, args.n, args.steps, args.method, args.seed)
    output = Path(args.output or path.parent / "samples.png")
    output.parent.mkdir(parents=True, exist_ok=True)
    image_grid(samples, prepared.shape, output, f"{args.n} samples of {config.model}")
    print(f"{args.n} samples -> {output}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    from .training import TrainingError

    try:
        out = write_report(Path(args.run), steps=args.steps)
    except TrainingError as exc:
        _err(str(exc))
        return EXIT_ERROR
    print(f"report -> {out / 'index.md'}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import ENTRIES, compare, table
    from .training import TrainingError

    out = Path(args.out)
    entries = ENTRIES[:args.limit] if args.limit else ENTRIES
    try:
        rows = compare(out, entries, epochs=args.epochs, ais_chains=args.ais_chains,
                       ais_temperatures=args.ais_temperatures, seed=args.seed)
    except TrainingError as exc:
        _err(str(exc))
        return EXIT_ERROR
    text = table(rows)
    header = ("Held-out log-likelihood of the digits test split (270 images, 8x8), "
              "per image; continuous models through the dequantisation bound, binarised "
              f"models on the binarised digits. Command: `energydsl compare"
              f"{'' if args.epochs is None else f' --epochs {args.epochs}'}`.\n\n")
    write_atomically(out / "RESULTS.md", header + text + "\n")
    print(text)
    print(f"table -> {out / 'RESULTS.md'}")
    return EXIT_OK


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
                   metavar="NAME=N", help="override a dimension for the check (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--tolerance", type=float, default=1e-7,
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
                    "name such as vae, realnvp, made, gan) on a dataset. Shows a progress "
                    "bar, prints train and validation loss per epoch, and writes "
                    "OUT/checkpoint.pt atomically after every epoch (with the spec's hash) "
                    "and OUT/history.json. Deterministic for a fixed --seed. Runs unchanged "
                    "under torchrun --nproc_per_node=N (DistributedDataParallel).")
    p.add_argument("model", metavar="MODEL", help="a spec (.edsl) or a companion model name")
    p.add_argument("--data", default="digits",
                   help="dataset: digits (default), patches (8x8 grey patches of "
                        "scikit-learn's photos), or mnist:DIR (the IDX files in DIR)")
    p.add_argument("--objective", default=None,
                   choices=["sm", "dsm", "ssm", "nce", "cnce", "cd", "pcd", "fpcd", "mle"],
                   help="estimator for a spec (default sm); companion models use their own")
    p.add_argument("--epochs", type=int, default=5, help="epochs (default 5)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="global batch size (default 64)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--size", dest="size_items", action="append", default=[],
                   metavar="NAME=N", help="a spec dimension or model argument (repeatable)")
    p.add_argument("--option", dest="option_items", action="append", default=[],
                   metavar="NAME=X",
                   help="an estimator option, e.g. noise_std=0.3, k=5, nu=10 (repeatable)")
    p.add_argument("--out", default=None, help="run directory (default runs/<model>)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--detect-anomaly", action="store_true",
                   help="torch.autograd anomaly detection, to find where a NaN appears")
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser(
        "sample", help="draw samples from a trained model as an image grid",
        description="Draw samples from the model in CHECKPOINT (a checkpoint.pt or its "
                    "run directory): exact where the model allows (Gaussians, small RBMs, "
                    "flows, autoregressive models), else block Gibbs on the derived "
                    "conditionals or MALA on the derived score. Writes a PNG grid.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("-n", type=int, default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=int, default=500, help="MCMC steps when needed (500)")
    p.add_argument("--method", default="auto", choices=["auto", "gibbs", "mala", "hmc",
                                                        "langevin"],
                   help="sampler (default auto: exact, else Gibbs, else MALA)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default=None, help="PNG path (default RUN/samples.png)")
    p.set_defaults(handler=cmd_sample)

    p = commands.add_parser(
        "report", help="plots of a training run with an index.md",
        description="Write RUN/report/: loss curves, samples, learned filters, the three "
                    "score-matching terms of latent models over training, and for the "
                    "masked Gaussian its precision against the empirical one.")
    p.add_argument("run", metavar="CHECKPOINT_OR_RUN")
    p.add_argument("--steps", type=int, default=500, help="MCMC steps for the samples")
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
    p.add_argument("--epochs", type=int, default=None,
                   help="override every model's epoch budget (e.g. 1 for a smoke run)")
    p.add_argument("--limit", type=int, default=None, help="only the first N models")
    p.add_argument("--ais-chains", type=int, default=200, help="AIS chains (default 200)")
    p.add_argument("--ais-temperatures", type=int, default=500,
                   help="AIS temperatures (default 500)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(handler=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "size_items"):
            args.sizes = _parse_sizes(args.size_items)
        if hasattr(args, "option_items"):
            args.options = _parse_options(args.option_items)
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
