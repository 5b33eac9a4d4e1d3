"""Pictures of a training run: samples, learned filters, loss curves, the score-matching
terms of latent models and the masked Gaussian's precision, with an index.md.

The figures follow the seeds: filters as an image grid (seed 000, figure 13), samples
(figures 1-4), loss curves (figures 8 and 12), the three terms of the latent-EBM
score-matching objective over training (seed 002, "Effect of regularizers"), and the
learned precision against the empirical one (seed 000, figures 5-7). A class-conditional
run (`--conditional`) shows its samples one row per class, and its held-out likelihood is
log p(x | label).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from energydsl.errors import TrainingError, UsageError
from energydsl.files import write_atomically
from energydsl.models import one_hot
from energydsl.train.build import objective_name
from energydsl.train.data import CODES
from energydsl.train.loop import (
    DataMap,
    Prepared,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    prepare,
)

GRID_DPI = 150
"""Resolution of every figure: 8x8 digits in 0.4-inch cells come out at 60 px a cell."""
CELL = 0.4
"""Inches per image cell of a grid (larger images get up to 3 times this)."""
FILTER_CELL = 2.0
"""Filters are drawn this many times larger than samples (fewer of them, finer detail)."""
CLASS_COLUMNS = 8
"""Samples (and test images) per class in a conditional run's figures."""
COMPARABLE = 3.0
"""Two matrices share a colour scale when their largest entries differ by at most this
factor; otherwise each gets its own (and the title says so)."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sampler_name(model: nn.Module, method: str = "auto") -> str:
    """The sampler `draw_samples` uses: "exact" (the model's own sampler, closed form or
    enumeration), else the MCMC method ("gibbs", "mala", "flip", ...); method "mcmc": the
    chain `sample` falls back to when exact sampling fails."""
    if not hasattr(model, "free_energy"):
        if hasattr(model, "train_step"):
            return "generator G(z), z ~ N(0, I)"
        if getattr(model, "log_prob_kind", None) == "none":  # an autoencoder
            return "decoded codes drawn from the training codes' mean and variance"
        return "exact"
    if method == "auto" and callable(getattr(model, "sample", None)):
        return "exact"
    if method not in ("auto", "mcmc"):
        return method
    from energydsl.train.sampling import Sampler

    try:
        return Sampler(model, "auto").method
    except (TypeError, ValueError):
        return method


def draw(model: nn.Module, data_map: DataMap, n: int, steps: int = 500,
         method: str = "auto", seed: int = 0, context: Tensor | None = None
         ) -> tuple[Tensor, str]:
    """n samples in data space [n, D] and how they were drawn ("exact", or "gibbs, 500
    steps" and the like): exact, Gibbs or Langevin as the model allows. `context`: a
    conditional companion model's [n, C] (one-hot labels), one per sample."""
    import warnings

    from energydsl.train.sampling import _dtype_device

    generator = torch.Generator(device=_dtype_device(model)[1]).manual_seed(seed)
    torch.manual_seed(seed)
    how = sampler_name(model, method)
    if hasattr(model, "free_energy"):
        from energydsl.train.sampling import sample

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                x = sample(model, n, steps=steps, method=method, generator=generator,
                           progress=None)
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--method {method}: {exc}") from None
        for warning in caught:
            if "exact sampling failed" in str(warning.message):  # MCMC ran instead
                how = sampler_name(model, "mcmc")
            warnings.warn(warning.message, stacklevel=2)
    else:
        if method != "auto":
            raise UsageError(f"--method {method}: {type(model).__name__} is a companion "
                             "model and samples exactly; --method applies to energy models")
        x = model.sample(n, generator=generator,
                         **({} if context is None else {"context": context}))
    if hasattr(model, "free_energy") and how != "exact":
        how = f"{how}, {steps} steps"
    return data_map.to_data(x.detach().reshape(n, -1).float()).clamp(0, 1), how


def draw_per_class(model: nn.Module, data_map: DataMap, classes: int, columns: int,
                   steps: int = 500, method: str = "auto", seed: int = 0
                   ) -> tuple[Tensor, str]:
    """A conditional model's `columns` samples of each class in turn (class-major, as
    `samples_figure(classes=...)` shows them), each drawn given its one-hot label."""
    labels = torch.arange(classes).repeat_interleave(columns)
    return draw(model, data_map, len(labels), steps, method, seed,
                context=one_hot(labels, classes, model))


def draw_samples(model: nn.Module, data_map: DataMap, n: int, steps: int = 500,
                 method: str = "auto", seed: int = 0) -> Tensor:
    """n samples in data space [n, D]: exact, Gibbs or Langevin as the model allows."""
    return draw(model, data_map, n, steps, method, seed)[0]


def save_figure(figure, path: Path, dpi: int = GRID_DPI) -> None:
    """figure.savefig, written atomically, in the format the suffix names."""
    suffix = path.suffix.lstrip(".").lower() or "png"
    write_atomically(path, lambda handle: figure.savefig(handle, dpi=dpi, format=suffix,
                                                         bbox_inches="tight",
                                                         pad_inches=0.05))


def mosaic(images: Tensor, shape: tuple[int, ...], columns: int | None = None
           ) -> np.ndarray:
    """Images [n, D] tiled into one array, rows of `columns` images one pixel apart; the
    gaps (and empty cells) are NaN, drawn in the background colour."""
    n = images.shape[0]
    height, width = shape[-2], shape[-1]
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    out = np.full((rows * (height + 1) - 1, columns * (width + 1) - 1), np.nan)
    values = images.detach().float().reshape(n, height, width).numpy()
    for index in range(n):
        r, c = divmod(index, columns)
        out[r * (height + 1):r * (height + 1) + height,
            c * (width + 1):c * (width + 1) + width] = values[index]
    return out


def _cell(shape: tuple[int, ...]) -> float:
    return CELL * min(3.0, max(1.0, shape[-1] / 8) ** 0.5)


def _colormap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="white")


