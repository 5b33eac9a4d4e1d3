"""`energydsl check` for binary or spin data: p(v | h) entry by entry and the
normaliser by summing exp(-F) over every visible state, both from the spec's own energy
(no derivatives: the data are discrete)."""

from __future__ import annotations

import itertools

import torch

from energydsl.check.reference import Reference
from energydsl.compiler.domains import DOMAINS


def data(model, dim: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """A batch of random binary or spin vectors."""
    low, high = DOMAINS[model.visible.domain].low_high
    flags = torch.randint(0, 2, (batch, dim), generator=generator).to(torch.float64)
    return low + (high - low) * flags


def check_discrete_visible(model, reference: Reference, v: torch.Tensor, add,
                           seed: int) -> None:
    """P(v_i = high | h) = sigmoid(E(v_i = low, h) - E(v_i = high, h)), entry by entry,
    at hidden states drawn from the module's own p(h | v)."""
    checked = reference.model
    low, high = DOMAINS[checked.visible.domain].low_high
    generator = torch.Generator().manual_seed(seed + 2)
    hidden = {h: getattr(model, f"sample_{h}")(v, generator=generator)
              if DOMAINS[checked.hidden[h].domain].takes_generator
              else getattr(model, f"mean_{h}")(v) for h in checked.hidden}
    probabilities = []
    for i in range(v.shape[1]):
        at_low, at_high = v.clone(), v.clone()
        at_low[:, i], at_high[:, i] = low, high
        difference = (reference.energy(at_low, hidden, paired=True)
                      - reference.energy(at_high, hidden, paired=True))
        probabilities.append(torch.sigmoid(difference))
    expected = low + (high - low) * torch.stack(probabilities, dim=1)
    name = checked.visible.name
    add(f"mean_{name}", getattr(model, f"mean_{name}")(*hidden.values()), expected.detach())


def check_discrete_log_partition(model, reference: Reference, v: torch.Tensor, add) -> None:
    """log Z = logsumexp over all 2^D visible states of -F, F by the reference."""
    low, high = DOMAINS[reference.model.visible.domain].low_high
    states = torch.tensor(list(itertools.product((low, high), repeat=v.shape[1])),
                          dtype=v.dtype)
    log_z = torch.logsumexp(-reference.free_energy(states), dim=0).detach()
    add("log_partition (enumerated)", model.log_partition(), log_z)
    add("log_prob (enumerated)", model.log_prob(v), (-reference.free_energy(v) - log_z).detach())
