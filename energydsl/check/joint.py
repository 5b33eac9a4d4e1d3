"""`energydsl check`, continued: the joint energy E(v, h) by the reference interpreter at
hidden states drawn from p(h | v)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from energydsl.check.reference import Reference
from energydsl.compiler.domains import DOMAINS

Add = Callable[[str, torch.Tensor, torch.Tensor], None]


def check_energy(model: torch.nn.Module, reference: Reference, v: torch.Tensor, add: Add,
                 seed: int) -> None:
    """The joint energy E(v, h) at hidden states drawn from p(h | v)."""
    generator = torch.Generator().manual_seed(seed + 6)
    hidden = {}
    for name, variable in reference.model.hidden.items():
        if DOMAINS[variable.domain].takes_generator:
            hidden[name] = getattr(model, f"sample_{name}")(v, generator=generator).detach()
        else:  # a draw from the global generator would not be reproducible here
            hidden[name] = getattr(model, f"mean_{name}")(v).detach()
    add("energy", model.energy(v, *hidden.values()),
        reference.energy(v, hidden, paired=True).detach())