def _grid_panel(figure, axis, images: Tensor, shape: tuple[int, ...], title: str,
                signed: bool, columns: int | None = None, colorbar: bool = True):
    """One panel: the images as a mosaic, grey on [0, 1] or (signed) a shared symmetric
    red-blue scale, with a colorbar."""
    tiles = mosaic(images, shape, columns)
    if signed:
        bound = float(np.nanmax(np.abs(tiles))) or 1.0
        shown = axis.imshow(tiles, cmap=_colormap("RdBu_r"), vmin=-bound, vmax=bound,
                            interpolation="nearest")
    else:
        shown = axis.imshow(tiles, cmap=_colormap("gray"), vmin=0, vmax=1,
                            interpolation="nearest")
    axis.set_title(title, fontsize=9)
    axis.axis("off")
    if colorbar:
        figure.colorbar(shown, ax=axis, shrink=0.8, pad=0.02)
    return shown


def image_grid(images: Tensor, shape: tuple[int, ...], path: Path, title: str = "",
               cell: float | None = None, signed: bool = False) -> None:
    """Save images [n, D] as one square-ish grid with a colorbar; `signed` for filters
    (one symmetric colour scale shared by every image, centred on zero)."""
    plt = _pyplot()
    n = images.shape[0]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    cell = cell or _cell(shape)
    figure, axis = plt.subplots(figsize=(max(columns * cell, 3.0) + 1.0,
                                         max(rows * cell, 2.0) + 0.6), layout="constrained")
    _grid_panel(figure, axis, images, shape, "", signed, columns)
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path)
    plt.close(figure)


def samples_figure(samples: Tensor, data: Tensor | None, shape: tuple[int, ...], path: Path,
                   title: str, data_title: str = "data", classes: int | None = None,
                   columns: int = CLASS_COLUMNS) -> None:
    """Real data (when given) beside the model's samples, both grey on [0, 1] with a
    colorbar each. With `classes`, a conditional model's: one row of `columns` images per
    class, the label on the left (both class-major, see `by_class`)."""
    plt = _pyplot()
    panels = ([(data, data_title)] if data is not None else []) + [(samples, "samples")]
    cell = _cell(shape)
    n = samples.shape[0]
    if classes is None:
        columns = math.ceil(math.sqrt(n))
    rows = classes or math.ceil(n / columns)
    margin = 0.8 if classes is None else 1.2  # the class labels take room on the left
    figure, axes = plt.subplots(1, len(panels), squeeze=False, layout="constrained",
                                figsize=(len(panels) * (columns * cell + margin),
                                         rows * cell + 0.7))
    for axis, (images, name) in zip(axes[0], panels, strict=True):
        if classes is None:
            _grid_panel(figure, axis, images[:n], shape, name, False, columns)
        else:
            class_panel(figure, axis, images, classes, shape, name, columns)
    figure.suptitle(title, fontsize=10)
    save_figure(figure, path)
    plt.close(figure)


