"""A user's mistake on the command line: every command, driven with a catalogue of wrong
arguments, exits 2 with one line naming the problem (and the way out), no traceback, and
leaves no half-made run directory behind. Also the runs' own settings: run.json beside the
checkpoint, --resume restoring them, and what it refuses."""

from __future__ import annotations

import json

import pytest
import torch

from energydsl.cli import main

from support import SPECS

DEM = str(SPECS / "dem.edsl")
SMALL = ["--size", "H=4", "--size", "K=3", "--epochs", "1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A trained DEM run and a trained companion-model run (one epoch each)."""
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", DEM, *SMALL, "--out", str(root / "dem")]) == 0
    assert main(["train", "fvsbn", "--epochs", "1", "--out", str(root / "fvsbn")]) == 0
    return root


CUDA_MISSING = not torch.cuda.is_available()

# (arguments, words the one-line message must contain); RUN is the trained DEM run, FV the
# companion model's, OUT a fresh directory
CASES = [
    (["train", str(SPECS / "bbrbm.edsl"), "--objective", "mle", "--size", "K=32", "--out",
      "OUT"], ["mle", "states", "annealed importance sampling"]),
    (["train", DEM, "--size", "k=12", "--out", "OUT"], ["'k'", "D, H, K"]),
    (["train", DEM, "--size", "D=100", "--out", "OUT"], ["100", "data"]),
    (["train", DEM, "--option", "noise_std=0.3", "--out", "OUT"], ["sm", "noise_std"]),
    (["train", DEM, "--objective", "dsm", "--option", "nosie_std=0.3", "--out", "OUT"],
     ["nosie_std", "did you mean noise_std"]),
    (["train", "realnvpp", "--out", "OUT"], ["unknown model", "did you mean 'realnvp'"]),
    (["train", "realnvp", "--size", "K=3", "--out", "OUT"], ["'K'", "n_couplings"]),
    (["train", "realnvp", "--size", "hiden=3", "--out", "OUT"], ["did you mean hidden"]),
    (["train", DEM, "--size", "K=big", "--out", "OUT"], ["K=big", "positive integers"]),
    (["train", DEM, "--size", "K=2.5", "--out", "OUT"], ["K=2.5", "positive integers"]),
    (["train", "maf", "--size", "hidden=64,,64", "--out", "OUT"],
     ["--size expects", "128,128", "'hidden=64,,64'"]),
    (["train", "maf", "--size", "transform=splin", "--out", "OUT"], ["transform", "splin"]),
    (["train", DEM, "--epochs", "0", "--out", "OUT"], ["--epochs", "positive"]),
    (["train", DEM, "--lr", "-1", "--out", "OUT"], ["--lr"]),
    (["train", DEM, "--device", "tpu", "--out", "OUT"], ["--device tpu", "cpu"]),
    (["train", DEM, "--objective", "telepathy", "--out", "OUT"], ["telepathy"]),
    (["train", DEM, "--data", "nowhere", "--out", "OUT"], ["nowhere"]),
    (["train", DEM, *SMALL, "--out", "RUN"], ["already holds a run", "--overwrite"]),
    (["train", str(SPECS / "gbrbm.edsl"), "--out", "RUN"], ["already holds a run"]),
    (["train", DEM, "--resume", "--objective", "dsm", "--epochs", "2", "--out", "RUN"],
     ["objective", "the default", "dsm"]),
    (["train", DEM, "--conditional", "--out", "OUT"],
     ["--conditional", "energy model", "companion models"]),
    (["train", "made", "--conditional", "--data", "patches", "--out", "OUT"],
     ["--conditional", "patches has no labels", "--data digits"]),
    (["train", "made", "--size", "context_dim=10", "--out", "OUT"],
     ["--size context_dim", "--conditional"]),
    (["train", "fvsbn", "--resume", "--conditional", "--epochs", "2", "--out", "FV"],
     ["conditional = False", "--conditional True"]),
    (["compare", "--conditional", "--limit", "0", "--out", "OUT"], ["--limit"]),
    (["sample", "RUN", "--method", "gibbs"], ["gibbs", "hidden units", "mala"]),
    (["sample", "RUN", "-n", "0"], ["-n", "[1, 10000]"]),
    (["sample", "FV", "--method", "mala"], ["mala", "companion", "exactly"]),
    (["sample", "RUN", "--device", "tpu"], ["--device tpu"]),
    (["sample", "OUT"], ["OUT", "no such run", "energydsl train"]),
    (["sample", "RUN", "-o", "RUN/samples.unknown"], ["image format"]),
    (["report", "OUT"], ["OUT", "no such run"]),
    (["report", "RUN", "--steps", "0"], ["--steps"]),
    (["check", str(SPECS / "masked_gaussian.edsl"), "--size", "D=9"], ["'D'", "derived"]),
    (["check", DEM, "--size", "q=3"], ["'q'"]),
    (["compare", "--limit", "0", "--out", "OUT"], ["--limit"]),
    (["compare", "--epochs", "-2", "--out", "OUT"], ["--epochs"]),
    (["compare", "--device", "tpu", "--out", "OUT"], ["--device tpu"]),
    (["compile", DEM, "--time-limit", "-1"], ["--time-limit"]),
    (["frobnicate"], ["frobnicate", "--help"]),
]
if CUDA_MISSING:
    CASES.append((["train", DEM, "--device", "cuda", "--out", "OUT"],
                  ["CUDA is not available", "--device cpu"]))


def _status(argv: list[str]) -> int:
    """main's exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)


@pytest.mark.parametrize(("args", "words"), CASES, ids=[" ".join(a)[:70] for a, _ in CASES])
def test_a_wrong_argument_is_one_line_and_exit_2(args, words, runs, tmp_path, capsys):
    where = {"RUN": str(runs / "dem"), "FV": str(runs / "fvsbn"), "OUT": str(tmp_path / "new")}
    argv = [where.get(a, a.replace("RUN/", where["RUN"] + "/")) for a in args]
    status = _status(argv)
    captured = capsys.readouterr()
    message = captured.err.strip()
    assert status == 2, (argv, captured.out, captured.err)
    assert "Traceback" not in captured.err and "internal error" not in captured.err
    assert len(message.splitlines()) == 1, message
    for word in words:
        assert word.replace("OUT", where["OUT"]) in message, (word, message)
    assert not (tmp_path / "new").exists()  # nothing half-made left behind


def test_a_run_keeps_its_settings_and_resume_restores_them(runs, tmp_path):
    run = tmp_path / "dem"
    assert main(["train", DEM, *SMALL, "--seed", "3", "--out", str(run)]) == 0
    settings = json.loads((run / "run.json").read_text())
    assert settings["config"]["sizes"] == {"H": 4, "K": 3} and settings["config"]["seed"] == 3
    assert settings["epochs_done"] == 1 and "model DEM" in settings["spec_text"]
    # no --size, no --seed: both restored from the run, not the defaults
    assert main(["train", DEM, "--epochs", "2", "--resume", "--out", str(run)]) == 0
    settings = json.loads((run / "run.json").read_text())
    assert settings["config"]["sizes"] == {"H": 4, "K": 3} and settings["config"]["seed"] == 3
    assert settings["epochs_done"] == 2


def test_overwrite_replaces_another_run(runs, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", DEM, *SMALL, "--out", str(run)]) == 0
    assert main(["train", str(SPECS / "gbrbm.edsl"), "--size", "K=3", "--epochs", "1",
                 "--out", str(run), "--overwrite"]) == 0
    assert "model GBRBM" in json.loads((run / "run.json").read_text())["spec_text"]


@pytest.mark.skipif(CUDA_MISSING, reason="needs a CUDA device")
def test_training_and_sampling_on_cuda(tmp_path):
    run = tmp_path / "cuda"
    assert main(["train", DEM, *SMALL, "--device", "cuda", "--out", str(run)]) == 0
    assert main(["sample", str(run), "-n", "4", "--steps", "5", "--device", "cuda"]) == 0
    assert main(["report", str(run), "--steps", "5", "--device", "cuda"]) == 0
    assert main(["compare", "--limit", "1", "--epochs", "1", "--device", "cuda", "--out",
                 str(tmp_path / "compare")]) == 0
