"""Helpers shared by the companion-library tests (a uniquely named module, not conftest)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def data_for(model: nn.Module, x: Tensor) -> Tensor:
    """Binarise at 0.5 for models of binary data; keep [0, 1] values otherwise."""
    if getattr(model, "data_kind", "continuous") == "binary":
        return (x > 0.5).to(x.dtype)
    return x


def perturb(model: nn.Module, scale: float, seed: int = 0) -> nn.Module:
    """Add N(0, scale^2) noise to every parameter so tests do not see a near-trivial model."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model
