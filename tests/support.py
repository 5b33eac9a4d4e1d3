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
    from energydsl.compiler.driver import compile_source

    return compile_source(text, path)


def load_class(spec: str, **_):
    """Compile specs/<spec>.edsl in memory and return (class, compiled)."""
    from energydsl.compiler.loading import load_module

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


def load_source(text: str, name: str = "inline"):
    """Compile spec text in memory and return the generated class."""
    from energydsl.compiler.loading import load_module

    compiled = compile_text(text, f"{name}.edsl")
    return getattr(load_module(compiled.source, name), compiled.derivation.name)


def randomise(model, scale: float, seed: int):
    """Every parameter ~ N(0, scale^2), reproducibly: tests must not see a near-trivial
    model (the specs initialise at scale 0.01)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return model


def stencil_from_dense(model, name: str, dense):
    """The [9, D] raw stencil a grid-masked parameter is stored as, read from a dense [D, D]
    raw matrix (entries outside each pixel's neighbourhood are unused)."""
    return dense.reshape(-1)[getattr(model, f"_{name}_index")]


ISING = """\
# An Ising model of spin data: no hidden units, so no Gibbs conditionals and no score.
model Ising
dim D = 4
visible s : spin[D]
param J[D, D] ~ normal(0.5) where symmetric
param b[D] ~ normal(0.5)
free energy F(s) = -sum(i, j: s[i] * J[i, j] * s[j]) / 2 - sum(i: b[i] * s[i])
"""
"""A spec of spin data whose chains can only move by flips (tests of sampling and AIS)."""