def by_class(x: Tensor, labels: Tensor, classes: int, columns: int = CLASS_COLUMNS
             ) -> Tensor:
    """The first `columns` rows of x [N, D] of each class in turn, [classes * columns, D]
    (class k in rows k * columns ...); a class with fewer rows is padded with NaN (blank
    cells)."""
    rows = []
    for k in range(classes):
        picked = x[labels.to(x.device) == k][:columns]
        rows += [picked, x.new_full((columns - len(picked), x.shape[1]), math.nan)]
    return torch.cat(rows)


def class_panel(figure, axis, images: Tensor, classes: int, shape: tuple[int, ...],
                title: str, columns: int = CLASS_COLUMNS) -> None:
    """One row of `columns` images per class (images [classes * columns, D], class-major),
    grey on [0, 1] with a colorbar, each row labelled with its class on the left."""
    shown = axis.imshow(mosaic(images, shape, columns), cmap=_colormap("gray"), vmin=0,
                        vmax=1, interpolation="nearest")
    height = shape[-2]
    axis.set_yticks([r * (height + 1) + (height - 1) / 2 for r in range(classes)],
                    labels=[str(k) for k in range(classes)])
    axis.set_xticks([])
    axis.tick_params(length=0, labelsize=8)
    for spine in axis.spines.values():
        spine.set_visible(False)
    axis.set_ylabel("label", fontsize=9)
    axis.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axis, shrink=0.8, pad=0.02)


def filters_of(model: nn.Module, dim: int) -> tuple[str, Tensor] | None:
    """The first parameter matrix with one axis over the visible units, as rows (not a
    grid-masked matrix's stored [9, D] stencil: the precision has its own figure)."""
    for name, parameter in model.named_parameters():
        if hasattr(model, f"_{name}_stencil"):
            continue
        value = parameter.detach().float()
        if value.ndim == 2 and value.shape[0] == dim and value.shape[1] != dim:
            return name, value.T
        if value.ndim == 2 and value.shape[1] == dim and value.shape[0] != dim:
            return name, value
    return None


LOSS_LABELS = {
    "sm": "score-matching loss J", "dsm": "denoising score-matching loss",
    "ssm": "sliced score-matching loss", "nce": "NCE loss", "cnce": "conditional NCE loss",
    "cd": "CD surrogate loss", "pcd": "PCD surrogate loss", "fpcd": "FPCD surrogate loss",
    "mle": "negative log-likelihood (nats)", "rm": "ratio-matching loss",
    "pl": "negative pseudo-likelihood (nats)",
}
"""The y-axis label of each estimator's loss curve."""


def objective_of(config, model: nn.Module) -> tuple[str, str, str]:
    """(short name, long description, y-axis label) of what the run minimised."""
    if config.is_spec:
        from energydsl.estimators import get

        name = objective_name(config, model)
        return name, get(name).summary, LOSS_LABELS.get(name, f"{name} loss")
    if hasattr(model, "train_step"):
        return "loss", ("two players: the discriminator's and the generator's binary "
                        "cross-entropy, minimised alternately"), "loss"
    doc = " ".join((type(model).loss.__doc__ or "").split())  # its lines joined
    first = doc.split(". ")[0].rstrip(".") if doc else "the model's own loss"  # a sentence
    return "loss", f"{type(model).__name__}'s own loss: {first}", f"{type(model).__name__} loss"


def validation_note(config, model: nn.Module) -> str:
    """What the validation curve measures when it is not the training objective."""
    if config.is_spec:
        from energydsl.estimators import default_objective

        if objective_name(config, model) in ("cd", "pcd", "fpcd"):
            return f"valid: exact {default_objective(model)} (chains untouched)"
    return ""


