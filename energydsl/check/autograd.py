"""Derivatives of the reference by autograd: what every check compares against."""

from __future__ import annotations

import torch

from energydsl.check.reference import Reference


def gradient(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d output / d x with its graph kept; zeros where output does not depend on x (an
    energy linear in x has a score free of x)."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(output, x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def reference_score(reference: Reference, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as a leaf requiring grad, the reference's score at x: -dF/dx by autograd)."""
    x = x.detach().requires_grad_(True)
    return x, -gradient(reference.free_energy(x).sum(), x)
