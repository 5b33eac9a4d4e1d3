"""train, sample and report end to end, as a user runs them: outputs exist and are right,
runs are deterministic, resume to the same state, refuse a foreign checkpoint, stop on a
non-finite loss keeping the last good checkpoint, and match across torchrun processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

import energydsl
from energydsl.cli import main
from energydsl.train import loop as training
from energydsl.train.loop import RunConfig, TrainingError, load_checkpoint, train

from support import ROOT, SPECS, run_cli

QUICK = ["--size", "K=4", "--epochs", "2", "--batch-size", "128", "--lr", "0.01"]


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["model"]


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_train_writes_checkpoint_and_history_and_is_deterministic(tmp_path):
    for name in ("a", "b"):
        code = main(["train", str(SPECS / "gbrbm.edsl"), "--objective", "pcd", *QUICK,
                     "--out", str(tmp_path / name)])
        assert code == 0
    history = json.loads((tmp_path / "a" / "history.json").read_text())
    assert [r["epoch"] for r in history["epochs"]] == [1, 2]
    assert len(history["steps"]) == 2 * (1257 // 128)
    assert all(set(r["sm_terms"]) == {"squared_error", "variance", "curvature"}
               for r in history["epochs"])
    checkpoint = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    assert checkpoint["spec_hash"] == energydsl.api.spec_hash(
        (SPECS / "gbrbm.edsl").read_text())
    assert checkpoint["model"]["W"].shape == (64, 4)  # D set from the data, K from --size
    assert _same(_params(tmp_path / "a"), _params(tmp_path / "b"))


def test_a_compiled_training_step_gives_the_eager_losses(tmp_path):
    """--compile runs the step through torch.compile: the same losses to float32
    rounding, the first step's time recorded, and a resumed run keeps the setting."""
    args = ["train", str(SPECS / "gbrbm.edsl"), "--objective", "sm", "--size", "K=4",
            "--epochs", "1", "--batch-size", "128", "--lr", "0.01"]
    assert main([*args, "--out", str(tmp_path / "eager")]) == 0
    assert main([*args, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    eager, compiled = (json.loads((tmp_path / name / "history.json").read_text())
                       for name in ("eager", "compiled"))
    torch.testing.assert_close(torch.tensor(compiled["steps"]), torch.tensor(eager["steps"]),
                               rtol=1e-4, atol=1e-4)
    assert compiled["epochs"][0]["first_step_seconds"] > 0
    assert load_checkpoint(tmp_path / "compiled" / "checkpoint.pt")["config"]["compile"]
    resumed = ["train", str(SPECS / "gbrbm.edsl"), "--epochs", "2", "--resume",
               "--out", str(tmp_path / "compiled")]
    assert main(resumed) == 0


def test_resume_continues_to_the_same_state(tmp_path):
    spec = str(SPECS / "gbrbm.edsl")
    args = ["--objective", "fpcd", "--size", "K=4", "--batch-size", "128", "--lr", "0.01"]
    assert main(["train", spec, *args, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", spec, *args, "--epochs", "1", "--out", str(tmp_path / "cut")]) == 0
    assert not _same(_params(tmp_path / "full"), _params(tmp_path / "cut"))
    assert main(["train", spec, *args, "--epochs", "2", "--out", str(tmp_path / "cut"),
                 "--resume"]) == 0
    assert _same(_params(tmp_path / "full"), _params(tmp_path / "cut"))
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["history"]
    cut = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["history"]
    assert full["steps"] == cut["steps"]


def test_resuming_from_another_specs_checkpoint_is_refused(tmp_path, capsys):
    spec = tmp_path / "gbrbm.edsl"
    spec.write_text((SPECS / "gbrbm.edsl").read_text())
    run = str(tmp_path / "run")
    assert main(["train", str(spec), *QUICK, "--epochs", "1", "--out", run]) == 0
    spec.write_text(spec.read_text().replace("normal(0.01)", "normal(0.02)"))
    before = _params(tmp_path / "run")
    assert main(["train", str(spec), *QUICK, "--out", run, "--resume"]) == 2
    assert "checkpoint was made from a different model or spec" in capsys.readouterr().err
    assert _same(before, _params(tmp_path / "run"))  # untouched


def test_weights_of_another_shape_are_a_clear_error(tmp_path, capsys):
    """A checkpoint whose weights this module cannot hold (the masked Gaussian's precision
    stored dense, as energydsl stored it before keeping its stencil) fails to load with a
    message, for sampling and for resuming alike."""
    run = tmp_path / "run"
    assert main(["train", str(SPECS / "masked_gaussian.edsl"), "--epochs", "1",
                 "--batch-size", "256", "--out", str(run)]) == 0
    checkpoint = load_checkpoint(run / "checkpoint.pt")
    assert checkpoint["model"]["Lambda"].shape == (9, 64)
    checkpoint["model"]["Lambda"] = torch.zeros(64, 64)
    torch.save(checkpoint, run / "checkpoint.pt")
    capsys.readouterr()
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")]) == 1
    assert main(["train", str(SPECS / "masked_gaussian.edsl"), "--epochs", "2",
                 "--batch-size", "256", "--out", str(run), "--resume"]) == 1
    err = capsys.readouterr().err
    assert err.count("the checkpoint's weights do not fit this model") == 2, err
    assert "Lambda" in err and "Traceback" not in err


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    """The loss turns NaN in the second epoch: the run stops naming the step, and the
    checkpoint of epoch 1 is still there, loadable and unchanged."""
    build = training.build_objective
    calls = {"n": 0}

    def poisoned(config, model, prepared):
        objective = build(config, model, prepared)
        loss = objective.loss

        def maybe_nan(x):
            calls["n"] += 1
            value = loss(x)
            return value * float("nan") if calls["n"] == 12 else value
        objective.loss = maybe_nan
        return objective

    monkeypatch.setattr(training, "build_objective", poisoned)
    config = RunConfig(model=str(SPECS / "gbrbm.edsl"), epochs=3, batch_size=128, lr=0.01,
                       sizes={"K": 4})
    # 9 steps per epoch; call 10 is epoch 1's validation, so call 12 is step 11 (the
    # feasibility probe builds its own objective)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 11"):
        train(config, tmp_path, progress=False, log=lambda _: None)
    checkpoint = load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values())


def test_a_nan_from_the_model_is_reported_by_the_cli(tmp_path):
    spec = tmp_path / "bad.edsl"
    spec.write_text("model Bad\ndim D = 4\nvisible v : real[D]\nparam a[D] ~ ones\n"
                    "free energy F(v) = sum(i: a[i] * sqrt(v[i]))\n")
    result = run_cli("train", str(spec), "--epochs", "1", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "non-finite loss (nan) at epoch 1, step 1" in result.stderr
    assert "Traceback" not in result.stderr


def test_sample_and_report_write_the_expected_files(tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(SPECS / "masked_gaussian.edsl"), "--objective", "nce",
                 "--epochs", "2", "--lr", "0.02", "--out", str(run)]) == 0
    assert main(["sample", str(run), "-n", "16", "-o", str(tmp_path / "s.png")]) == 0
    image = matplotlib.image.imread(tmp_path / "s.png")
    height, width = image.shape[:2]  # a 4 x 4 grid of 8x8 digits with a colorbar, 150 dpi
    assert 300 <= height <= 600 and 350 <= width <= 800
    assert main(["report", str(run)]) == 0
    report = run / "report"
    assert {p.name for p in report.iterdir()} == {
        "index.md", "loss.png", "samples.png", "precision.png"}
    index = (report / "index.md").read_text()
    history = json.loads((run / "history.json").read_text())
    for record in history["epochs"]:  # the report's numbers are the run's
        assert f"| {record['epoch']} | {record['train_loss']:.6g} | " \
               f"{record['valid_loss']:.6g} |" in index


@pytest.mark.parametrize("name", ["made", "realnvp", "maf", "iaf", "gan"])
def test_companion_models_train_through_the_same_command(tmp_path, name):
    run = tmp_path / name
    assert main(["train", name, "--epochs", "1", "--lr", "0.003", "--out", str(run)]) == 0
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert (run / "samples.png").exists()


def test_size_sets_a_companion_models_words_lists_and_numbers_and_resume_keeps_them(
        tmp_path):
    """--size transform=spline hidden=32,32 bound=4.5 actnorm=false reach MAF's constructor,
    run.json keeps them (the list as a list), and a resume rebuilds the same model."""
    run = tmp_path / "maf"
    sizes = ["--size", "transform=spline", "--size", "hidden=32,32", "--size", "bound=4.5",
             "--size", "actnorm=false", "--size", "n_layers=2"]
    assert main(["train", "maf", *sizes, "--epochs", "1", "--out", str(run)]) == 0
    stored = json.loads((run / "run.json").read_text())["config"]["sizes"]
    assert stored == {"transform": "spline", "hidden": [32, 32], "bound": 4.5,
                      "actnorm": False, "n_layers": 2}
    model, config, _ = training.model_from_checkpoint(load_checkpoint(run / "checkpoint.pt"))
    spline = model.layers[0]
    assert type(spline).__name__ == "MaskedSpline" and spline.bound == 4.5
    assert len(model.layers) == 2
    assert main(["train", "maf", "--resume", *sizes, "--epochs", "2", "--out", str(run)]) == 0


def test_flow_weights_of_the_full_input_couplings_are_a_clear_error():
    """Flow checkpoints from before the half-input couplings (each network took all D
    inputs, half zeroed, and gave 2 D outputs) do not fit today's RealNVP: an error
    naming another version, not a traceback."""
    from energydsl.models import RealNVP

    model = RealNVP()
    old = {}
    for key, value in model.state_dict().items():
        shape = list(value.shape)
        if key.endswith("net.0.weight"):
            shape[1] = 64
        elif key.endswith(("net.4.weight", "net.4.bias")):
            shape[0] = 128
        elif key.endswith("scale"):
            shape = [64]
        old[key] = torch.zeros(shape)
    with pytest.raises(TrainingError, match="another version of energydsl"):
        training._load_weights(model, old, "old.pt")


def test_user_mistakes_are_clear_errors(tmp_path, capsys):
    assert main(["train", "no_such_model", "--out", str(tmp_path)]) == 2
    assert "unknown model 'no_such_model'" in capsys.readouterr().err
    assert main(["train", str(SPECS / "dem.edsl"), "--objective", "mle",
                 "--out", str(tmp_path)]) == 2
    assert "DEM has no exact log_prob" in capsys.readouterr().err
    assert main(["train", str(SPECS / "dem.edsl"), "--size", "Q=3",
                 "--out", str(tmp_path)]) == 2
    assert "no dimension named 'Q'" in capsys.readouterr().err
    assert main(["sample", str(tmp_path / "nothing")]) == 2
    assert "no such run or checkpoint" in capsys.readouterr().err


def test_load_compiles_in_memory_and_caches_by_hash(tmp_path):
    spec = tmp_path / "g.edsl"
    spec.write_text((SPECS / "gbrbm.edsl").read_text())
    first = energydsl.load(spec)
    assert energydsl.load(spec) is first
    model = first(D=3, K=2, dtype=torch.float64)
    assert model.free_energy(torch.zeros(1, 3, dtype=torch.float64)).item() == pytest.approx(
        -2 * torch.nn.functional.softplus(torch.zeros(())).item())
    spec.write_text(spec.read_text().replace("model GBRBM", "model Other"))
    assert energydsl.load(spec).__name__ == "Other"


def test_two_torchrun_processes_match_one_process(tmp_path):
    """DistributedDataParallel over gloo with a DistributedSampler: two ranks with half
    the batch each follow the one-process run with the same global batch."""
    args = ["train", str(SPECS / "gbrbm.edsl"), "--objective", "sm", "--size", "K=4",
            "--epochs", "2", "--batch-size", "128", "--lr", "0.01"]
    # a rank that aborts shows its Python stack (faulthandler), and where the run got to
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONFAULTHANDLER="1")
    single = subprocess.run([sys.executable, "-m", "energydsl", *args, "--out",
                             str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run",
                             "--standalone", "--nproc_per_node=2", "-m", "energydsl",
                             *args, "--out", str(tmp_path / "two")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert double.returncode == 0, (f"{double.stderr}\nstdout:\n{double.stdout}\nrun: "
                                    f"{sorted(p.name for p in (tmp_path / 'two').glob('*'))}")
    one, two = _params(tmp_path / "one"), _params(tmp_path / "two")
    assert one.keys() == two.keys()
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(one["W"], torch.zeros_like(one["W"]))


def test_compare_tabulates_held_out_likelihood_with_how_it_was_obtained(tmp_path, capsys):
    from energydsl.train.compare import Entry, compare, table

    entries = (Entry("masked", "specs/masked_gaussian.edsl", "mle", lr=0.02, epochs=1),
               Entry("mpot", "specs/mpot.edsl", "sm", (("K", 4), ("M", 4)), 0.01, 1),
               Entry("made", "made", lr=3e-3, epochs=1),
               Entry("nice", "nice", lr=1e-2, epochs=1))
    rows = compare(tmp_path, entries, ais_chains=50, ais_temperatures=100,
                   log=lambda _: None)
    # a dequantised flow's log_prob is a bound on the grey levels' log-probability
    assert [row.how.split(" ")[0] for row in rows] == ["exact", "AIS", "exact",
                                                       "dequantisation"]
    # the masked Gaussian's number, recomputed from its checkpoint: log p of the
    # standardised data, minus D log(scale) and D log(17) back to the discrete digits
    model, config, data_map = training.model_from_checkpoint(
        load_checkpoint(tmp_path / "masked_gaussian-mle" / "checkpoint.pt"))
    test = training.prepare(config, "energy").test
    expected = (model.log_prob(test).mean().item()
                - 64 * (torch.log(torch.tensor(data_map.scale)).item() + torch.log(
                    torch.tensor(17.0)).item()))
    assert rows[0].nats == pytest.approx(expected, rel=1e-6)
    assert rows[0].bits_per_dim == pytest.approx(-expected / (64 * 0.6931471805599453))
    text = table(rows[:3])
    assert text.count("\n") == 4 and "| mpot |" in text and "AIS (50 chains" in text
    # the masked Gaussian learns mu [64] and its 3 x 3 stencil [9, 64]
    assert rows[0].parameters == 64 + 9 * 64 and f"| {64 + 9 * 64:,} |" in text
    assert main(["compare", "--epochs", "1", "--limit", "1", "--out",
                 str(tmp_path / "cli")]) == 0
    assert "| masked Gaussian / SM |" in (tmp_path / "cli" / "RESULTS.md").read_text()


def test_the_verdict_names_the_best_model_per_data_set_and_ranks_the_flows():
    """Rows made up here: the best grey-level and binarised rows are named; the flows are
    ranked, and two within twice the larger standard error are called level."""
    from energydsl.train.compare import Row, verdict

    rows = [Row("RealNVP", -100.3, 0.7, 0, "exact", 1, 10, "realnvp"),
            Row("MAF (spline)", -92.0, 0.6, 0, "exact", 1, 20, "maf"),
            Row("RealNVP (spline)", -91.2, 0.6, 0, "exact", 1, 30, "realnvp"),
            Row("mPoT / SM", -146.7, 0.6, 0, "AIS", 1, 40, "mpot"),
            Row("NADE (binarised)", -19.3, 0.2, 0, "exact", 1, 50, "nade", True),
            Row("MADE (binarised)", -19.2, 0.2, 0, "exact", 1, 60, "made", True)]
    text = verdict(rows)
    assert "Best on the grey-level digits: RealNVP (spline), -91.20 +- 0.60" in text
    assert "Best on the binarised digits: MADE (binarised), -19.20" in text
    assert ("RealNVP (spline) (-91.20) ~ MAF (spline) (-92.00) > RealNVP (-100.30)."
            in text)
    assert "mPoT" not in text.split("Flows")[1]


def test_train_on_user_provided_mnist_idx_files(tmp_path):
    """A tiny fake MNIST in IDX format (written here with struct, independently of the
    reader): the run sizes the model from the 28 x 28 images."""
    import struct

    import numpy as np

    def write(name, array, magic):
        header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
        (tmp_path / name).write_bytes(header + array.astype(np.uint8).tobytes())

    rng = np.random.default_rng(0)
    for prefix, count in (("train", 40), ("t10k", 10)):
        write(f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)), 0x803)
        write(f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, (count,)), 0x801)
    run = tmp_path / "run"
    assert main(["train", str(SPECS / "gbrbm.edsl"), "--data", f"mnist:{tmp_path}",
                 "--size", "K=3", "--epochs", "1", "--batch-size", "8", "--out", str(run)]) == 0
    assert _params(run)["W"].shape == (784, 3)
    assert main(["train", str(SPECS / "gbrbm.edsl"), "--data", "mnist", "--out",
                 str(run)]) == 2