def loss_figure(history: dict, config, model: nn.Module, path: Path) -> None:
    """Training loss per step and held-out loss per epoch against the step; a GAN's two
    players in two panels (their sum is no objective)."""
    plt = _pyplot()
    short, _, label = objective_of(config, model)
    parts = history.get("step_parts") or {}
    per_epoch = len(history["steps"]) / max(len(history["epochs"]), 1)
    ends = [r["epoch"] * per_epoch for r in history["epochs"]]
    if parts:
        figure, axes = plt.subplots(1, len(parts), figsize=(4.2 * len(parts), 3.2),
                                    sharex=True, layout="constrained", squeeze=False)
        for axis, (key, values) in zip(axes[0], parts.items(), strict=True):
            who = key.replace("_loss", "")
            axis.plot(range(1, len(values) + 1), values, lw=0.7, label="train")
            valid = [r["valid_parts"][key] for r in history["epochs"]
                     if key in r.get("valid_parts", {})]
            if len(valid) == len(ends):
                axis.plot(ends, valid, "o-", label="valid")
            axis.set_title(f"{who} loss", fontsize=9)
            axis.set_xlabel("step")
            axis.set_ylabel(f"{who} loss (binary cross-entropy)")
            axis.legend(fontsize=8)
        figure.suptitle(f"{config.model} on {config.data}: GAN losses, discriminator and "
                        "generator", fontsize=10)
    else:
        figure, axis = plt.subplots(figsize=(5.5, 3.4), layout="constrained")
        steps = history["steps"]
        axis.plot(range(1, len(steps) + 1), steps, lw=0.6, alpha=0.45,
                  label="train (per step)")
        window = max(1, round(per_epoch / 5))
        if window > 1 and len(steps) > window:
            smooth = np.convolve(steps, np.ones(window) / window, mode="valid")
            axis.plot(range(window, len(steps) + 1), smooth, lw=1.4, color="C0",
                      label=f"train ({window}-step running mean)")
        note = validation_note(config, model)
        axis.plot(ends, [r["valid_loss"] for r in history["epochs"]], "o-",
                  label=note or "valid (per epoch)")
        axis.set_xlabel("step")
        axis.set_ylabel(label)
        axis.legend(fontsize=8)
        what = objective_of(config, model)[1].split(" (")[0].split(":")[0]
        axis.set_title(f"{Path(config.model).stem} on {config.data}, objective {short}: "
                       f"{what}", fontsize=10)
    save_figure(figure, path)
    plt.close(figure)


def sm_terms_figure(terms: list[dict[str, float]], path: Path) -> None:
    """One panel per score-matching term and one for their sum (sm_loss), x shared."""
    plt = _pyplot()
    keys = list(terms[0])
    panels = [(key, [t[key] for t in terms]) for key in keys]
    panels.append(("total (sm_loss)", [sum(t[k] for k in keys) for t in terms]))
    epochs = range(1, len(terms) + 1)
    figure, axes = plt.subplots(len(panels), 1, sharex=True, layout="constrained",
                                figsize=(5, 1.5 * len(panels) + 0.6))
    for axis, (name, values) in zip(axes, panels, strict=True):
        axis.plot(epochs, values, "o-", ms=3)
        axis.set_ylabel(name.replace("_", " "), fontsize=8)
        axis.ticklabel_format(axis="y", useOffset=False)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
    axes[-1].set_xlabel("epoch")
    axes[-1].xaxis.get_major_locator().set_params(integer=True)
    figure.suptitle("score-matching terms on the validation split (Swersky et al. 2011)",
                    fontsize=10)
    save_figure(figure, path)
    plt.close(figure)


def precision_figure(empirical: Tensor, learned: Tensor, path: Path) -> str:
    """Empirical and learned precision side by side with a colorbar each; one shared
    symmetric scale when their largest entries are within COMPARABLE of each other, else
    each on its own. Returns which."""
    plt = _pyplot()
    bounds = [float(m.abs().max()) or 1.0 for m in (empirical, learned)]
    shared = max(bounds) / min(bounds) <= COMPARABLE
    if shared:
        bounds = [max(bounds)] * 2
    scale = "one shared symmetric colour scale" if shared else \
        "each on its own symmetric colour scale"
    figure, axes = plt.subplots(1, 2, figsize=(8, 3.9), layout="constrained")
    for axis, matrix, title, bound in ((axes[0], empirical, "empirical (inverse covariance)",
                                        bounds[0]),
                                       (axes[1], learned, "learned", bounds[1])):
        shown = axis.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound,
                            interpolation="nearest")
        axis.set_title(f"{title}, max |entry| {float(matrix.abs().max()):.3g}", fontsize=9)
        axis.set_xticks([])
        axis.set_yticks([])
        figure.colorbar(shown, ax=axis, shrink=0.85)
    figure.suptitle(f"precision matrices (model space), {scale}", fontsize=10)
    save_figure(figure, path)
    plt.close(figure)
    return scale


