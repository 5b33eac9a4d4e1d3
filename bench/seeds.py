"""The seed models the benchmark times: where their generated modules live and how to size
and initialise them. Shared by bench/run.py and tests/test_torch_compile.py."""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
GENERATED = ROOT / "generated"
SPECS = ROOT / "specs"


def side(d: int) -> int:
    """The side of a square image with d pixels (the masked Gaussian needs D = side^2)."""
    root = math.isqrt(d)
    if root * root != d:
        raise ValueError(f"the masked Gaussian needs a square D, got {d}")
    return root


# class name -> (generated file stem, (D, K) -> constructor keyword arguments). K is the
# number of hidden units (H = K = M for the models with several hidden layers).
SEEDS: dict[str, tuple[str, Callable[[int, int], dict]]] = {
    "DEM": ("dem", lambda d, k: {"D": d, "H": k, "K": k}),
    "DEM3": ("dem3", lambda d, k: {"D": d, "H": k, "K": k}),
    "DEM5": ("dem5", lambda d, k: {"D": d, "H": k, "K": k}),
    "GBRBM": ("gbrbm", lambda d, k: {"D": d, "K": k}),
    "GaussianRBM": ("gaussian_rbm", lambda d, k: {"D": d, "K": k}),
    "MPoT": ("mpot", lambda d, k: {"D": d, "K": k, "M": k}),
    "MaskedGaussian": ("masked_gaussian", lambda d, k: {"height": side(d), "width": side(d)}),
}


def load_class(name: str) -> type[torch.nn.Module]:
    """The class `name` from generated/<stem>.py, executed as a module registered in
    sys.modules (torch.compile looks modules up there). Read fresh from disk."""
    stem = SEEDS[name][0]
    path = GENERATED / f"{stem}.py"
    qualified = f"_energydsl_bench.{stem}"
    module = types.ModuleType(qualified)
    module.__file__ = str(path)
    sys.modules[qualified] = module
    exec(compile(path.read_text(), str(path), "exec"), module.__dict__)  # noqa: S102
    return getattr(module, name)


def make_model(name: str, d: int, k: int = 64, *, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu", seed: int = 0,
               cls: type[torch.nn.Module] | None = None,
               **overrides: object) -> torch.nn.Module:
    """A seed model of size (D, K) with random parameters of a sensible scale (matrices
    N(0, 1/max(shape)), so pre-activations of unit-variance data are O(1); vectors and
    scalars N(0, 0.01)), reproducible from `seed`. `overrides` go to the constructor."""
    cls = cls or load_class(name)
    model = cls(**{**SEEDS[name][1](d, k), **overrides}, dtype=dtype, device=device)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            scale = 1 / math.sqrt(max(parameter.shape)) if parameter.ndim >= 2 else 0.1
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.copy_(scale * noise)
    return model


def make_data(d: int, n: int, *, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu", seed: int = 1) -> torch.Tensor:
    """n standard-normal samples in R^d."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype=dtype,
                                                                          device=device)
