"""generated/ is exactly what compiling specs/ gives, and compiling is deterministic.

Run `pytest tests/compiler/test_generated.py --update-golden` (or `make generate`) after a
change to the compiler or a spec to rewrite the golden files."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from support import GENERATED, ROOT, SPECS, compile_text

SPEC_FILES = sorted(SPECS.glob("*.edsl"))


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_generated_module_is_in_sync(spec, update_golden):
    source = compile_text(spec.read_text(), f"specs/{spec.name}").source
    golden = GENERATED / f"{spec.stem}.py"
    if update_golden:
        golden.write_text(source)
    assert golden.exists(), f"{golden} is missing: run `make generate`"
    assert golden.read_text() == source, f"{golden} is stale: run `make generate`"


def test_every_generated_file_has_a_spec():
    stems = {p.stem for p in SPEC_FILES}
    orphans = [p.name for p in GENERATED.glob("*.py") if p.stem not in stems | {"__init__"}]
    assert orphans == []


@pytest.mark.parametrize("spec", SPEC_FILES, ids=lambda p: p.stem)
def test_generated_module_imports_only_torch_and_math(spec):
    tree = ast.parse((GENERATED / f"{spec.stem}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"torch", "math"}
    # the layer-chain helper loops over its steps (one per layer: a constant trip count)
    # and over blocks of 32 samples (cache blocking, each block vectorised)
    chained = {"_jacobian_squares_plain", "_JacobianSquares", "_jacobian_squares"}
    helpers = [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
               and n.name in chained]
    inside = {id(node) for helper in helpers for node in ast.walk(helper)}
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While, ast.comprehension))
             and id(n) not in inside]
    # the loops allowed elsewhere: the chunks of an enumeration of 2^K hidden states, a
    # grid stencil's fixed 3 x 3 offsets (a constant trip count, whatever the sizes), and
    # the lines of the formulas' text (`formulas`, `_repr_latex_`)
    allowed = {"range(0, states, chunk)", "_NEIGHBOURS[connectivity]", "range(9)",
               "cls._LATEX", "self._LATEX"}
    loops = [n for n in loops if ast.unparse(n.iter) not in allowed]
    assert loops == [], "generated code must be vectorised"


def test_recompiling_in_fresh_processes_is_byte_identical(tmp_path):
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / seed
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-m", "energydsl", "compile", *map(str, SPEC_FILES),
                        "-o", str(out)], cwd=ROOT, env=env, check=True, capture_output=True)
        outputs.append({p.name: p.read_bytes() for p in sorted(out.glob("*.py"))})
    assert outputs[0] == outputs[1]
    assert set(outputs[0]) == {f"{p.stem}.py" for p in SPEC_FILES}


def test_generated_code_passes_ruff():
    ruff = ROOT / ".venv" / "bin" / "ruff"
    if not ruff.exists():
        pytest.skip("ruff is not installed")
    result = subprocess.run([str(ruff), "check", "--output-format", "concise",
                             str(GENERATED)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