BOUND_WORDS = {  # what a held-out figure is, said in full
    "IW bound": "importance-weighted lower bound (the VAE's)",
    "dequantisation bound": ("exact density of the dequantised data, a lower bound on the "
                             "grey levels' log-probability"),
}


def held_out_likelihood(model: nn.Module, x: Tensor, data_map: DataMap,
                        dequantised: bool = False, context: Tensor | None = None
                        ) -> tuple[float, float, str] | None:
    """Mean held-out log-likelihood per example in data space, its standard error and
    what it is ("exact", the VAE's importance-weighted bound, or for dequantised grey
    levels the dequantisation bound); None when the model has no exact normaliser (or
    enumerating it would take more than 2^20 states). `context`: a conditional model's
    one-hot labels of x, giving log p(x | label)."""
    import inspect

    log_prob = getattr(model, "log_prob", None)
    if not callable(log_prob):
        return None
    options: dict[str, object] = {}
    if "max_states" in inspect.signature(log_prob).parameters:
        options["max_states"] = 2**20  # enumeration of at most a million hidden states
    if context is not None:
        options["context"] = context
    torch.manual_seed(0)
    try:
        with torch.no_grad():
            values = log_prob(x, **options).double().reshape(len(x), -1).sum(dim=1)
    except (AttributeError, ValueError, TypeError, NotImplementedError, RuntimeError):
        return None
    if not bool(torch.isfinite(values).all()):
        return None
    values = values - data_map.log_volume() - data_map.log_jacobian
    from energydsl.models.distribution import likelihood_kind

    how = "dequantisation bound" if dequantised else likelihood_kind(model)
    how = BOUND_WORDS.get(how, how)
    if context is not None:
        how = f"{how}, of log p(x | label) given the test labels"
    return float(values.mean()), float(values.std() / math.sqrt(len(values))), how


def _data_rows(config, text: str | None, data_map: DataMap, n: int
               ) -> tuple[Tensor | None, str, Prepared | None, str]:
    """The first n test rows in data space, the panel's title, the prepared splits (None
    when the run's data is not on this machine) and the data kind."""
    from energydsl.train.loop import data_kind

    kind = data_kind(config, text)
    try:
        prepared = prepare(config, kind)
    except (TrainingError, UsageError):
        return None, "", None, kind
    rows = data_map.to_data(prepared.test[:n].float()).clamp(0, 1)
    return rows, f"data ({config.data}, test split)", prepared, kind


