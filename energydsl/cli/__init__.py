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
import os
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from energydsl import __version__
from energydsl.cli.arguments import (
    finite,
    model_value,
    number,
    parse_assignments,
    positive_float,
    positive_int,
    seed,
    time_limit,
)
from energydsl.cli.failures import EXIT_BUG, EXIT_ERROR, EXIT_OK, EXIT_USAGE, err
from energydsl.cli.runs import cmd_compare, cmd_report, cmd_sample, cmd_train
from energydsl.cli.specs import MAX_CHECK_SIZE, cmd_check, cmd_compile, cmd_show, cmd_specs
from energydsl.errors import DEFAULT_TIME_LIMIT, TrainingError, UsageError
from energydsl.estimators import NAMES as ESTIMATORS

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
A SPEC is a .edsl file or the name of a spec shipped with energydsl (`energydsl specs`).

examples:
  energydsl specs                               list the shipped specs
  energydsl compile gbrbm                       write generated/gbrbm.py (a shipped spec)
  energydsl compile a.edsl b.edsl -o build/     compile spec files into build/
  energydsl check gbrbm                         compare derived quantities with autograd
  energydsl show gbrbm --latex                  print the derived formulas as LaTeX
  energydsl train gbrbm --objective pcd --epochs 5 --out runs/gbrbm
  energydsl train realnvp --epochs 5 --out runs/realnvp   a companion model
  energydsl sample runs/gbrbm -n 64                        samples as an image grid
  energydsl report runs/gbrbm                              plots and index.md

exit status: 0 ok, 1 spec error / failed check / failed run, 2 wrong arguments, 3 a bug
"""


def _add_time_limit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--time-limit", type=time_limit, default=DEFAULT_TIME_LIMIT,
                   metavar="SECONDS",
                   help=f"give up compiling a spec after this long, with an error (default "
                        f"{DEFAULT_TIME_LIMIT:g}; 0: no limit)")


def _add_device(p: argparse.ArgumentParser, text: str, default: str | None = "auto") -> None:
    p.add_argument("--device", default=default, metavar="DEVICE",
                   help=f"{text}: cpu, cuda, cuda:N, mps or auto")


def _objective_help() -> str:
    """--objective's help, from the registry: which estimators apply to which data."""
    from energydsl.estimators import all_estimators

    def named(data: str) -> str:
        return ", ".join(e.name for e in all_estimators() if e.data == data)

    return (f"estimator for a spec: {named('continuous')} for real data, {named('discrete')} "
            f"for binary or spin data, {named('any')} for both (default sm on real data, pl "
            "on binary or spin data); companion models use their own")


