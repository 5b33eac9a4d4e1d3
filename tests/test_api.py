"""The Python API's caches: compile_cached in memory, spec_class on disk (the generated
source kept between commands, keyed by the spec and the compiler's own files)."""

from __future__ import annotations

import pytest
import torch

from energydsl import api
from energydsl.errors import SpecError

from support import SPECS

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


# ---------------------------------------------------------------- the public API


def test_compile_takes_spec_text_or_a_path(tmp_path):
    import energydsl

    cls = energydsl.compile(SPEC)
    assert cls.__name__ == "Tiny"
    path = tmp_path / "tiny.edsl"
    path.write_text(SPEC)
    assert energydsl.compile(path).__name__ == energydsl.compile(str(path)).__name__ == "Tiny"
    assert energydsl.compile("dem").__name__ == "DEM"  # a shipped spec, by name
    with pytest.raises(SpecError) as caught:
        energydsl.compile(SPEC.replace("m[i])^2", "q[i])^2"))
    assert "5:" in caught.value.format("<spec>", SPEC) and "unknown" in str(caught.value)


def test_a_model_shows_its_sizes_and_formulas():
    import io

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import mathtext

    import energydsl

    model = energydsl.compile((SPECS / "dem.edsl").read_text())(D=7, H=3, K=2)
    assert repr(model).startswith("DEM(D=7, H=3, K=2, sigma=1.0)")
    assert "Score:" in model.formulas() and "score:" in model.formulas(latex=True)
    displays = model._repr_latex_().split("\n")
    assert len(displays) >= 5 and all(d.startswith("$$") and d.endswith("$$") for d in displays)
    for display in displays:  # every line renders through matplotlib's mathtext
        mathtext.math_to_image(f"${display.strip('$')}$", io.BytesIO(), format="png")


def _in_a_fresh_process(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_compiled_model_pickles_into_another_process(tmp_path):
    import energydsl

    model = energydsl.compile(SPEC)(D=3, dtype=torch.float64)
    with torch.no_grad():
        model.m.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    path = tmp_path / "model.pt"
    torch.save(model, path)
    assert type(model).__module__.startswith("energydsl.compiled.tiny_")
    out = _in_a_fresh_process(
        f"import torch; m = torch.load({str(path)!r}, weights_only=False); "
        "print(type(m).__name__, m.m.tolist(), m.free_energy(torch.zeros(1, 3, "
        "dtype=torch.float64)).item())")
    assert out.split() == ["Tiny", "[0.5,", "-1.0,", "2.0]", "2.625"]


def test_a_trained_run_loads_and_pickles(tmp_path):
    import pickle

    import energydsl
    from energydsl.errors import UsageError

    history = energydsl.train(str(SPECS / "dem.edsl"), tmp_path / "run", epochs=1,
                              sizes={"H": 4, "K": 3}, progress=False)
    assert len(history.epochs) == 1 and repr(history).startswith("History(1 epochs, ")
    model, config = energydsl.load_run(tmp_path / "run")
    assert repr(model).startswith("DEM(D=64, H=4, K=3") and config.sizes == {"H": 4, "K": 3}
    path = tmp_path / "run.pkl"
    path.write_bytes(pickle.dumps((model, config)))
    out = _in_a_fresh_process(
        f"import pickle; m, c = pickle.load(open({str(path)!r}, 'rb')); "
        "print(type(m).__name__, c.epochs, sum(p.numel() for p in m.parameters()))")
    assert out.split() == ["DEM", "1", str(sum(p.numel() for p in model.parameters()))]
    with pytest.raises(UsageError, match="unknown setting 'epoch'"):
        energydsl.train(str(SPECS / "dem.edsl"), tmp_path / "other", epoch=1)


def test_an_ais_result_reads_as_its_estimate():
    from energydsl.train.ais import AISResult

    result = AISResult(-12.5, 0.03, torch.zeros(200), 0.61, 180.2, torch.linspace(0, 1, 500),
                       0.05)
    text = repr(result)
    assert text.startswith("AISResult(log_z=-12.5 +/- 0.03, chains=200, temperatures=500")
    assert len(text) < 160
