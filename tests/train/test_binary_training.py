"""A model of binary (or spin) data through every command after `compile`, as a user runs
them: `train` gives it the binarised digits and an objective that applies (pl by default;
sm is a one-line error naming those that do), validates the CD family by the exact
pl_loss, resumes to the same state; `sample` and `report` draw binary samples; `compare`
scores it exactly. The BB-RBM keeps K small so its exact log p (2^K hidden states) is the
referee."""

from __future__ import annotations

import json
import math

import pytest
import torch

from energydsl.cli import main
from energydsl.train import loop as training
from energydsl.train.compare import ENTRIES, Entry, compare
from energydsl.train.data import load_digits
from energydsl.train.loop import RunConfig, load_checkpoint
from energydsl.train.prepare import _discrete_map
from energydsl.train.report import draw_samples

from support import ISING, SPECS

BBRBM = str(SPECS / "bbrbm.edsl")
QUICK = ["--size", "K=6", "--epochs", "2", "--lr", "0.01"]


def _trained(run):
    """(model, config, prepared data) of a run's last checkpoint."""
    model, config, _ = training.model_from_checkpoint(load_checkpoint(run / "checkpoint.pt"))
    return model, config, training.prepare(config, training.data_kind(config))


def _params(run) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


@pytest.mark.parametrize("objective", ["rm", "pl"])
def test_a_bbrbm_trains_on_the_binarised_digits_and_its_likelihood_rises(tmp_path, objective):
    run = tmp_path / objective
    assert main(["train", BBRBM, "--objective", objective, *QUICK, "--out", str(run)]) == 0
    model, config, prepared = _trained(run)
    assert training.data_kind(config) == "binary"
    assert torch.equal(prepared.train_values(), load_digits(binarize=True).train)
    losses = [r["valid_loss"] for r in json.loads((run / "history.json").read_text())["epochs"]]
    assert len(losses) == 2 and losses[1] < losses[0]
    initial = training.build_model(config, prepared.shape)  # the same seed: the same start
    with torch.no_grad():
        before = -initial.log_prob(prepared.test).mean().item()
        after = -model.log_prob(prepared.test).mean().item()
    assert before == pytest.approx(64 * math.log(2), abs=0.5)  # W ~ 0.01: near uniform
    assert after < before - 10, (before, after)


def test_binary_runs_default_to_pl_and_validate_the_cd_family_by_pl(tmp_path):
    """No --objective: pseudo-likelihood (score matching does not apply). CD's held-out
    number is the exact pl_loss, which leaves its chains alone."""
    for name, objective in (("default", []), ("cd", ["--objective", "cd"])):
        run = tmp_path / name
        assert main(["train", BBRBM, *objective, *QUICK, "--out", str(run)]) == 0
        model, _, prepared = _trained(run)
        history = json.loads((run / "history.json").read_text())
        with torch.no_grad():
            expected = model.pl_loss(prepared.valid).item()
        assert history["epochs"][-1]["valid_loss"] == pytest.approx(expected, rel=1e-6)
        assert "sm_terms" not in history["epochs"][-1]
    assert main(["report", str(tmp_path / "default")]) == 0
    assert "Objective `pl` on `digits`" in (tmp_path / "default" / "report" / "index.md"
                                             ).read_text()


