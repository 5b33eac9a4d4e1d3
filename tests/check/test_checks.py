"""`energydsl check` itself: it never crashes on a spec that compiles. A precision that
random parameters make indefinite is checked to be refused and then checked at parameters
where it is positive definite; a method that raises is a mismatch row; what cannot be
checked is said."""

from __future__ import annotations

import dataclasses

from energydsl.check.checks import check_compiled
from energydsl.compiler.driver import compile_source

INDEFINITE = """model Indef
dim D = 3
dim K = 2
visible v : real[D]
hidden h : binary[K]
param W[D, K]
param s[D]
energy E(v, h) = sum(i: s[i] * v[i]^2) - sum(i, k: v[i] * W[i, k] * h[k])
"""


def test_an_indefinite_visible_precision_is_refused_then_checked_where_definite():
    report = check_compiled(compile_source(INDEFINITE, "indef.edsl"))
    quantities = [row.quantity for row in report.rows]
    assert report.ok, report.table()
    for method in ("mean_v", "log_partition (enumerated)"):
        assert f"{method} refuses an indefinite precision" in quantities
        assert method in quantities  # its value, at parameters found positive definite
    assert not report.notes


def test_a_method_raising_on_valid_input_is_a_mismatch_not_a_crash():
    compiled = compile_source(INDEFINITE, "indef.edsl")
    broken = compiled.source.replace('        """E[h | v]', '        raise RuntimeError("boom")\n'
                                     '        """E[h | v]', 1)
    assert broken != compiled.source
    report = check_compiled(dataclasses.replace(compiled, source=broken))
    failed = [row for row in report.rows if not row.ok]
    assert [row.quantity for row in failed] == ["hidden conditionals: RuntimeError: boom"]
    assert "RuntimeError: boom" in report.table()


def test_what_cannot_be_checked_is_said():
    """(sum v)^2 has a singular precision at every parameter: no normaliser to check."""
    text = ("model S\ndim D = 3\nvisible v : real[D]\nparam a[D]\n"
            "free energy F(v) = sum(i: v[i])^2 + sum(i: a[i] * v[i])\n")
    report = check_compiled(compile_source(text, "s.edsl"))
    assert report.ok, report.table()
    assert report.notes and "log_partition" in report.notes[0]
    assert "not checked: log_partition" in report.table()


def test_a_gaussian_formula_on_an_energy_that_is_not_quadratic_is_a_mismatch(monkeypatch):
    """The check's Gaussian references (Hessian and gradient at 0) share the premise
    that the energy is quadratic; each checks it at its points first, so a compiler that
    took relu(u) for quadratic (its Hessian is zero almost everywhere) is caught even
    where the formula and its reference agree."""
    from energydsl.compiler import conditionals

    def hessian_only(gradient, hessian, base, lookup):  # the compiler's rule before
        return hessian != 0 and not conditionals.depends_on(hessian, base, lookup)

    monkeypatch.setattr(conditionals, "quadratic", hessian_only)
    text = ("model Kinked\ndim D = 3\ndim W = 2\ndim K = 2\nvisible v : real[D]\n"
            "hidden h : binary[K]\nparam U[W, D] ~ normal(1.0)\nparam c[W] ~ normal(1.0)\n"
            "param G[D, K] ~ normal(0.5)\n"
            "energy E(v, h) = sum(i: v[i]^2) / 2 + sum(w: relu(sum(i: U[w, i] * v[i]) + c[w]))"
            " - sum(i, k: v[i] * G[i, k] * h[k])\n")
    report = check_compiled(compile_source(text, "kinked.edsl"))
    failed = {row.quantity for row in report.rows if not row.ok}
    assert {"E quadratic in v", "E quadratic in v, all states"} <= failed, report.table()
    free = text.replace("hidden h : binary[K]\n", "").replace(
        " - sum(i, k: v[i] * G[i, k] * h[k])", "").replace("energy E(v, h)", "free energy F(v)")
    report = check_compiled(compile_source(free, "kinked.edsl"))
    assert "F quadratic in v" in {row.quantity for row in report.rows if not row.ok}, \
        report.table()
