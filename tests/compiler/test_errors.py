"""Every kind of user mistake: a positioned message with the source line and a caret,
exit status 1, no traceback, and no output file written or overwritten."""

from __future__ import annotations

import textwrap

import pytest

from energydsl.cli import main

from support import run_cli

HEADER = """\
model Bad
dim D = 4
dim K = 3
visible v : real[D]
"""

CASES = {
    "syntax": (
        HEADER + "energy E(v) = 1/2 * sum(i: v[i]^2 +)\n",
        """\
        bad.edsl:5:36: error: unexpected ')'; expected one of '(', '+', '-', 'logsumexp', 'sum', a name, a number
            energy E(v) = 1/2 * sum(i: v[i]^2 +)
                                               ^""",
    ),
    "unexpected character": (
        HEADER + "energy E(v) = sum(i: v[i]^2) $ 2\n",
        """\
        bad.edsl:5:30: error: unexpected character '$'
            energy E(v) = sum(i: v[i]^2) $ 2
                                         ^""",
    ),
    "unknown name": (
        HEADER + "energy E(v) = 1/2 * sum(i: v[i] * b[i])\n",
        """\
        bad.edsl:5:35: error: unknown name 'b'
            energy E(v) = 1/2 * sum(i: v[i] * b[i])
                                              ^""",
    ),
    "wrong number of indices": (
        HEADER + "hidden h : binary[K]\nparam W[D, K]\n"
        "energy E(v, h) = sum(i, j: v[i] * W[i] * h[j])\n",
        """\
        bad.edsl:7:35: error: 'W' has 2 indices but is used as W[i]
            energy E(v, h) = sum(i, j: v[i] * W[i] * h[j])
                                              ^~~~""",
    ),
    "index not bound by a sum": (
        HEADER + "param b[D]\nenergy E(v) = 1/2 * sum(i: v[i]^2) - b[i] * v[i]\n",
        """\
        bad.edsl:6:40: error: index 'i' is not bound by a sum
            energy E(v) = 1/2 * sum(i: v[i]^2) - b[i] * v[i]
                                                   ^""",
    ),
    "dimension mismatch": (
        HEADER + "hidden h : binary[K]\nparam W[D, K]\n"
        "energy E(v, h) = sum(i, j: v[i] * W[j, i] * h[j])\n",
        """\
        bad.edsl:7:40: error: dimension mismatch: index 'i' ranges over D (axis 1 of 'v' at 7:30) but indexes axis 2 of 'W', of size K
            energy E(v, h) = sum(i, j: v[i] * W[j, i] * h[j])
                                                   ^""",
    ),
    "hidden units interact": (
        HEADER + "hidden h : binary[K]\nparam W[D, K]\nparam U[K, K]\n"
        "energy E(v, h) = sum(i, j: v[i] * W[i, j] * h[j]) - sum(j, k: h[j] * U[j, k] * h[k])\n",
        """\
        bad.edsl:8:80: error: cannot marginalise 'h': units h[j] and h[k] interact in the term -sum(j, k: U[j, k]*h[j]*h[k])
            energy E(v, h) = sum(i, j: v[i] * W[i, j] * h[j]) - sum(j, k: h[j] * U[j, k] * h[k])
                                                                                           ^~~~""",
    ),
    "integral diverges": (
        HEADER + "hidden h : real[K]\nparam W[D, K]\n"
        "energy E(v, h) = sum(i: v[i]^2) - sum(j: h[j]^2) - sum(i, j: v[i] * W[i, j] * h[j])\n",
        """\
        bad.edsl:7:42: error: the integral over real hidden variable 'h' diverges: its energy -h^2 - h*sum(i: W[i, j]*v[i]) is not bounded below in h (the coefficient of h^2 must be positive)
            energy E(v, h) = sum(i: v[i]^2) - sum(j: h[j]^2) - sum(i, j: v[i] * W[i, j] * h[j])
                                                     ^~~~""",
    ),
    "no closed form": (
        HEADER + "hidden h : real[K]\nparam W[D, K]\n"
        "energy E(v, h) = sum(i: v[i]^2) + sum(j: h[j]^4) - sum(i, j: v[i] * W[i, j] * h[j])\n",
        """\
        bad.edsl:7:42: error: cannot marginalise real hidden variable 'h': its energy h^4 - h*sum(i: W[i, j]*v[i]) is not quadratic in h, so the integral has no closed form
            energy E(v, h) = sum(i: v[i]^2) + sum(j: h[j]^4) - sum(i, j: v[i] * W[i, j] * h[j])
                                                     ^~~~""",
    ),
    "unknown function": (
        HEADER + "energy E(v) = sum(i: sigmod(v[i]))\n",
        """\
        bad.edsl:5:22: error: unknown function 'sigmod'; the language has exp, log, log1p, sqrt, square, softplus, sigmoid, tanh, abs, relu, logsigmoid, cosh, sinh, logcosh, erf, sin, cos
            energy E(v) = sum(i: sigmod(v[i]))
                                 ^~~~~~""",
    ),
    "duplicate declaration": (
        HEADER + "param D[K]\nenergy E(v) = sum(i: v[i]^2)\n",
        """\
        bad.edsl:5:7: error: 'D' is already declared (line 2)
            param D[K]
                  ^""",
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_error_message(kind, tmp_path, capsys, monkeypatch):
    source, expected = CASES[kind]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.edsl").write_text(source)
    status = main(["compile", "bad.edsl", "-o", "out"])
    captured = capsys.readouterr()
    assert status == 1
    assert captured.err.rstrip("\n") == textwrap.dedent(expected)
    assert "Traceback" not in captured.err
    assert not (tmp_path / "out").exists()


def test_failing_compile_keeps_the_previous_output(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").mkdir()
    previous = tmp_path / "out" / "model.py"
    previous.write_text("# an earlier, good compile\n")
    (tmp_path / "model.edsl").write_text(CASES["unknown name"][0])
    assert main(["compile", "model.edsl", "-o", "out"]) == 1
    assert previous.read_text() == "# an earlier, good compile\n"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.py"]


def test_several_specs_continue_past_a_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.edsl").write_text(CASES["unknown name"][0])
    (tmp_path / "good.edsl").write_text(HEADER + "energy E(v) = 1/2 * sum(i: v[i]^2)\n")
    status = main(["compile", "bad.edsl", "good.edsl", "-o", "out"])
    err = capsys.readouterr().err
    assert status == 1
    assert (tmp_path / "out" / "good.py").exists()
    assert not (tmp_path / "out" / "bad.py").exists()
    assert err.endswith("energydsl: 1 of 2 specs failed: bad.edsl\n")


def test_missing_file_and_usage_errors(tmp_path):
    result = run_cli("compile", str(tmp_path / "nope.edsl"))
    assert result.returncode == 1
    assert result.stderr == f"{tmp_path / 'nope.edsl'}: error: no such file\n"
    result = run_cli("compile")
    assert result.returncode == 2
    assert "the following arguments are required: SPEC" in result.stderr
    result = run_cli("check", "--size", "K=zero", "specs/gbrbm.edsl")
    assert result.returncode == 2
    assert "--size expects NAME=POSITIVE_INTEGER, got 'K=zero'" in result.stderr


def test_spec_error_from_the_command_line_has_no_traceback(tmp_path):
    spec = tmp_path / "bad.edsl"
    spec.write_text(CASES["syntax"][0])
    result = run_cli("compile", str(spec), "-o", str(tmp_path / "out"))
    assert result.returncode == 1
    assert result.stderr.startswith(f"{spec}:5:36: error: unexpected ')'")
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
