"""The command line as a user meets it: compile, check, show, --help."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.cli import main

from support import ROOT, compile_text, run_cli


def test_compile_writes_an_importable_module(tmp_path):
    result = run_cli("compile", "specs/gbrbm.edsl", "-o", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"specs/gbrbm.edsl -> {tmp_path / 'gbrbm.py'} (class GBRBM)\n"
    code = ("import torch, gbrbm; m = gbrbm.GBRBM(D=10, K=3); "
            "print(tuple(m.sm_loss(torch.randn(5, 10)).shape))")
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                           text=True, check=True)
    assert shown.stdout == "()\n"


def test_compile_to_stdout(capsys):
    assert main(["compile", "specs/gaussian_rbm.edsl", "-o", "-"]) == 0
    assert capsys.readouterr().out == (ROOT / "generated" / "gaussian_rbm.py").read_text()


def test_check_passes_on_the_rbms(capsys):
    assert main(["check", "specs/gbrbm.edsl", "specs/gaussian_rbm.edsl"]) == 0
    out = capsys.readouterr().out
    assert "specs/gbrbm.edsl: all 21 checks passed" in out
    for row in ("dsm_loss", "ssm_loss", "nce_loss", "cnce_loss", "energy",
                "log_partition (enumerated)"):
        assert f"  {row} " in out
    assert "MISMATCH" not in out


@pytest.mark.parametrize("spec", ["dem", "mpot", "masked_gaussian"])
def test_check_passes_on_the_seed_models(spec):
    compiled = compile_text((ROOT / "specs" / f"{spec}.edsl").read_text())
    report = check_compiled(compiled)
    assert report.ok, report.table()
    quantities = {row.quantity for row in report.rows}
    assert {"free_energy", "score", "laplacian", "sm_loss", "dsm_loss", "ssm_loss", "nce_loss",
            "cnce_loss"} <= quantities
    if spec == "mpot":
        assert {"mean_hc", "mean_hm", "mean_v", "sm_terms[variance]"} <= quantities
    if spec == "masked_gaussian":
        assert {"log_partition", "log_prob"} <= quantities


def test_check_catches_a_wrong_derivation():
    """A check that cannot fail is no check: break the generated score, see it fail."""
    compiled = compile_text((ROOT / "specs" / "gbrbm.edsl").read_text())
    assert check_compiled(compiled).ok
    source = compiled.source
    broken = source.replace("score = _t7 - v", "score = _t7 - 1.0001 * v")
    assert broken != source
    compiled = dataclasses.replace(compiled, source=broken)
    report = check_compiled(compiled)
    failed = {row.quantity for row in report.rows if not row.ok}
    # the score feeds the objectives that use it (dsm, ssm); F-based ones stay right, and
    # so does sm_loss, which expands |score|^2 in the Gram form and never forms the score
    assert failed == {"score", "reconstruct", "dsm_loss", "ssm_loss"}
    # break the Gram form's cross term instead: the SM loss and its gradient fail
    compiled = dataclasses.replace(compiled, source=source.replace(
        "_t18 = -2 * _t14 + _t17 + _t2", "_t18 = -2.0001 * _t14 + _t17 + _t2"))
    assert compiled.source != source
    failed = {row.quantity for row in check_compiled(compiled).rows if not row.ok}
    assert {"sm_loss", "d sm_loss / d W"} <= failed and "score" not in failed


def test_check_with_sizes_and_a_failure_exit_status(tmp_path):
    result = run_cli("check", "specs/gbrbm.edsl", "--size", "D=3", "--size", "K=2")
    assert result.returncode == 0, result.stderr
    assert "GBRBM at D=3, K=2" in result.stdout
    result = run_cli("check", "specs/gbrbm.edsl", "--size", "Q=3")
    assert result.returncode == 2
    assert "--size: no dimension named 'Q'; its dimensions are D, K" in result.stderr


def test_show_prints_the_derived_formulas(capsys):
    assert main(["show", "specs/gbrbm.edsl"]) == 0
    out = capsys.readouterr().out
    assert "Free energy:  F = -sum(j: softplus(sum(i: W[i, j]*v[i]))) + sum(i: v[i]^2)/2" in out
    assert main(["show", "--latex", "specs/gaussian_rbm.edsl"]) == 0
    out = capsys.readouterr().out
    assert r"\sum_{i, j} W_{i j} h_{j} v_{i}" in out


def test_help_is_fast_and_explains_itself():
    code = ("import sys, energydsl.cli as c; c.build_parser().format_help(); "
            "print('torch' in sys.modules, 'sympy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout == "False False\n"
    help_text = run_cli("--help").stdout
    for word in ("compile", "check", "show", "examples:"):
        assert word in help_text
    assert "atomically" in run_cli("compile", "--help").stdout


def test_generated_module_runs_in_float32_and_float64():
    from support import load_class

    cls, _ = load_class("gbrbm")
    for dtype in (torch.float32, torch.float64):
        model = cls(D=6, K=2, dtype=dtype)
        assert model.sm_loss(torch.randn(4, 6, dtype=dtype)).dtype == dtype