def test_an_objective_for_the_other_kind_of_data_is_a_one_line_error(tmp_path, capsys):
    assert main(["train", BBRBM, "--objective", "sm", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "Traceback" not in err, err
    assert "objective 'sm' applies to continuous data, and BBRBM's are binary; use one of " \
           "cd, pcd, fpcd, mle, rm, pl" in err
    assert main(["train", str(SPECS / "gbrbm.edsl"), "--objective", "pl",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "objective 'pl' applies to discrete (binary or spin) data, and GBRBM's are real" \
           in err and "use one of sm, dsm" in err
    assert not (tmp_path / "a" / "checkpoint.pt").exists()


def test_pcd_on_binary_data_resumes_to_the_same_state(tmp_path):
    """The persistent chains (binary from the start) are in the checkpoint: a run cut
    after one epoch and resumed ends where the uncut run ends."""
    args = ["--objective", "pcd", "--size", "K=6", "--lr", "0.01"]
    assert main(["train", BBRBM, *args, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", BBRBM, *args, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    chains = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["objective"]["states"]
    assert chains.shape == (64, 64) and set(chains.unique().tolist()) <= {0.0, 1.0}
    assert main(["train", BBRBM, *args, "--epochs", "2", "--out", str(tmp_path / "cut"),
                 "--resume"]) == 0
    full, cut = _params(tmp_path / "full"), _params(tmp_path / "cut")
    assert all(torch.equal(full[k], cut[k]) for k in full)


def test_sample_and_report_show_binary_samples(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", BBRBM, "--objective", "cd", *QUICK, "--out", str(run)]) == 0
    model, _, data_map = training.model_from_checkpoint(load_checkpoint(run / "checkpoint.pt"))
    for method in ("auto", "gibbs", "flip"):  # exact (2^6 hidden states), then MCMC
        samples = draw_samples(model, data_map, 32, steps=20, method=method)
        assert samples.shape == (32, 64) and set(samples.unique().tolist()) <= {0.0, 1.0}
    for method in ("auto", "flip"):
        assert main(["sample", str(run), "-n", "16", "--steps", "20", "--method", method,
                     "-o", str(tmp_path / f"{method}.png")]) == 0
    capsys.readouterr()
    assert main(["sample", str(run), "--method", "mala"]) == 2
    assert "use 'flip' or 'gibbs'" in capsys.readouterr().err
    assert main(["report", str(run)]) == 0
    assert {p.name for p in (run / "report").iterdir()} == {
        "index.md", "loss.png", "samples.png", "filters.png"}


def test_a_spin_model_sees_the_binarised_digits_as_minus_one_and_one(tmp_path):
    """An Ising model (no hidden units, so no Gibbs): the data is 2 b - 1, samples come
    back as 0/1 pixels, by flips, and relabelling costs no likelihood."""
    spec = tmp_path / "ising.edsl"
    spec.write_text(ISING)
    run = tmp_path / "run"
    assert main(["train", str(spec), "--epochs", "1", "--lr", "0.01", "--out", str(run)]) == 0
    model, config, prepared = _trained(run)
    assert training.data_kind(config) == "spin"
    assert torch.equal(prepared.valid, 2 * load_digits(binarize=True).valid - 1)
    _, _, data_map = training.model_from_checkpoint(load_checkpoint(run / "checkpoint.pt"))
    with pytest.warns(RuntimeWarning, match="exact sampling failed"):  # 2^64 states
        assert main(["sample", str(run), "-n", "4", "--steps", "50", "-o",
                     str(tmp_path / "s.png")]) == 0
        samples = draw_samples(model, data_map, 8, steps=50)
    assert set(samples.unique().tolist()) <= {0.0, 1.0}
    spin = _discrete_map((1, 8, 8), "spin")
    assert torch.equal(spin.to_data(torch.tensor([-1.0, 1.0]).repeat(1, 32)),
                       torch.tensor([0.0, 1.0]).repeat(1, 32))
    assert -64 * math.log(spin.scale) - spin.log_jacobian == pytest.approx(0, abs=1e-12)


def test_compare_scores_the_bbrbm_exactly_on_the_binarised_digits(tmp_path):
    entry = Entry("BB-RBM / PL", BBRBM, "pl", (("K", 6),), lr=0.01, epochs=1)
    (row,) = compare(tmp_path, (entry,), log=lambda _: None)
    model, _, prepared = _trained(tmp_path / "bbrbm-pl")
    with torch.no_grad():
        expected = model.log_prob(prepared.test).mean().item()  # no correction: binary
    assert row.how == "exact" and row.nats == pytest.approx(expected, rel=1e-6)
    assert row.bits_per_dim == pytest.approx(-expected / (64 * math.log(2)))
    assert -35 < row.nats < -20  # better than the uniform 64 log 2 = 44.4 nats
    # the table's BB-RBM rows enumerate 2^K hidden states: affordable, so exact
    rows = [e for e in ENTRIES if e.model == "bbrbm"]
    assert {e.objective for e in rows} == {"pl", "rm", "cd", "pcd"}
    assert all(2 ** dict(e.sizes)["K"] <= 2**16 for e in rows)
    assert RunConfig(model=BBRBM).is_spec


def test_a_companion_models_arguments_decide_its_data_kind():
    """The instance's data_kind, not the class's: a gated PixelCNN over 17 grey levels
    trains on the grey digits, the binary default on the binarised ones."""
    grey = RunConfig(model="gated_pixelcnn", sizes={"levels": 17})
    assert training.data_kind(grey) == "continuous"
    assert training.data_kind(RunConfig(model="gated_pixelcnn")) == "binary"
    prepared = training.prepare(grey, training.data_kind(grey))
    assert len(torch.unique(prepared.train_values())) > 2
