"""Benchmark the generated score-matching code against autograd, sliced SM and hand-written
closed forms, and time the compiler; writes bench/RESULTS.md and bench/time_vs_D.png.

Run `.venv/bin/python bench/run.py --help` (or `make bench`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

DESCRIPTION = """\
Benchmark energydsl's generated exact score-matching losses (generated/*.py, sm_loss) on the
seed models DEM, GBRBM, GaussianRBM, MPoT and MaskedGaussian at D=784 (the masked Gaussian
on a 28 x 28 grid), K=H=M=64, batch 128, float32, all in this one process.

Each measurement is the best of several runs (after warm-up) of one loss evaluation plus
the backward pass to the parameter gradients, for:
  generated              the generated closed form, model.sm_loss
  hand                   the best hand-written closed form (bench/hand.py), plus variants
  exact, autograd loop   score by autograd, then one backward pass per input dimension
  exact, torch.func      the Hessian diagonal as D vmapped Hessian-vector products (jvp)
  sliced, autograd score sliced SM (Song et al. 2019), one projection, score by autograd
  sliced, model score    the same from the generated closed-form score
It also sweeps D and the batch size, measures peak memory, times the compiler on every spec
(warm, in this process; cold, `energydsl compile specs/*.edsl` in a subprocess), compiles a
training step of every generated module with torch.compile (and shows exact SM by autograd
cannot be compiled), then evaluates the project's performance targets (PASS/FAIL).

Output: RESULTS.md (tables of times, ratios and targets, and the command that reproduces
them), time_vs_D.png (log-log time against D) and results.json, by default in bench/."""

EPILOG = """\
The machine may be shared: timings are best-of-N to filter out other processes, and the
report records how busy the CPUs were. Slow methods are skipped where their estimated time
per call exceeds --slow-cap (they are marked as such in the tables).

examples:
  .venv/bin/python bench/run.py                 full run (a few minutes on 2 cores)
  .venv/bin/python bench/run.py --quick         a fraction of it, fewer sizes and repeats
  .venv/bin/python bench/run.py --device cuda --out /tmp/gpu/RESULTS.md"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=DESCRIPTION,
                                     epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="fewer sizes and repeats; torch.compile on DEM only")
    parser.add_argument("--repeats", type=int, default=None, metavar="R",
                        help="timed runs per measurement, best kept (default 5, quick 3)")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", metavar="PATH",
                        help="markdown report (default bench/RESULTS.md); the plot and "
                             "results.json go beside it")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--threads", type=int, default=2, metavar="T",
                        help="torch.set_num_threads (default 2, the machine's cores)")
    parser.add_argument("--batch", type=int, default=128, metavar="N",
                        help="batch size of the main table (default 128)")
    parser.add_argument("--slow-cap", type=float, default=None, metavar="S",
                        help="skip a slow method where its estimated seconds per call "
                             "exceed S (default 4, quick 2); the D=784 exact loop always runs")
    parser.add_argument("--exact-limit", type=float, default=None, metavar="S",
                        help="stop one exact-by-autograd loss after S seconds and report the "
                             "time so far as a lower bound (default 30, quick 15)")
    parser.add_argument("--no-torch-compile", action="store_true",
                        help="skip the torch.compile section (the slowest part)")
    args = parser.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.slow_cap is None:
        args.slow_cap = 2.0 if args.quick else 4.0
    if args.exact_limit is None:
        args.exact_limit = 15.0 if args.quick else 30.0
    if args.repeats < 1 or args.threads < 1 or args.batch < 1:
        parser.error("--repeats, --threads and --batch must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(HERE))
    import torch
    from report import write_report
    from sections import Bench

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench/run.py: error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    bench = Bench(args, sys.argv if argv is None else ["bench/run.py", *argv])
    results = bench.run()
    paths = write_report(results, args.out)
    print("\n".join(results["summary"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
