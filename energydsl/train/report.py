"""Pictures of a training run: samples, learned filters, loss curves, the score-matching
terms of latent models and the masked Gaussian's precision, with an index.md.

The figures follow the seeds: filters as an image grid (seed 000, figure 13), samples
(figures 1-4), loss curves (figures 8 and 12), the three terms of the latent-EBM
score-matching objective over training (seed 002, "Effect of regularizers"), and the
learned precision against the empirical one (seed 000, figures 5-7).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor, nn

from energydsl.errors import TrainingError, UsageError
from energydsl.files import write_atomically
from energydsl.train.build import objective_name
from energydsl.train.loop import (
    CHECKPOINT,
    DataMap,
    load_checkpoint,
    model_from_checkpoint,
    prepare,
)

GRID_DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw_samples(model: nn.Module, data_map: DataMap, n: int, steps: int = 500,
                 method: str = "auto", seed: int = 0) -> Tensor:
    """n samples in data space [n, D]: exact, Gibbs or Langevin as the model allows."""
    device = next((t.device for t in [*model.parameters(), *model.buffers()]),
                  torch.device("cpu"))
    generator = torch.Generator(device=device).manual_seed(seed)  # where the draws are
    torch.manual_seed(seed)
    if hasattr(model, "free_energy"):
        from energydsl.train.sampling import sample

        try:
            x = sample(model, n, steps=steps, method=method, generator=generator,
                       progress=None)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"--method {method}: {exc}") from None
    else:
        if method != "auto":
            raise UsageError(f"--method {method}: {type(model).__name__} is a companion "
                             "model and samples exactly; --method applies to energy models")
        x = model.sample(n, generator=generator)
    return data_map.to_data(x.detach().reshape(n, -1).float()).clamp(0, 1)


def save_figure(figure, path: Path, dpi: int = GRID_DPI) -> None:
    """figure.savefig, written atomically, in the format the suffix names."""
    suffix = path.suffix.lstrip(".").lower() or "png"
    write_atomically(path, lambda handle: figure.savefig(handle, dpi=dpi, format=suffix))


def image_grid(images: Tensor, shape: tuple[int, ...], path: Path, title: str = "",
               cell: float = 0.6, signed: bool = False) -> None:
    """Save images [n, D] as a square-ish grid; `signed` for filters (centred colours)."""
    plt = _pyplot()
    n = images.shape[0]
    columns = math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    height, width = shape[-2], shape[-1]
    figure, axes = plt.subplots(rows, columns, figsize=(columns * cell, rows * cell + 0.3),
                                squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index < n:
            image = images[index].reshape(height, width).numpy()
            if signed:
                bound = float(abs(image).max()) or 1.0
                axis.imshow(image, cmap="RdBu_r", vmin=-bound, vmax=bound)
            else:
                axis.imshow(image, cmap="gray", vmin=0, vmax=1)
    if title:
        figure.suptitle(title, fontsize=8)
    save_figure(figure, path)
    plt.close(figure)


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


def write_report(target: Path, n_samples: int = 64, steps: int = 500,
                 device: str = "cpu") -> Path:
    """Write <run>/report/{*.png,index.md} for a run directory or checkpoint file (the
    model evaluated and sampled on `device`)."""
    from energydsl.train.config import resolve_device

    path = target / CHECKPOINT if target.is_dir() else target
    checkpoint = load_checkpoint(path)
    model, config, data_map = model_from_checkpoint(checkpoint, path)
    model.to(resolve_device(device))
    history = checkpoint["history"]
    out = path.parent / "report"
    out.mkdir(parents=True, exist_ok=True)
    plt = _pyplot()
    lines = [f"# Training report: {config.model}", "",
             f"Objective `{objective_name(config, model) if config.is_spec else 'loss'}` "
             f"on `{config.data}`, "
             f"{len(history['epochs'])} epochs, batch {config.batch_size}, lr {config.lr}, "
             f"seed {config.seed}.", "",
             "| epoch | train loss | valid loss | seconds |", "|---|---|---|---|"]
    for record in history["epochs"]:
        lines.append(f"| {record['epoch']} | {record['train_loss']:.6g} | "
                     f"{record['valid_loss']:.6g} | {record['seconds']:.2f} |")
    lines.append("")

    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot(range(1, len(history["steps"]) + 1), history["steps"], lw=0.7, label="train")
    per_epoch = len(history["steps"]) / max(len(history["epochs"]), 1)
    axis.plot([r["epoch"] * per_epoch for r in history["epochs"]],
              [r["valid_loss"] for r in history["epochs"]], "o-", label="valid")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.legend()
    figure.tight_layout()
    save_figure(figure, out / "loss.png")
    plt.close(figure)
    lines += ["## Loss", "", "![loss](loss.png)", ""]

    model.eval()
    samples = draw_samples(model, data_map, n_samples, steps, seed=config.seed)
    image_grid(samples, data_map.shape, out / "samples.png", f"{n_samples} samples")
    lines += ["## Samples", "", "![samples](samples.png)", ""]

    found = filters_of(model, math.prod(data_map.shape))
    if found is not None:
        name, rows = found
        image_grid(rows[:64], data_map.shape, out / "filters.png",
                   f"filters: {name}", signed=True)
        lines += [f"## Filters ({name})", "", "![filters](filters.png)", ""]

    terms = [r["sm_terms"] for r in history["epochs"] if "sm_terms" in r]
    if terms:
        figure, axis = plt.subplots(figsize=(5, 3.2))
        for key in terms[0]:
            axis.plot(range(1, len(terms) + 1), [t[key] for t in terms], "o-", label=key)
        axis.set_xlabel("epoch")
        axis.set_ylabel("held-out value")
        axis.legend()
        figure.tight_layout()
        save_figure(figure, out / "sm_terms.png")
        plt.close(figure)
        lines += ["## Score-matching terms (Swersky et al. 2011)", "",
                  "![sm terms](sm_terms.png)", ""]

    train = None
    if hasattr(model, "precision"):
        try:
            train = prepare(config, "energy").train_values()
        except TrainingError as exc:  # the run's data is not on this machine
            lines += ["## Precision", "", f"(not drawn: the training data is needed: {exc})",
                      ""]
    if train is not None:
        learned = model.precision().detach().float()
        centred = train - train.mean(dim=0)
        empirical = torch.linalg.pinv(centred.T @ centred / (train.shape[0] - 1))
        figure, axes = plt.subplots(1, 2, figsize=(7, 3.4))
        bound = float(empirical.abs().max())
        for axis, matrix, title in ((axes[0], empirical, "empirical precision"),
                                    (axes[1], learned, "learned precision")):
            axis.imshow(matrix.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound)
            axis.set_title(title, fontsize=9)
            axis.axis("off")
        figure.tight_layout()
        save_figure(figure, out / "precision.png")
        plt.close(figure)
        lines += ["## Precision", "", "![precision](precision.png)", ""]
    write_atomically(out / "index.md", "\n".join(lines))
    return out
