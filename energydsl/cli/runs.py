"""`energydsl train`, `sample`, `report` and `compare`: runs of models on data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from energydsl.cli.failures import EXIT_ERROR, EXIT_OK, err
from energydsl.cli.specs import output_directory, run_name
from energydsl.errors import SpecError, UsageError


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
    if args.compile:
        given["compile"] = True
    if args.device is not None:
        given["device"] = args.device
    if args.conditional:
        given["conditional"] = True
    out = Path(args.out or Path("runs") / run_name(args.model))
    try:
        config = resumed_config(out, given) if args.resume else None
        if config is not None and config.model != args.model:
            raise UsageError(f"{out}: error: this run trained {config.model}, not "
                             f"{args.model}; use another --out")
        config = config or RunConfig(model=args.model, **given)
        train(config, out, resume=args.resume, overwrite=args.overwrite)
    except SpecError as exc:
        from energydsl import catalogue
        from energydsl.compiler.sources import read_spec_or_none

        err(exc.format(args.model, read_spec_or_none(catalogue.resolve(args.model))))
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
    output_directory(str(path.parent))
    return path


def _checkpoint(text: str) -> Path:
    """A run directory's checkpoint (or a checkpoint file) that exists."""
    from energydsl.train.loop import checkpoint_path

    path = checkpoint_path(text)
    if not path.is_file():
        what = "holds no checkpoint.pt" if Path(text).is_dir() else "no such run or checkpoint"
        raise UsageError(f"{text}: error: {what}; train one with `energydsl train MODEL "
                         f"--out {text}`")
    return path


def cmd_sample(args: argparse.Namespace) -> int:
    from energydsl.train.loop import load_checkpoint, model_from_checkpoint
    from energydsl.train.report import draw, image_grid

    output = _image_path(args.output) if args.output else None
    path = _checkpoint(args.checkpoint)
    from energydsl.train.config import resolve_device

    device = resolve_device(args.device)
    model, config, data_map = model_from_checkpoint(load_checkpoint(path), path)
    model.to(device).eval()
    output = output or path.parent / "samples.png"
    if config.conditional:  # one row per class, ceil(n / classes) samples in each
        from energydsl.train.report import draw_per_class, samples_figure

        classes = config.classes
        columns = -(-args.n // classes)
        samples, how = draw_per_class(model, data_map, classes, columns, args.steps,
                                      args.method, args.seed)
        samples_figure(samples.cpu(), None, data_map.shape, output,
                       f"{Path(config.model).name}: {columns} samples per label ({how})",
                       classes=classes, columns=columns)
        print(f"{len(samples)} samples ({columns} per label) -> {output}")
        return EXIT_OK
    samples, how = draw(model, data_map, args.n, args.steps, args.method, args.seed)
    image_grid(samples, data_map.shape, output,
               f"{args.n} samples of {Path(config.model).name} ({how})")
    print(f"{args.n} samples -> {output}")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from energydsl.train.report import write_report

    _checkpoint(args.run)
    out = write_report(Path(args.run), steps=args.steps, device=args.device)
    print(f"report -> {out / 'index.md'}")
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    from energydsl.cli.progress import above_bars
    from energydsl.files import write_atomically
    from energydsl.train.compare import ENTRIES, compare, table, verdict

    out = output_directory(args.out, "--out")
    entries = ENTRIES[:args.limit] if args.limit else ENTRIES
    with above_bars():  # bars on a terminal: models, epochs, AIS
        rows = compare(out, entries, epochs=args.epochs, ais_chains=args.ais_chains,
                       ais_temperatures=args.ais_temperatures, seed=args.seed,
                       device=args.device, conditional=args.conditional)
    text = table(rows) + "\n\n" + verdict(rows)
    given = (" Rows marked 'given the label' are class-conditional models scored by "
             "log p(x | label) (--conditional); the others are unconditional, log p(x)."
             if args.conditional else "")
    flags = (f"{'' if args.epochs is None else f' --epochs {args.epochs}'}"
             f"{' --conditional' if args.conditional else ''}")
    header = ("Held-out log-likelihood of the digits test split (270 images, 8x8), "
              "per image; continuous models through the dequantisation bound, binarised "
              f"models on the binarised digits.{given} Command: `energydsl compare"
              f"{flags}`.\n\n")
    write_atomically(out / "RESULTS.md", header + text + "\n")
    print(text)
    print(f"table -> {out / 'RESULTS.md'}")
    return EXIT_OK
