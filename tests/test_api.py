"""The Python API's caches: compile_cached in memory, spec_class on disk (the generated
source kept between commands, keyed by the spec and the compiler's own files)."""

from __future__ import annotations

import pytest
import torch

from energydsl import api
from energydsl.errors import SpecError

SPEC = ("model Tiny\ndim D = 3\nvisible v : real[D]\nparam m[D]\n"
        "free energy F(v) = sum(i: (v[i] - m[i])^2) / 2\n")


def test_spec_class_keeps_the_source_and_reuses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYDSL_CACHE_DIR", str(tmp_path))
    first = api.spec_class(SPEC, "tiny.edsl")
    (kept,) = tmp_path.glob("*.py")
    assert "class Tiny(torch.nn.Module)" in kept.read_text()
    monkeypatch.setattr(api, "compile_cached", lambda *a: pytest.fail("compiled again"))
    second = api.spec_class(SPEC, "tiny.edsl")
    assert second.__name__ == first.__name__ == "Tiny"
    model = second(D=3)
    assert model.free_energy(torch.zeros(2, 3)).shape == (2,)


def test_another_compiler_or_spec_misses_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYDSL_CACHE_DIR", str(tmp_path))
    api.spec_class(SPEC)
    monkeypatch.setattr(api, "_compiler_fingerprint", lambda: "another compiler")
    api.spec_class(SPEC)
    api.spec_class(SPEC.replace("/ 2", "/ 4"))
    assert len(list(tmp_path.glob("*.py"))) == 3


def test_the_cache_can_be_turned_off_and_survives_an_unwritable_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYDSL_CACHE_DIR", "")
    assert api.cache_dir() is None
    assert api.spec_class(SPEC).__name__ == "Tiny"
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    monkeypatch.setenv("ENERGYDSL_CACHE_DIR", str(blocked / "cache"))
    assert api.spec_class(SPEC).__name__ == "Tiny"


def test_a_spec_error_is_raised_before_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ENERGYDSL_CACHE_DIR", str(tmp_path))
    with pytest.raises(SpecError, match="unknown"):
        api.spec_class(SPEC.replace("(v[i] - m[i])", "(v[i] - q[i])"))
    assert not list(tmp_path.glob("*.py"))