class _Parser(argparse.ArgumentParser):
    """A wrong command line is one line: what is wrong, and where the help is (argparse's
    usage block is what --help prints)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="energydsl", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"energydsl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     parser_class=_Parser)

    p = commands.add_parser(
        "compile", help="compile specs into PyTorch modules",
        description="Compile each spec into DIR/<spec name>.py. Output files are written "
                    "atomically; a spec with errors writes nothing. Models that the "
                    "compiler can see are not normalisable get a warning.")
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="spec files (.edsl) or shipped spec names")
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
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="spec files (.edsl) or shipped spec names")
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
    p.add_argument("specs", nargs="+", metavar="SPEC",
                   help="spec files (.edsl) or shipped spec names")
    p.add_argument("--latex", action="store_true", help="print LaTeX instead of spec notation")
    _add_time_limit(p)
    p.set_defaults(handler=cmd_show)

    p = commands.add_parser(
        "specs", help="list the specs shipped with energydsl",
        description="List the specs shipped inside the package, with a line from "
                    "each one's leading comment, and where they are. Their names can be "
                    "given wherever a spec file can (compile, check, show, train).")
    p.add_argument("--path", action="store_true",
                   help="print only the directory that holds them")
    p.set_defaults(handler=cmd_specs)

    p = commands.add_parser(
        "train", help="train a spec or a companion model on data",
        description="Train MODEL (a spec file or a shipped spec's name, compiled in "
                    "memory, or a companion model name such as vae, realnvp, made, gan) "
                    "on a dataset. Checks every "
                    "argument and tries the objective once before training. Shows a "
                    "progress bar, prints train and validation loss per epoch, and writes "
                    "OUT/checkpoint.pt atomically after every epoch (plain data, safe to "
                    "share) and OUT/history.json. Stops on a non-finite or diverging loss "
                    "keeping the last good checkpoint. Deterministic for a fixed --seed. "
                    "Runs unchanged under torchrun --nproc_per_node=N "
                    "(DistributedDataParallel). With --resume, the run's own settings are "
                    "kept; --lr and --epochs may change.")
    p.add_argument("model", metavar="MODEL",
                   help="a spec (.edsl), a shipped spec's name or a companion model name")
    p.add_argument("--data", default=None,
                   help="dataset: digits (default), patches (8x8 grey patches of "
                        "scikit-learn's photos), or mnist:DIR (the IDX files in DIR)")
    p.add_argument("--objective", default=None,
                   choices=ESTIMATORS,
                   help=_objective_help())
    p.add_argument("--epochs", type=positive_int, default=None, help="epochs (default 5)")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="global batch size (default 64)")
    p.add_argument("--lr", type=positive_float, default=None,
                   help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=seed, default=None, help="random seed (default 0)")
    p.add_argument("--size", dest="size_items", action="append", default=[],
                   metavar="NAME=VALUE",
                   help="a spec's dimension (a positive integer), or a companion model's "
                        "argument: a number, true/false, a list (hidden=256,256) or a word "
                        "(transform=spline) (repeatable)")
    p.set_defaults(size_value=model_value)
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
    _add_device(p, "the device to train on (default auto: cuda when present, else mps, "
                   "else cpu; a resumed run may move)", default=None)
    p.add_argument("--compile", action="store_true",
                   help="run the training step through torch.compile: the same values, "
                        "1.1-2.4x faster steps on the shipped models (bench/RESULTS.md), after "
                        "a first step that takes 1-30 s to compile (more on a busy machine)")
    p.add_argument("--conditional", action="store_true",
                   help="train a companion model of p(x | label) on the data's class labels "
                        "(digits, mnist): context_dim = the number of classes, one-hot "
                        "labels as the context; kept on --resume")
    p.set_defaults(handler=cmd_train)

    p = commands.add_parser(
        "sample", help="draw samples from a trained model as an image grid",
        description="Draw samples from the model in CHECKPOINT (a checkpoint.pt or its "
                    "run directory): exact where the model allows (Gaussians, small RBMs, "
                    "flows, autoregressive models), else block Gibbs on the derived "
                    "conditionals, or MALA on the derived score (real data) or single-entry "
                    "flips (binary or spin data). Writes an image grid.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("-n", type=lambda t: int(number(t, int, 1, MAX_SAMPLES,
                                                    f"an integer in [1, {MAX_SAMPLES}]")),
                   default=64, help="number of samples (default 64)")
    p.add_argument("--steps", type=positive_int, default=500,
                   help="MCMC steps when needed (500)")
    p.add_argument("--method", default="auto",
                   choices=["auto", "gibbs", "flip", "mala", "hmc", "langevin"],
                   help="sampler (default auto: exact, else Gibbs, else MALA for real data "
                        "and flip for binary or spin data)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("-o", "--output", default=None,
                   help="image path, .png, .pdf, .svg, ... (default RUN/samples.png)")
    _add_device(p, "the device to sample on (default auto)")
    p.set_defaults(handler=cmd_sample)

    p = commands.add_parser(
        "report", help="plots of a training run with an index.md",
        description="Write RUN/report/: loss curves, samples, learned filters, the three "
                    "score-matching terms of latent models over training, and for the "
                    "masked Gaussian its precision against the empirical one.")
    p.add_argument("run", metavar="CHECKPOINT_OR_RUN")
    p.add_argument("--steps", type=positive_int, default=500,
                   help="MCMC steps for the samples")
    _add_device(p, "the device to evaluate and sample on (default auto)")
    p.set_defaults(handler=cmd_report)

    p = commands.add_parser(
        "compare", help="train every model on the digits and tabulate held-out likelihood",
        description="Train each shipped energy model (with its natural estimators) and each "
                    "companion model with a likelihood on the digits training split, with "
                    "fixed budgets, and write OUT/RESULTS.md: held-out log-likelihood in "
                    "nats and bits per dimension, exact where the model allows, by AIS "
                    "for the other energy models, the importance-weighted bound for the "
                    "VAE, the dequantisation bound for the flows, with training times and "
                    "parameter counts, then a verdict: the best model of each data set and "
                    "the flows ranked. It trains the shipped specs, so it runs from any "
                    "directory; each run is kept in OUT/<model>-<estimator>[-variant]/.")
    p.add_argument("--out", default="runs/compare", help="directory (default runs/compare)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="override every model's epoch budget (e.g. 1 for a smoke run)")
    p.add_argument("--limit", type=positive_int, default=None, help="only the first N models")
    p.add_argument("--ais-chains", type=positive_int, default=200,
                   help="AIS chains (default 200)")
    p.add_argument("--ais-temperatures", type=positive_int, default=500,
                   help="AIS temperatures (default 500)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    p.add_argument("--conditional", action="store_true",
                   help="train every companion model that takes a context on p(x | label) "
                        "and score it by log p(x | label); energy models stay unconditional")
    _add_device(p, "the device to train and evaluate on (default auto)")
    p.set_defaults(handler=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from energydsl.files import exit_on_sigterm
    from energydsl.memory import keep_freed_memory

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "size_items"):
            args.sizes = parse_assignments(args.size_items, "--size",
                                           getattr(args, "size_value", positive_int))
        if hasattr(args, "option_items"):
            args.options = parse_assignments(args.option_items, "--option", finite)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    exit_on_sigterm()
    keep_freed_memory()  # glibc: tensors freed by one step are reused by the next
    try:
        return args.handler(args)
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except TrainingError as exc:
        err(str(exc))
        return EXIT_ERROR
    except KeyboardInterrupt:
        err("energydsl: interrupted")
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except Exception:  # noqa: BLE001 - anything else is our bug, not the user's
        err("energydsl: internal error: this is a bug in energydsl, not in your spec.\n"
             "Please report it with the spec and this trace:\n" + traceback.format_exc())
        return EXIT_BUG


def run() -> None:
    """The `energydsl` command: main()'s status as the exit code. A rank of a torchrun
    job leaves without the interpreter's teardown (its output flushed first, its run
    saved and its process group destroyed by then): in that teardown gloo's worker
    threads can abort the process ("terminate called without an active exception"),
    which fails the whole job after a run that went well."""
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    run()
