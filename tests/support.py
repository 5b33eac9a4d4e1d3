"""Test helpers: compile specs in memory, import generated modules, run the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPECS = ROOT / "specs"
GENERATED = ROOT / "generated"


def compile_text(text: str, path: str = "spec.edsl"):
    from energydsl.driver import compile_source

    return compile_source(text, path)


def load_class(spec: str, **_):
    """Compile specs/<spec>.edsl in memory and return (class, compiled)."""
    from energydsl.checking import load_module

    compiled = compile_text((SPECS / f"{spec}.edsl").read_text(), f"specs/{spec}.edsl")
    module = load_module(compiled.source, spec)
    return getattr(module, compiled.derivation.name), compiled


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None
            ) -> subprocess.CompletedProcess:
    """Run `python -m energydsl ARGS` as a user would."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "energydsl", *args], cwd=cwd or ROOT,
                          capture_output=True, text=True, env=full_env, timeout=300)
