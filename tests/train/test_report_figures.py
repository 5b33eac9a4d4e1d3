"""The report's figures show what they should: scales chosen on purpose with a colorbar on
every image, one panel per score-matching term, data beside the samples with the sampler
named, the objective on the loss axis (a GAN's two losses), the held-out log-likelihood
when the model has an exact one; patches are ZCA-whitened on the training split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from energydsl.train import report
from energydsl.train.loop import RunConfig, load_checkpoint, prepare, train
from energydsl.train.prepare import DataMap

from support import SPECS


@pytest.fixture
def figures(monkeypatch):
    """The figures write_report makes, by file name (still written to disk)."""
    made = {}
    save = report.save_figure

    def capture(figure, path: Path, dpi: int = report.GRID_DPI) -> None:
        made[path.name] = figure
        save(figure, path, dpi)

    monkeypatch.setattr(report, "save_figure", capture)
    return made


def _run(tmp_path: Path, model: str, **options) -> Path:
    config = RunConfig(model=model, epochs=1, batch_size=options.pop("batch_size", 256),
                       lr=options.pop("lr", 0.01), **options)
    out = tmp_path / Path(model).stem
    train(config, out, log=lambda _: None, progress=False)
    return out


def _images(figure):
    return [image for axis in figure.axes for image in axis.get_images()]


def _colorbars(figure) -> int:
    return sum(1 for axis in figure.axes if axis.get_label() == "<colorbar>")


def test_precision_panels_have_their_own_scales_and_colorbars(tmp_path, figures):
    run = _run(tmp_path, str(SPECS / "masked_gaussian.edsl"))
    out = report.write_report(run, n_samples=16)
    precision = figures["precision.png"]
    images = _images(precision)
    assert len(images) == 2 and _colorbars(precision) == 2
    (low0, high0), (low1, high1) = (image.get_clim() for image in images)
    assert low0 == -high0 and low1 == -high1 and high0 != high1  # symmetric, per panel
    assert "each on its own" in precision._suptitle.get_text()
    index = (out / "index.md").read_text()
    line = next(x for x in index.splitlines() if "nats per example" in x)
    assert "bits/dim" in line and "exact" in line and "Test split (270 examples)" in line
    nats = float(line.split(": ")[-1].split(" +- ")[0])
    assert -400 < nats < 0  # 64 dequantised pixels of 17 levels: uniform is -181 nats


def test_comparable_precisions_share_a_scale(tmp_path, figures):
    matrix = torch.eye(4)
    assert "shared" in report.precision_figure(matrix, 2 * matrix, tmp_path / "p.png")
    clims = {image.get_clim() for image in _images(figures["p.png"])}
    assert clims == {(-2.0, 2.0)} and _colorbars(figures["p.png"]) == 2


def test_latent_model_report_panels(tmp_path, figures):
    run = _run(tmp_path, str(SPECS / "gbrbm.edsl"), sizes={"K": 4})
    out = report.write_report(run, n_samples=16)
    terms = figures["sm_terms.png"]
    axes = terms.axes
    assert len(axes) == 4  # squared error, variance, curvature, total
    assert [a.get_ylabel() for a in axes] == ["squared error", "variance", "curvature",
                                              "total (sm loss)"]
    assert all(a.get_shared_x_axes().joined(axes[0], a) for a in axes)
    samples = figures["samples.png"]
    assert [a.get_title() for a in samples.axes if a.get_images()] == [
        "data (digits, test split)", "samples"]
    assert _colorbars(samples) == 2 and "(exact)" in samples._suptitle.get_text()
    assert report.GRID_DPI >= 150
    filters = figures["filters.png"]
    assert _colorbars(filters) == 1 and len(_images(filters)) == 1  # one shared scale
    low, high = _images(filters)[0].get_clim()
    assert low == -high and high > 0
    width, height = filters.get_size_inches()
    assert width >= 4 and height >= 2.5
    loss = figures["loss.png"]
    assert loss.axes[0].get_ylabel() == "score-matching loss J"
    assert "objective sm: exact score matching" in loss.axes[0].get_title()
    assert "nats per example" in (out / "index.md").read_text()


def test_mcmc_samples_name_the_sampler_and_steps(tmp_path, figures):
    run = _run(tmp_path, str(SPECS / "dem.edsl"), sizes={"H": 4, "K": 4})
    out = report.write_report(run, n_samples=9, steps=6)
    assert "(mala, 6 steps)" in figures["samples.png"]._suptitle.get_text()
    index = (out / "index.md").read_text()
    assert "Not available (no exact normaliser; use `energydsl compare` for AIS)." in index


def test_a_gan_records_and_plots_both_losses(tmp_path, figures):
    run = _run(tmp_path, "gan", batch_size=128, lr=0.003)
    history = json.loads((run / "history.json").read_text())
    parts = history["step_parts"]
    assert set(parts) == {"discriminator_loss", "generator_loss"}
    for step, total in enumerate(history["steps"]):
        assert math.isclose(total, parts["discriminator_loss"][step]
                            + parts["generator_loss"][step], rel_tol=1e-6)
    record = history["epochs"][0]
    assert set(record["train_parts"]) == set(record["valid_parts"]) == set(parts)
    report.write_report(run, n_samples=4)
    loss = figures["loss.png"]
    assert [a.get_title() for a in loss.axes] == ["discriminator loss", "generator loss"]
    assert all(len(a.get_lines()) == 2 for a in loss.axes)  # train and valid


def test_history_without_step_parts_still_reports(tmp_path, figures):
    run = _run(tmp_path, str(SPECS / "masked_gaussian.edsl"))
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    del checkpoint["history"]["step_parts"]  # a run from before the field
    torch.save(checkpoint, run / "checkpoint.pt")
    report.write_report(run, n_samples=4)
    assert len(figures["loss.png"].axes) == 1


def test_patches_are_zca_whitened_on_the_training_split():
    config = RunConfig(model=str(SPECS / "dem.edsl"), data="patches")
    prepared = prepare(config, "energy")
    train = prepared.train.double()
    assert train.mean(dim=0).abs().max() < 1e-5
    eigenvalues = torch.linalg.eigvalsh(torch.cov(train.T))
    assert eigenvalues.max() < 1.001 and eigenvalues.min() > 0.75  # ridge shrinks the least
    assert (torch.cov(train.T) - torch.eye(train.shape[1])).abs().mean() < 0.01
    data_map = prepared.map
    assert data_map.matrix is not None
    from energydsl.train.data import load_patches

    raw = load_patches(dtype=torch.float64)
    for split, rows in ((prepared.valid, raw.valid), (prepared.test, raw.test)):
        assert torch.allclose(data_map.to_data(split.double()), rows, atol=1e-4)
    whitened = (raw.valid - data_map.mean.double()) @ data_map.whitening
    assert torch.allclose(whitened.float(), prepared.valid, atol=1e-3)
    assert math.isclose(data_map.log_volume(),
                        -float(torch.linalg.slogdet(data_map.whitening)[1]), rel_tol=1e-6)


def test_a_data_map_round_trips_and_reads_older_states():
    data_map = DataMap((1, 2, 2), torch.zeros(4), 1.0, 0.0, 2 * torch.eye(4))
    again = DataMap.from_state(data_map.state(), "x")
    assert torch.equal(again.matrix, data_map.matrix)
    assert math.isclose(again.log_volume(), 4 * math.log(2))
    old = {"shape": [1, 2, 2], "mean": None, "scale": 0.5, "log_jacobian": 0.0}
    assert DataMap.from_state(old, "x").matrix is None
    assert math.isclose(DataMap.from_state(old, "x").log_volume(), 4 * math.log(0.5))
