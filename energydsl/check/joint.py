"""`energydsl check`, continued: the joint energy and the enumerated normaliser.

The joint energy E(v, h) by the reference interpreter at hidden states drawn from
p(h | v), and an RBM's log Z as a sum over hidden states of Gaussian integrals taken
from autograd's Hessian of the reference E(., h).
"""

from __future__ import annotations

import math
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


def check_enumerated_log_partition(model: torch.nn.Module, reference: Reference,
                                   v: torch.Tensor, add: Add) -> None:
    """log Z = logsumexp over hidden states of the Gaussian integral over v, each from the
    Hessian and gradient of the reference E(., h) at v = 0 (E is quadratic in v)."""
    states, log_weight = reference.configurations(v.dtype)
    dim = v.shape[1]
    zero = torch.zeros(dim, dtype=v.dtype)
    count = log_weight.shape[0]
    terms = []
    for c in range(count):
        state = {name: value[c:c + 1] for name, value in states.items()}

        def energy(x: torch.Tensor, state=state) -> torch.Tensor:
            return reference.energy(x[None, :], state, paired=True)[0]

        hessian = torch.autograd.functional.hessian(energy, zero)
        gradient = torch.autograd.functional.jacobian(energy, zero)
        _, logdet = torch.linalg.slogdet(hessian)
        terms.append(log_weight[c] - energy(zero)
                     + 0.5 * gradient @ torch.linalg.solve(hessian, gradient)
                     + 0.5 * dim * math.log(2 * math.pi) - 0.5 * logdet)
    log_z = torch.logsumexp(torch.stack(terms), dim=0).detach()
    add("log_partition (enumerated)", model.log_partition(), log_z)
    add("log_prob (enumerated)", model.log_prob(v), (-reference.free_energy(v) - log_z).detach())