def write_report(target: Path, n_samples: int = 64, steps: int = 500,
                 device: str = "cpu") -> Path:
    """Write <run>/report/{*.png,index.md} for a run directory or checkpoint file (the
    model evaluated and sampled on `device`)."""
    from energydsl.train.config import resolve_device

    path = checkpoint_path(target)
    checkpoint = load_checkpoint(path)
    model, config, data_map = model_from_checkpoint(checkpoint, path)
    where = resolve_device(device)
    model.to(where)
    history = checkpoint["history"]
    out = path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    short, summary, _ = objective_of(config, model)
    lines = [f"# Training report: {config.model}", "",
             f"Objective `{short}` on `{config.data}` ({summary}), "
             f"{len(history['epochs'])} epochs, batch {config.batch_size}, lr {config.lr}, "
             f"seed {config.seed}.", ""]
    classes = config.classes
    if classes:
        lines += [f"Class-conditional: the model is p(x | label), its context the one-hot "
                  f"label of {classes} classes; samples are drawn {CLASS_COLUMNS} per label.",
                  ""]
    if data_map.matrix is not None:
        lines += ["The model saw ZCA-whitened data (fitted on the training split); samples "
                  "are mapped back to pixels, filters are shown in whitened coordinates.", ""]
    parts = [key for key in (history.get("step_parts") or {})]
    header = "| epoch | train loss | valid loss | " + "".join(
        f"train {k.replace('_', ' ')} | valid {k.replace('_', ' ')} | " for k in parts)
    lines += [header + "seconds |", "|---|---|---|" + "---|---|" * len(parts) + "---|"]
    for record in history["epochs"]:
        extra = "".join(f"{record.get('train_parts', {}).get(k, math.nan):.6g} | "
                        f"{record.get('valid_parts', {}).get(k, math.nan):.6g} | "
                        for k in parts)
        lines.append(f"| {record['epoch']} | {record['train_loss']:.6g} | "
                     f"{record['valid_loss']:.6g} | {extra}{record['seconds']:.2f} |")
    lines.append("")

    model.eval()
    data_rows, data_title, prepared, kind = _data_rows(config, checkpoint.get("spec_text"),
                                                       data_map, n_samples)
    test = None if prepared is None else prepared.test.to(where)
    dim = math.prod(data_map.shape)
    lines += ["## Held-out log-likelihood", ""]
    dequantised = kind == "energy" and config.data.partition(":")[0] in CODES
    test_context = None
    if classes and prepared is not None and prepared.labels is not None:
        test_context = one_hot(prepared.labels[2], classes, model)
    found = None if test is None else held_out_likelihood(model, test, data_map, dequantised,
                                                          test_context)
    if test is None:
        lines += ["Not computed: the run's data is not on this machine.", ""]
    elif found is None:
        lines += ["Not available (no exact normaliser; use `energydsl compare` for AIS).", ""]
    else:
        nats, stderr, how = found
        lines += [f"Test split ({len(test)} examples), {how}: {nats:.3f} +- {stderr:.3f} "
                  f"nats per example, {-nats / (dim * math.log(2)):.4f} bits/dim.", ""]

    loss_figure(history, config, model, out / "loss.png")
    lines += ["## Loss", "", "![loss](loss.png)", ""]

    if classes:
        samples, how = draw_per_class(model, data_map, classes, CLASS_COLUMNS, steps,
                                      seed=config.seed)
        data = None
        if prepared is not None and prepared.labels is not None:
            test_rows = data_map.to_data(prepared.test.float()).clamp(0, 1)
            data = by_class(test_rows, prepared.labels[2], classes)
        samples_figure(samples.cpu(), data, data_map.shape, out / "samples.png",
                       f"{Path(config.model).stem}: {CLASS_COLUMNS} samples per label "
                       f"({how}), one row per label", data_title, classes)
    else:
        samples, how = draw(model, data_map, n_samples, steps, seed=config.seed)
        samples_figure(samples, data_rows, data_map.shape, out / "samples.png",
                       f"{Path(config.model).stem}: {n_samples} samples ({how})", data_title)
    lines += ["## Samples", "", f"Sampler: {how}.", "", "![samples](samples.png)", ""]

    found_filters = filters_of(model, dim)
    if found_filters is not None:
        name, rows = found_filters
        rows = rows[:64]
        space = " (ZCA-whitened coordinates)" if data_map.matrix is not None else ""
        image_grid(rows, data_map.shape, out / "filters.png",
                   f"{len(rows)} filters: rows of {name}{space},\n"
                   "all on one symmetric colour scale", cell=FILTER_CELL * _cell(data_map.shape),
                   signed=True)
        lines += [f"## Filters ({name})", "", "![filters](filters.png)", ""]

    terms = [r["sm_terms"] for r in history["epochs"] if "sm_terms" in r]
    if terms:
        sm_terms_figure(terms, out / "sm_terms.png")
        lines += ["## Score-matching terms (Swersky et al. 2011)", "",
                  "![sm terms](sm_terms.png)", ""]

    if hasattr(model, "precision"):
        if prepared is None:
            lines += ["## Precision", "", "(not drawn: the run's training data is not on "
                      "this machine)", ""]
        else:
            train = prepared.train_values()
            learned = model.precision().detach().float()
            centred = train - train.mean(dim=0)
            empirical = torch.linalg.pinv(centred.T @ centred / (train.shape[0] - 1))
            scale = precision_figure(empirical, learned, out / "precision.png")
            lines += ["## Precision", "", f"Empirical and learned precision, {scale}.", "",
                      "![precision](precision.png)", ""]
    write_atomically(out / "index.md", "\n".join(lines))
    return out
