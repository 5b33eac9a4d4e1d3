"""Class-conditional training (`--conditional`) end to end on the digits' labels: the run
records it and resume keeps it, the model learns p(x | label) (held-out log p(x | label)
recomputed independently, samples drawn for label k most likely under k), the report's
samples figure has one labelled row per class, sample/compare/api work conditionally."""

from __future__ import annotations

import json
import re

import matplotlib
import pytest
import torch
import torch.nn.functional as F

import energydsl
from energydsl.cli import main
from energydsl.train import data
from energydsl.train.compare import Entry, compare, table
from energydsl.train.loop import load_checkpoint
from energydsl.train.report import by_class, class_panel, draw

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def made_run(tmp_path_factory):
    """A conditional MADE trained for 2 epochs on the binarised digits and their labels."""
    run = tmp_path_factory.mktemp("conditional") / "made"
    assert main(["train", "made", "--conditional", "--epochs", "2", "--lr", "3e-3",
                 "--out", str(run)]) == 0
    return run


def test_the_run_records_that_it_is_conditional_and_resume_keeps_it(made_run, tmp_path):
    settings = json.loads((made_run / "run.json").read_text())
    assert settings["config"]["conditional"] is True and settings["classes"] == 10
    weights = load_checkpoint(made_run / "checkpoint.pt")["model"]
    assert weights["context_layers.0.weight"].shape == (128, 10)  # context_dim = 10 classes
    # resuming without the flag continues the conditional run
    run = tmp_path / "made"
    assert main(["train", "made", "--conditional", "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "made", "--epochs", "2", "--resume", "--out", str(run)]) == 0
    settings = json.loads((run / "run.json").read_text())
    assert settings["config"]["conditional"] is True and settings["epochs_done"] == 2
    model, config = energydsl.load_run(run)
    assert config.conditional and model.context_dim == 10


def test_the_report_gives_log_p_x_given_the_label_and_labelled_class_rows(made_run):
    assert main(["report", str(made_run), "--device", "cpu"]) == 0
    index = (made_run / "report" / "index.md").read_text()
    assert "Class-conditional" in index and "log p(x | label)" in index
    reported = float(re.search(r"given the test labels: (-?[0-9.]+) \+-", index).group(1))
    # recomputed from the digits loaded independently of the training code
    model, _ = energydsl.load_run(made_run)
    digits = data.load_digits(binarize=True)
    with torch.no_grad():
        given = model.log_prob(digits.test, context=F.one_hot(digits.test_labels, 10).float())
        shifted = model.log_prob(digits.test,
                                 context=F.one_hot((digits.test_labels + 1) % 10, 10).float())
    assert abs(reported - float(given.mean())) < 1e-3
    assert given.mean() > shifted.mean() + 1.0  # the labels carry information it learnt
    image = matplotlib.image.imread(made_run / "report" / "samples.png")
    assert image.shape[0] > 400 and image.shape[1] > image.shape[0]  # two 10-row panels


def test_samples_drawn_for_label_k_are_most_likely_under_label_k(made_run):
    """The rows of the figure are the labels they are drawn for: the mean log p(s | j) of
    the samples drawn for k is largest at j = k."""
    model, _ = energydsl.load_run(made_run)
    model.eval()
    checkpoint = load_checkpoint(made_run / "checkpoint.pt")
    from energydsl.train.prepare import DataMap

    data_map = DataMap.from_state(checkpoint["data"], made_run)
    labels = torch.arange(10).repeat_interleave(20)
    samples, how = draw(model, data_map, len(labels),
                        context=F.one_hot(labels, 10).float())
    assert how == "exact" and samples.shape == (200, 64)
    with torch.no_grad():
        scores = torch.stack([model.log_prob(samples, context=F.one_hot(
            torch.full((200,), j), 10).float()) for j in range(10)], dim=1)
    assert torch.equal(scores.reshape(10, 20, 10).mean(1).argmax(1), torch.arange(10))


def test_class_rows_are_labelled_and_hold_their_class():
    x = torch.arange(30, dtype=torch.float32)[:, None].repeat(1, 64)
    labels = torch.tensor([i % 3 for i in range(30)])
    labels[labels == 2] = 1  # class 2 has no rows: blank (NaN) cells
    rows = by_class(x, labels, 3, columns=4)
    assert rows.shape == (12, 64)
    assert (labels[rows[:4, 0].long()] == 0).all() and (labels[rows[4:8, 0].long()] == 1).all()
    assert rows[8:].isnan().all()
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots()
    class_panel(figure, axis, rows, 3, (1, 8, 8), "samples", columns=4)
    assert [t.get_text() for t in axis.get_yticklabels()] == ["0", "1", "2"]
    assert list(axis.get_yticks()) == [3.5, 12.5, 21.5]  # row centres, 8 pixels + 1 gap
    plt.close(figure)


def test_sample_draws_rows_per_label(made_run, capsys):
    out = made_run / "conditional.png"
    assert main(["sample", str(made_run), "-n", "20", "-o", str(out), "--device", "cpu"]) == 0
    assert "20 samples (2 per label)" in capsys.readouterr().out and out.is_file()


def test_api_trains_a_conditional_vae_and_gan(tmp_path):
    energydsl.train("vae", tmp_path / "vae", conditional=True, epochs=1,
                    sizes={"hidden": 16}, progress=False)
    model, config = energydsl.load_run(tmp_path / "vae")
    assert config.conditional and model.context_dim == 10
    energydsl.train("gan", tmp_path / "gan", conditional=True, epochs=1, sizes={"z_dim": 8},
                    progress=False)
    history = json.loads((tmp_path / "gan" / "history.json").read_text())
    parts = history["epochs"][0]["valid_parts"]
    assert set(parts) == {"discriminator_loss", "generator_loss"}


def test_compare_conditions_the_models_that_take_a_context(tmp_path):
    entries = (Entry("MADE (binarised)", "made", lr=3e-3),
               Entry("masked Gaussian / SM", "masked_gaussian", "sm", lr=0.02))
    rows = compare(tmp_path, entries, epochs=1, conditional=True, log=lambda _: None,
                   progress=False, device="cpu")
    assert [r.label for r in rows] == ["MADE (binarised) given the label",
                                       "masked Gaussian / SM"]
    assert json.loads((tmp_path / "made" / "run.json").read_text())["config"]["conditional"]
    assert not json.loads((tmp_path / "masked_gaussian-sm" / "run.json").read_text()
                          )["config"]["conditional"]
    assert "given the label" in table(rows)
