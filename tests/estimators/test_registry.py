"""Conformance of the estimator registry (energydsl.estimators): every registered estimator
has every part it needs, and each part works. An estimator added without its objective,
partial, check or reserved names fails here."""

from __future__ import annotations

import ast
import dataclasses
import importlib
from pathlib import Path

import pytest
import torch

from energydsl.check.checks import check_compiled
from energydsl.cli import build_parser
from energydsl.compiler.driver import compile_source
from energydsl.compiler.emit.module import render
from energydsl.compiler.names import METHOD_LOCALS, RESERVED_ATTRIBUTES
from energydsl.estimators import NAMES, Objective, get

from support import GENERATED, SPECS, load_source

PACKAGE = Path(importlib.import_module("energydsl.estimators").__file__).parent
GBRBM = (SPECS / "gbrbm.edsl").read_text()
BBRBM = (SPECS / "bbrbm.edsl").read_text()


def test_names_and_modules_agree():
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "base")}
    assert modules == set(NAMES) and len(NAMES) == len(set(NAMES))
    for name in NAMES:
        assert get(name).name == name


@pytest.mark.parametrize("name", NAMES)
def test_the_objective_is_complete(name):
    estimator = get(name)
    assert issubclass(estimator.objective, Objective)
    assert estimator.objective.loss is not Objective.loss
    assert estimator.summary and estimator.objective.__doc__ or estimator.objective.__module__


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).method])
def test_a_method_is_emitted_reserved_and_checked(name):
    estimator = get(name)
    assert estimator.check is not None, "a method the module carries needs a check"
    assert estimator.method in RESERVED_ATTRIBUTES
    for module in GENERATED.glob("*.py"):
        text = module.read_text()
        domain = "binary" if 'visible_domain = "binary"' in text else \
            "spin" if 'visible_domain = "spin"' in text else "real"
        emitted = f"    def {estimator.method}(" in text
        assert emitted == estimator.applies_to(domain), (module, domain)
    if estimator.template is None:
        return  # planned by the compiler (sm_loss)
    assert (PACKAGE / "templates" / estimator.template).is_file()
    for visible, dim, normalised in (("v", "D", True), ("data", "N", False)):
        text = render(f"estimators/{estimator.template}", v=visible, dim=dim,
                      normalised=normalised)
        tree = ast.parse(f"class M:\n{text}\n")
        (method,) = tree.body[0].body
        assert method.name == estimator.method
        arguments = {a.arg for a in method.args.args[2:]}  # after self and the data
        assigned = {t.id for node in ast.walk(method) for t in getattr(node, "targets", [])
                    if isinstance(t, ast.Name)}
        # a spec variable named like one of these would be shadowed inside the method,
        # so each must be a name specs may not use
        allowed = METHOD_LOCALS | RESERVED_ATTRIBUTES | {"_batch"}
        assert arguments | assigned <= allowed, sorted((arguments | assigned) - allowed)


@pytest.mark.parametrize("name", [n for n in NAMES if get(n).check])
def test_the_check_passes_and_can_fail(name):
    """On a small GBRBM the check agrees; with the method's value scaled by 1.01 it
    reports a mismatch on that method's row."""
    estimator = get(name)
    spec = GBRBM.replace("dim K = 64", "dim K = 2") if estimator.applies_to("real") \
        else BBRBM.replace("dim K = 64", "dim K = 2")
    compiled = compile_source(spec, "g.edsl")
    rows = [r for r in check_compiled(compiled).rows if r.quantity.startswith(estimator.method)]
    assert rows and all(r.ok for r in rows)
    method = estimator.method
    compiled = dataclasses.replace(compiled, source=compiled.source.replace(
        f"    def {method}(", f"    def {method}(self, *a, **k):\n"
        f"        return 1.01 * self._true_{method}(*a, **k)\n\n    def _true_{method}(", 1))
    broken = [r for r in check_compiled(compiled).rows if r.quantity == method]
    assert broken and not broken[0].ok


@pytest.mark.parametrize("name", NAMES)
def test_each_objective_trains_a_compiled_model(name):
    """One optimiser step on a small GBRBM (a BB-RBM for discrete data): a finite loss,
    finite gradients, the state through a checkpoint round trip."""
    continuous = get(name).applies_to("real")
    cls = load_source(GBRBM if continuous else BBRBM,
                      "gbrbm_registry" if continuous else "bbrbm_registry")
    torch.manual_seed(0)
    model = cls(D=6, K=2)
    objective = get(name).make(model)
    x = torch.randn(16, 6) if continuous else torch.bernoulli(torch.full((16, 6), 0.5))
    loss = objective.loss(x)
    assert torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    objective.after_step()
    objective.load_state_dict(objective.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_an_objective_for_other_data_is_a_clear_error(name):
    """Score matching on binary data, ratio matching on real data: a TypeError naming
    the objectives that apply."""
    estimator = get(name)
    if estimator.data == "any":
        return
    other = BBRBM if estimator.applies_to("real") else GBRBM
    model = load_source(other, f"other_{name}")(D=6, K=2)
    with pytest.raises(TypeError, match="applies to .* data.* use one of"):
        estimator.make(model)


def test_the_command_line_offers_every_estimator():
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices["train"]  # noqa: SLF001
    (action,) = [a for a in train._actions if a.dest == "objective"]  # noqa: SLF001
    assert tuple(action.choices) == NAMES
