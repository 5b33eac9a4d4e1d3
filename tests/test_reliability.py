"""Every case of the security and robustness audit (issue 13), replayed: each ends in the
right result or a one-line error with the right exit status (1 a spec or run error, 2 a
usage error), never a traceback; a malicious checkpoint runs nothing.

The mathematics of the silent-wrong-answer cases is checked against independent
references (autograd in float64, torch.distributions); the command-line cases through
`energydsl.cli.main`, as a user's shell would see them.
"""

from __future__ import annotations

import gzip
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from energydsl.cli import main
from energydsl.compiler.driver import compile_source
from energydsl.compiler.functions import log1p, sigmoid, softplus
from energydsl.compiler.notation import latex
from energydsl.errors import MAX_SPEC_CHARS, SpecError
from energydsl.files import write_atomically
from energydsl.train import checkpoints
from energydsl.train.loop import load_checkpoint

from support import ROOT, SPECS, load_source

GBRBM = str(SPECS / "gbrbm.edsl")
QUICK = ["--size", "K=2", "--epochs", "1", "--batch-size", "128", "--lr", "0.01"]


def run(capsys, *args: str) -> tuple[int, str]:
    """(exit status, stderr) of `energydsl ARGS`; a traceback anywhere fails the test."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "internal error" not in captured.err, \
        captured.err
    return code, captured.err


def one_line(err: str) -> str:
    lines = [line for line in err.strip().split("\n") if line]
    assert lines, "no message"
    return lines[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch GBRBM run (K = 2)."""
    out = tmp_path_factory.mktemp("runs") / "gbrbm"
    assert main(["train", GBRBM, *QUICK, "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- checkpoints (critical)


class _Payload:
    """Unpickling this calls os.system, which would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_checkpoint_runs_nothing_in_any_command(tmp_path, capsys):
    marker = tmp_path / "pwned"
    run_dir = tmp_path / "evil"
    run_dir.mkdir()
    payload = {"format": checkpoints.FORMAT, "version": checkpoints.VERSION,
               "config": {"model": GBRBM}, "x": _Payload(marker)}
    torch.save(payload, run_dir / "checkpoint.pt")
    for args in (["sample", str(run_dir), "-n", "4", "-o", str(tmp_path / "s.png")],
                 ["report", str(run_dir)],
                 ["train", GBRBM, *QUICK, "--out", str(run_dir), "--resume"]):
        code, err = run(capsys, *args)
        assert code == 1, (args, err)
        assert "refused, nothing in it was run" in err and "posix.system" in err
    assert not marker.exists()


def _tampered(trained: Path, tmp_path: Path, name: str, change) -> Path:
    checkpoint = load_checkpoint(trained / "checkpoint.pt")
    changed = change(checkpoint)
    path = tmp_path / f"{name}.pt"
    torch.save(checkpoint if changed is None else changed, path)
    return path


MALFORMED = {
    "a saved list": (lambda c: [1, 2, 3], "the file should be a dict, found list"),
    "a dict without keys": (lambda c: {"format": checkpoints.FORMAT, "version": 2},
                            "the field 'config' is missing"),
    "no format marker": (lambda c: {k: v for k, v in c.items() if k != "format"},
                         "no 'format' marker"),
    "a newer format": (lambda c: {**c, "version": 9}, "format version 9; this energydsl "
                                                      "reads version 2; upgrade"),
    "bad spec text": (lambda c: {**c, "spec_text": c["spec_text"] + "# edited\n"},
                      "spec text does not match its SHA-256"),
    "another model's config": (lambda c: {**c, "config": {**c["config"], "model": "realnvp",
                                                         "sizes": {}},
                                          "spec_text": None, "spec_hash": None},
                               "the checkpoint's weights do not fit this model"),
    "another model's sizes": (lambda c: {**c, "config": {**c["config"], "model": "realnvp"},
                                         "spec_text": None, "spec_hash": None},
                              "the checkpoint's model cannot be built: realnvp: error: --size: no "
                              "argument named"),
    "an unknown config field": (lambda c: {**c, "config": {**c["config"], "evil": 1}},
                                "unknown field 'evil'"),
    "a config of the wrong type": (lambda c: {**c, "config": {**c["config"], "lr": "big"}},
                                   "lr = 'big'"),
    "weights that are not tensors": (lambda c: {**c, "model": {"W": [1.0]}},
                                     "the weight 'W' should be a tensor"),
    "an estimator state with extra keys": (lambda c: {**c, "objective": {"model": None}},
                                           "does not fit this run"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoints_are_clear_errors(case, trained, tmp_path, capsys):
    change, message = MALFORMED[case]
    path = _tampered(trained, tmp_path, "bad", change)
    if case == "an estimator state with extra keys":  # read when resuming
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        path.rename(run_dir / "checkpoint.pt")
        code, err = run(capsys, "train", GBRBM, *QUICK, "--epochs", "2", "--out",
                        str(run_dir), "--resume")
    else:
        code, err = run(capsys, "sample", str(path), "-n", "4", "-o",
                        str(tmp_path / "s.png"))
    assert code == 1 and message in one_line(err), err


def test_an_old_format_checkpoint_is_refused_with_a_reason(tmp_path, capsys):
    """Format 1 pickled energydsl's own classes; loading it would need them built."""
    from dataclasses import dataclass

    @dataclass
    class OldPrepared:  # stands in for format 1's pickled energydsl.train.loop class
        shape: tuple

    OldPrepared.__module__, OldPrepared.__qualname__ = "energydsl.train.loop", "OldPrepared"
    import energydsl.train.loop

    energydsl.train.loop.OldPrepared = OldPrepared  # so torch.save can pickle it by name
    try:
        torch.save({"format": 1, "prepared": OldPrepared((1, 8, 8))}, tmp_path / "old.pt")
    finally:
        del energydsl.train.loop.OldPrepared
    code, err = run(capsys, "sample", str(tmp_path / "old.pt"))
    assert code == 1 and "older energydsl (format 1" in err


# ---------------------------------------------------------------- input bounds (medium)


def idx(array: np.ndarray, magic: int, dims: tuple[int, ...] | None = None) -> bytes:
    dims = array.shape if dims is None else dims
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def mnist(root: Path, n_train: int, n_test: int, side: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        (root / f"{part}-images-idx3-ubyte").write_bytes(idx(images, 0x803))
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        (root / f"{part}-labels-idx1-ubyte").write_bytes(idx(labels, 0x801))
    return root


@pytest.mark.parametrize(("n_train", "n_test", "side", "message"), [
    (0, 5, 4, "0 images; need at least 10 training images"),
    (1, 5, 4, "1 images; need at least 10"),
    (2, 5, 4, "2 images; need at least 10"),
    (20, 0, 4, "need at least 10 training images (10% of them validate) and 1 test image"),
    (20, 5, 0, "images of 0 x 0 pixels"),
])
def test_degenerate_idx_datasets_are_clear_errors(tmp_path, capsys, n_train, n_test, side,
                                                  message):
    root = mnist(tmp_path / "data", n_train, n_test, side)
    code, err = run(capsys, "train", GBRBM, "--data", f"mnist:{root}", "--out",
                    str(tmp_path / "run"))
    assert code == 1 and message in err


def test_an_idx_bomb_is_refused_before_anything_is_allocated(tmp_path, capsys):
    """A 2 MB gzip whose header declares 2^31 images, and a sparse file matching its
    header: both refused by the pixel budget, at once."""
    root = mnist(tmp_path / "data", 20, 5)
    header = struct.pack(">IIII", 0x803, 2**31 - 1, 28, 28)
    with gzip.open(root / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(header + bytes(2 << 20))
    (root / "train-images-idx3-ubyte").unlink()
    code, err = run(capsys, "train", GBRBM, "--data", f"mnist:{root}", "--out",
                    str(tmp_path / "run"))
    assert code == 1 and "more than the limit of 100,000,000" in err
    sparse = root / "t10k-images-idx3-ubyte"
    with open(sparse, "wb") as handle:  # 20 GB on paper, a few bytes on disk
        handle.write(struct.pack(">IIII", 0x803, 25_000_000, 28, 28))
        handle.truncate(16 + 25_000_000 * 784)
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx(
        np.zeros((20, 28, 28), np.uint8), 0x803)))
    code, err = run(capsys, "train", GBRBM, "--data", f"mnist:{root}", "--max-pixels",
                    "1000000", "--out", str(tmp_path / "run"))
    assert code == 1 and "more than the limit of 984,320" in err  # 10^6 less the 15,680


def test_training_keeps_grey_levels_as_bytes_until_batches_form(tmp_path):
    """The stored training split is uint8; each batch is dequantised from it, the same
    rows to the same values whatever the batch (fixed noise per pixel and seed)."""
    from energydsl.train.loop import RunConfig, prepare

    prepared = prepare(RunConfig(model=GBRBM), "energy")
    assert prepared.train.dtype == torch.uint8
    rows = torch.tensor([5, 17, 3])
    once = prepared.encode(prepared.train[rows], rows)
    again = prepared.encode(prepared.train[torch.tensor([17])], torch.tensor([17]))
    assert once.dtype == torch.float32 and torch.equal(once[1], again[0])
    values = prepared.map.to_data(once)
    codes = prepared.train[rows].float()
    assert bool(((values * 17 - codes) >= -1e-4).all() and ((values * 17 - codes) < 1).all())


def test_a_spec_past_the_size_limit_is_refused_before_parsing():
    """14 MB of additions took 239 s before; now one positioned error, at once."""
    import time

    text = "model M\ndim D = 3\nvisible v : real[D]\nfree energy F(v) = sum(i: v[i]^2" \
        + " + v[i]" * (2 * MAX_SPEC_CHARS // 7) + ")\n"
    start = time.perf_counter()
    with pytest.raises(SpecError) as info:
        compile_source(text, "big.edsl")
    assert time.perf_counter() - start < 1
    (diagnostic,) = info.value.diagnostics
    assert "more than the limit of 1,048,576 (1 MiB)" in diagnostic.message
    line = text[:MAX_SPEC_CHARS].count("\n") + 1
    assert diagnostic.span.line == line == 4


def test_parsing_runs_inside_the_time_limit():
    """A spec under the size limit that is slow to parse: the limit covers parsing."""
    text = "model M\ndim D = 3\nvisible v : real[D]\n" + "".join(
        f"dim E{k} = {k + 1}\n" for k in range(50_000)) + "free energy F(v) = sum(i: v[i]^2)\n"
    assert len(text) < MAX_SPEC_CHARS
    with pytest.raises(SpecError, match=r"(parsing|checking|lowering) this spec took longer than "
                                        r"0.2 s.*the spec is too large \(\d"):
        compile_source(text, "slow.edsl", time_limit=0.2)


# ---------------------------------------------------------------- silent wrong answers


def _autograd_sm(model, v: torch.Tensor) -> torch.Tensor:
    v = v.clone().requires_grad_(True)
    score = -torch.autograd.grad(model.free_energy(v).sum(), v, create_graph=True)[0]
    laplacian = sum(torch.autograd.grad(score[:, i].sum(), v, create_graph=True)[0][:, i]
                    for i in range(v.shape[1]))
    return (0.5 * score.square().sum(dim=1) + laplacian).mean()


def test_sm_loss_of_a_power_of_a_sum_and_the_warning():
    """F = sum(i: v[i])^4: the audit's 4515.36 where autograd gives 13995.28 (D = 3)."""
    text = "model P\ndim D = 3\nvisible v : real[D]\nfree energy F(v) = sum(i: v[i])^4\n"
    compiled = compile_source(text, "p.edsl")
    (warning,) = compiled.warnings
    assert warning.severity == "warning" and "only through 1 linear combination" in \
        warning.message
    model = load_source(text, "power")(D=3, dtype=torch.float64)
    v = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(model.sm_loss(v), _autograd_sm(model, v), rtol=1e-12, atol=0)


def test_a_parameter_free_gaussian_is_normalised_exactly():
    model = load_source("model G\ndim D = 3\nvisible v : real[D]\n"
                        "free energy F(v) = sum(i: v[i]^2)\n", "free")(dtype=torch.float64)
    reference = torch.distributions.MultivariateNormal(
        torch.zeros(3, dtype=torch.float64), 0.5 * torch.eye(3, dtype=torch.float64))
    v = torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(model.log_prob(v), reference.log_prob(v))
    draws = model.sample(20_000, generator=torch.Generator().manual_seed(1))
    assert draws.dtype == torch.float64
    assert float((draws.var(dim=0) - 0.5).abs().max()) < 0.03
    assert model.float().sample(2).dtype == torch.float32  # the anchor follows .float()


def test_integer_literals_beyond_64_bits_work():
    big = 10**23
    model = load_source(f"model B\ndim D = 3\nvisible v : real[D]\nparam a[D] ~ ones\n"
                        f"free energy F(v) = sum(i: v[i]^2 + a[i]*v[i]) + {big}\n",
                        "big")(dtype=torch.float64)
    v = torch.randn(4, 3, dtype=torch.float64)
    expected = v.square().sum(dim=1) + v.sum(dim=1) + float(big)
    torch.testing.assert_close(model.free_energy(v), expected)
    torch.testing.assert_close(model.sm_loss(v), _autograd_sm(model, v))


@pytest.mark.parametrize("function", ["exp", "log", "log1p", "sqrt", "square", "softplus",
                                      "sigmoid", "tanh", "abs"])
def test_show_latex_prints_every_function_at_every_power(function, capsys, tmp_path):
    for power in ("2", "3", "1/2", "-1", "v[i]"):
        spec = tmp_path / "f.edsl"
        spec.write_text(f"model F\ndim D = 2\nvisible v : real[D]\nparam a[D]\n"
                        f"free energy F(v) = sum(i: v[i]^2 + {function}(1 + a[i] * v[i]^2)"
                        f"^{power})\n")
        code, err = run(capsys, "show", "--latex", str(spec))
        assert code in (0, 1), err
        if code == 1:  # a spec error (e.g. a power of a function the compiler refuses)
            assert err.startswith(f"{spec}:") and ": error: " in err


def test_latex_of_powers_of_the_added_functions():
    import sympy as sp

    x = sp.Symbol("x")
    assert latex(softplus(x) ** 2) == r"\operatorname{softplus}^{2}\left(x\right)"
    assert latex(sigmoid(x) ** 3) == r"\sigma^{3}\left(x\right)"
    assert latex(log1p(x) ** 2) == r"\log^{2}\left(1 + x\right)"


def test_check_of_an_energy_linear_in_v(capsys, tmp_path):
    spec = tmp_path / "lin.edsl"
    spec.write_text("model Lin\ndim D = 3\nvisible v : real[D]\nparam a[D] ~ ones\n"
                    "free energy F(v) = sum(i: a[i] * v[i])\n")
    code, err = run(capsys, "check", str(spec))
    assert code == 0
    assert "warning: the model cannot be normalised: F is linear in 'v'" in err


# ---------------------------------------------------------------- training guards


def test_resume_with_a_new_learning_rate_applies_and_records_it(trained, tmp_path, capsys):
    import json
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    code, err = run(capsys, "train", GBRBM, "--out", str(run_dir), "--resume", "--epochs",
                    "2", "--lr", "0.004")
    assert code == 0, err
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    assert checkpoint["config"]["lr"] == 0.004
    assert [g["lr"] for g in checkpoint["optimisers"][0]["param_groups"]] == [0.004]
    history = json.loads((run_dir / "history.json").read_text())
    assert [r["lr"] for r in history["epochs"]] == [0.01, 0.004]
    code, err = run(capsys, "train", GBRBM, "--out", str(run_dir), "--resume", "--epochs",
                    "3", "--objective", "dsm")
    assert code == 2 and "a resumed run keeps it" in err


@pytest.mark.parametrize(("args", "message"), [
    (["--epochs", "0"], "--epochs: expected a positive integer"),
    (["--lr", "nan"], "--lr: expected a positive number"),
    (["--lr", "-1"], "--lr: expected a positive number"),
    (["--batch-size", "100000"], "--batch-size 100000 is larger than the 1257 training"),
    (["--objective", "dsm", "--option", "noise_std=-1"], "must be a positive number"),
    (["--option", "noise_std=0.3"], "objective 'sm' has no option 'noise_std'"),
    (["--objective", "dsm", "--option", "noise_sd=0.3"], "did you mean noise_std?"),
    (["--objective", "pcd", "--option", "k=1.5"], "must be a positive integer"),
    (["--objective", "mle", "--size", "K=64"], "cannot run on this model: exact enumeration "
                                               "needs 2^64"),
    (["--size", "K=100000"], "does not fit in memory at these sizes"),
    (["--size", "k=12"], "no dimension named 'k'; its dimensions are D, K"),
])
def test_training_arguments_are_checked_before_the_first_step(args, message, tmp_path, capsys):
    code, err = run(capsys, "train", GBRBM, *args, "--out", str(tmp_path / "run"))
    assert code == 2 and message in err, err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_train_refuses_an_unusable_out_and_an_unreadable_spec(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    code, err = run(capsys, "train", GBRBM, "--out", str(file))
    assert code == 2 and "is a file, not a run directory" in err
    latin = tmp_path / "latin.edsl"
    latin.write_bytes("# caf\xe9\n".encode("latin-1"))
    code, err = run(capsys, "train", str(latin), "--out", str(tmp_path / "r"))
    assert code == 1 and err.strip() == f"{latin}: error: not UTF-8 text (invalid " \
        "continuation byte at byte 5)"


@pytest.mark.parametrize(("spec", "args", "message"), [
    (GBRBM, ["--lr", "1000", "--size", "K=8"], "diverged: loss"),
    (GBRBM, ["--lr", "1.3e17", "--size", "K=8"], "diverged: parameter W reached"),
    (str(SPECS / "gaussian_rbm.edsl"), ["--objective", "mle", "--lr", "3e-3"],
     "the model failed (the precision is not positive definite"),
    (str(SPECS / "masked_gaussian.edsl"), ["--objective", "nce", "--lr", "1e6"],
     "diverged: parameter Lambda reached"),
])
def test_a_run_going_wrong_stops_keeping_a_good_checkpoint(spec, args, message, tmp_path,
                                                           capsys):
    out = tmp_path / "run"
    code, err = run(capsys, "train", spec, *args, "--epochs", "3", "--out", str(out))
    assert code == 1 and message in err, err
    assert f"the last good checkpoint is {out / 'checkpoint.pt'}" in err
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert all(torch.isfinite(w).all() and float(w.abs().max()) < 1e6
               for w in checkpoint["model"].values())
    code, _ = run(capsys, "sample", str(out), "-n", "4", "--steps", "5", "-o",
                  str(tmp_path / "s.png"))
    assert code == 0  # the kept checkpoint is usable


# ---------------------------------------------------------------- generated modules


@pytest.fixture(scope="module")
def gbrbm_class():
    return load_source((SPECS / "gbrbm.edsl").read_text(), "gbrbm_reliability")


def test_validate_names_the_method_and_the_first_bad_row(gbrbm_class):
    model = gbrbm_class(D=3, K=2, validate=True)
    x = torch.randn(4, 3)
    x[2, 1] = float("nan")
    for method in ("free_energy", "score", "sm_loss", "mean_h", "sample_h"):
        with pytest.raises(ValueError, match=rf"^{method}: v has a non-finite value \(nan or "
                                             r"inf\) in row 2"):
            getattr(model, method)(x)
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match=r"^dsm_loss: v has a non-finite value"):
        model.dsm_loss(x, 0.1)
    assert torch.isnan(gbrbm_class(D=3, K=2).free_energy(x)).any()  # off by default


def test_bad_arguments_to_generated_methods_are_clear(gbrbm_class):
    model = gbrbm_class(D=3, K=2)
    x = torch.randn(4, 3)
    cases = [
        (lambda: model.score(torch.zeros(0, 3)), ValueError, "score: v is an empty batch"),
        (lambda: model.nce_loss(x, None), TypeError,
         "nce_loss: noise must be a distribution with sample() and log_prob()"),
        (lambda: model.sample_h([[1.0, 2.0, 3.0]]), TypeError,
         "sample_h: expected v as a torch.Tensor, got list"),
        (lambda: model.sample_h(x, generator="seed"), TypeError,
         "sample_h: generator must be a torch.Generator or None, got str"),
        (lambda: model.sample_h(x.double()), ValueError,
         "sample_h: expected v with dtype torch.float32"),
        (lambda: model.sample(0), ValueError, "sample: n must be a positive integer, got 0"),
        (lambda: model.dsm_loss(x, float("inf")), ValueError,
         "dsm_loss: noise_std must be a positive finite number, got inf"),
        (lambda: model.ssm_loss(x, projections=3), TypeError,
         "ssm_loss: expected projections as a torch.Tensor, got int"),
        (lambda: model.cnce_loss(x, 0.1, noise=torch.zeros(2, 4, 2)), ValueError,
         r"cnce_loss: expected noise of shape [k, 4, 3], got [2, 4, 2]"),
        (lambda: model.log_partition(max_states=-1), ValueError,
         "log_partition: max_states must be a positive integer, got -1"),
    ]
    for call, kind, message in cases:
        with pytest.raises(kind) as info:
            call()
        assert str(info.value).startswith(message), str(info.value)


# ---------------------------------------------------------------- command-line misuse


def test_compile_output_paths(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("")
    spec = str(SPECS / "gaussian_rbm.edsl")
    for target in (str(file), str(file / "sub"), "/dev/null"):
        code, err = run(capsys, "compile", spec, "-o", target)
        assert code == 2 and "is not a directory" in err, err
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        code, err = run(capsys, "compile", spec, "-o", str(locked))
        assert code == 2 and "is not writable" in err


@pytest.mark.parametrize("value", ["1e300", "-1", "nan", "inf"])
def test_time_limits_outside_their_range(value, capsys):
    code, err = run(capsys, "compile", GBRBM, "-o", "-", "--time-limit", value)
    assert code == 2 and "--time-limit: expected seconds between 0 (no limit) and 1e+06" in err


@pytest.mark.parametrize(("args", "message"), [
    (["-n", "0"], "-n: expected an integer in [1, 10000]"),
    (["-n", "-5"], "-n: expected an integer in [1, 10000]"),
    (["--steps", "-1"], "--steps: expected a positive integer"),
    (["-o", "x.unknown"], "unknown image format '.unknown'"),
])
def test_sample_arguments(args, message, trained, capsys):
    code, err = run(capsys, "sample", str(trained), *args)
    assert code == 2 and message in err


def test_check_sizes_it_cannot_afford_and_derived_sizes(capsys):
    code, err = run(capsys, "check", GBRBM, "--size", "K=40")
    assert code == 2 and "more than 2,000,000; use smaller hidden sizes" in err
    code, err = run(capsys, "check", str(SPECS / "masked_gaussian.edsl"), "--size", "D=9")
    assert code == 2 and "'D' is derived from other dimensions" in err


@pytest.mark.parametrize(("stem", "message"), [
    ("..", "has no ASCII letters or digits"),
    (" ", "has no ASCII letters or digits"),
    ("__init__", "a name Python gives a special meaning"),
    ("torch", "would shadow the module 'torch'"),
    ("json", "would shadow the module 'json'"),
])
def test_output_names_that_would_be_empty_or_shadow_a_module(stem, message, tmp_path, capsys):
    spec = tmp_path / f"{stem}.edsl"
    spec.write_text((SPECS / "gaussian_rbm.edsl").read_text())
    code, err = run(capsys, "compile", str(spec), "-o", str(tmp_path / "out"))
    assert code == 2 and message in err
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- file hygiene (low)


def test_outputs_get_the_umask_mode(tmp_path, capsys):
    previous = os.umask(0o027)
    try:
        run(capsys, "compile", str(SPECS / "gaussian_rbm.edsl"), "-o", str(tmp_path))
    finally:
        os.umask(previous)
    assert (tmp_path / "gaussian_rbm.py").stat().st_mode & 0o777 == 0o640


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "model.py"
    stale = tmp_path / ".model.py.abc123.tmp"  # what a SIGKILL mid-write leaves
    stale.write_text("half")
    other = tmp_path / ".other.py.abc123.tmp"
    other.write_text("another file's")
    write_atomically(target, "x = 1\n")
    assert target.read_text() == "x = 1\n" and not stale.exists() and other.exists()


def test_sigterm_during_a_write_leaves_nothing_behind(tmp_path):
    code = f"""
import os, signal, time
from pathlib import Path
from energydsl.files import exit_on_sigterm, write_atomically
exit_on_sigterm()
def slow(handle):
    handle.write(b"half")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
write_atomically(Path({str(tmp_path / 'out.pt')!r}), slow)
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60,
                            capture_output=True)
    assert result.returncode == 128 + signal.SIGTERM
    assert list(tmp_path.iterdir()) == []
