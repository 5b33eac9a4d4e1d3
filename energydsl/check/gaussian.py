"""The checks of Gaussian normalisers and of p(v | h), which exist only where a precision
is positive definite.

Random parameters may make a precision indefinite. The module must then refuse (a
ValueError), which is checked as a row; the values themselves are checked at parameters
redrawn at shrinking scales until the precision is positive definite, then restored. A
precision singular at every draw (F = (sum v)^2, or no parameters) has nothing to check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from energydsl.check.reference import Reference
from energydsl.compiler.domains import DOMAINS

ATTEMPTS = 16  # parameter draws tried for a positive definite precision
_UNUSABLE = ("{}: no parameters drawn made {} positive definite and well conditioned "
             "(singular at every scale, or no parameters)")


def classify(matrix: torch.Tensor) -> str:
    """'positive' (well enough conditioned that log det agrees to the check's tolerance),
    'indefinite' (the module must refuse), or 'singular': the least eigenvalue within
    rounding of zero, or so small that log det is inaccurate, where a Cholesky
    factorisation may succeed or fail and neither is wrong."""
    dim = matrix.shape[-1]
    values = torch.linalg.eigvalsh(matrix)
    eps = torch.finfo(matrix.dtype).eps
    largest, least = float(values.abs().max()), float(values.min())
    if least > dim * math.sqrt(eps) * largest:
        return "positive"
    return "indefinite" if least < -dim * eps * largest else "singular"


@contextmanager
def normalisable(model, definiteness: Callable[[], str], refuses: Callable[[], object],
                 add, quantity: str) -> Iterator[bool]:
    """Parameters at which `definiteness()` is 'positive': the drawn ones, or else fresh
    draws at shrinking scales (shrinking couplings makes a dominant diagonal win; fresh
    signs give a positive one a chance), up to ATTEMPTS; yields whether it found them and
    restores the parameters afterwards. At the first indefinite precision `refuses()` must
    raise ValueError, checked as the row '<quantity> refuses an indefinite precision'."""
    params = list(model.parameters())
    saved = [p.detach().clone() for p in params]
    scales = [float(p.square().mean().sqrt()) or 1.0 for p in saved]
    generator = torch.Generator().manual_seed(12345)
    refusal_checked = False
    try:
        for attempt in range(ATTEMPTS):
            state = definiteness()
            if state == "positive":
                yield True
                return
            if state == "indefinite" and not refusal_checked:
                refusal_checked = True
                try:
                    refuses()
                    refused = False
                except ValueError:
                    refused = True
                add(f"{quantity} refuses an indefinite precision",
                    torch.tensor(0.0 if refused else 1.0), torch.tensor(0.0))
            if not params:
                break
            with torch.no_grad():
                for p, scale in zip(params, scales, strict=True):
                    p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype)
                            * scale * 0.75 ** (attempt + 1))
        yield False
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved, strict=True):
                p.copy_(value)


def quadratic_at(function: Callable[[torch.Tensor], torch.Tensor], v: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(f at each row of v, its second-order expansion at 0 there): equal to rounding
    exactly when f is quadratic, the premise of every Gaussian formula checked here,
    which the Hessian at one point cannot show (relu and abs have zero second
    derivatives almost everywhere)."""
    zero = torch.zeros(v.shape[1], dtype=v.dtype)
    hessian = torch.autograd.functional.hessian(function, zero)
    gradient = torch.autograd.functional.jacobian(function, zero)
    rows = v.detach()
    expansion = function(zero) + rows @ gradient + 0.5 * ((rows @ hessian) * rows).sum(dim=1)
    return torch.stack([function(row) for row in rows]).detach(), expansion.detach()


def check_gaussian(model, reference: Reference, v: torch.Tensor, add, note, then) -> None:
    """log Z and log_prob of a quadratic F from its autograd Hessian and gradient at 0;
    `then(usable)` runs the checks that need the normaliser (NCE) at the same parameters."""
    dim = v.shape[1]
    zero = torch.zeros(dim, dtype=v.dtype)

    def free_energy(x: torch.Tensor) -> torch.Tensor:
        return reference.free_energy(x[None, :])[0]

    def definiteness() -> str:
        return classify(torch.autograd.functional.hessian(free_energy, zero))

    # the premise of the closed-form normaliser
    add(f"F quadratic in {reference.model.visible.name}", *quadratic_at(free_energy, v))
    with normalisable(model, definiteness, model.log_partition, add, "log_partition") as usable:
        if usable:
            hessian = torch.autograd.functional.hessian(free_energy, zero)
            linear = -torch.autograd.functional.jacobian(free_energy, zero)
            _, logdet = torch.linalg.slogdet(hessian)
            log_z = (-free_energy(zero) + 0.5 * linear @ torch.linalg.solve(hessian, linear)
                     + 0.5 * dim * math.log(2 * math.pi) - 0.5 * logdet)
            add("log_partition", model.log_partition(), log_z)
            add("log_prob", model.log_prob(v), -reference.free_energy(v) - log_z)
        else:
            note(_UNUSABLE.format("log_partition, log_prob and NCE", "the precision of F"))
        then(usable)


def check_visible(model, reference: Reference, v: torch.Tensor, add, note,
                  seed: int) -> None:
    """E[v | h]: E is quadratic in v, so the mean is one Newton step from 0 (autograd),
    for hidden states drawn from the module's own p(h | v)."""
    checked = reference.model
    dim = v.shape[1]
    name = checked.visible.name

    def hidden_states() -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed + 2)
        return {h: getattr(model, f"sample_{h}")(v, generator=generator)
                if DOMAINS[checked.hidden[h].domain].takes_generator
                else getattr(model, f"mean_{h}")(v) for h in checked.hidden}

    def energies(hidden: dict[str, torch.Tensor]) -> Iterator[Callable]:
        """Per row: E(., h_n), a function of v."""
        for row in _rows(hidden):
            def energy(x: torch.Tensor, row=row) -> torch.Tensor:
                return reference.energy(x[None, :], row, paired=True)[0]

            yield energy

    def newton(hidden: dict[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Per row: the Hessian and gradient of E(., h_n) at v = 0."""
        zero = torch.zeros(dim, dtype=v.dtype)
        for energy in energies(hidden):
            yield (torch.autograd.functional.hessian(energy, zero),
                   torch.autograd.functional.jacobian(energy, zero))

    def definiteness() -> str:
        return _worst({classify(hessian) for hessian, _ in newton(hidden_states())})

    def mean(hidden: dict[str, torch.Tensor]) -> torch.Tensor:
        return getattr(model, f"mean_{name}")(*[hidden[h] for h in checked.hidden])

    # E(., h_n) quadratic in v, at row n's v
    values, expansions = zip(*(quadratic_at(energy, v[n:n + 1])
                               for n, energy in enumerate(energies(hidden_states()))),
                             strict=True)
    add(f"E quadratic in {name}", torch.cat(values), torch.cat(expansions))
    with normalisable(model, definiteness, lambda: mean(hidden_states()), add,
                      f"mean_{name}") as usable:
        if not usable:
            note(_UNUSABLE.format(f"mean_{name}", f"p({name} | hidden)"))
        else:
            hidden = hidden_states()
            expected = [-torch.linalg.solve(hessian, gradient)
                        for hessian, gradient in newton(hidden)]
            add(f"mean_{name}", mean(hidden), torch.stack(expected))


def _rows(states: dict[str, torch.Tensor]) -> Iterator[dict[str, torch.Tensor]]:
    """Each row's hidden state, as one-row tensors."""
    count = next(iter(states.values())).shape[0]
    for n in range(count):
        yield {h: state[n:n + 1] for h, state in states.items()}


def _worst(states: set[str]) -> str:
    """The least usable of several precisions' definiteness."""
    for state in ("indefinite", "singular"):
        if state in states:
            return state
    return "positive"


def check_enumerated_log_partition(model, reference: Reference, v: torch.Tensor, add,
                                   note) -> None:
    """log Z = logsumexp over hidden states of the Gaussian integral over v, each from the
    Hessian and gradient of the reference E(., h) at v = 0 (E is quadratic in v)."""
    states, log_weight = reference.configurations(v.dtype)
    dim = v.shape[1]
    zero = torch.zeros(dim, dtype=v.dtype)

    def per_state() -> Iterator[tuple[int, Callable, torch.Tensor]]:
        for c in range(log_weight.shape[0]):
            state = {name: value[c:c + 1] for name, value in states.items()}

            def energy(x: torch.Tensor, state=state) -> torch.Tensor:
                return reference.energy(x[None, :], state, paired=True)[0]

            yield c, energy, torch.autograd.functional.hessian(energy, zero)

    def definiteness() -> str:
        return _worst({classify(hessian) for _, _, hessian in per_state()})

    # E(., h) quadratic in v for every state, at every row
    values, expansions = zip(*(quadratic_at(energy, v) for _, energy, _ in per_state()),
                             strict=True)
    add(f"E quadratic in {reference.model.visible.name}, all states", torch.cat(values),
        torch.cat(expansions))
    with normalisable(model, definiteness, model.log_partition, add,
                      "log_partition (enumerated)") as usable:
        if not usable:
            note(_UNUSABLE.format("the enumerated log_partition", "every p(v | h)"))
            return
        terms = []
        for c, energy, hessian in per_state():
            gradient = torch.autograd.functional.jacobian(energy, zero)
            _, logdet = torch.linalg.slogdet(hessian)
            terms.append(log_weight[c] - energy(zero)
                         + 0.5 * gradient @ torch.linalg.solve(hessian, gradient)
                         + 0.5 * dim * math.log(2 * math.pi) - 0.5 * logdet)
        log_z = torch.logsumexp(torch.stack(terms), dim=0).detach()
        add("log_partition (enumerated)", model.log_partition(), log_z)
        add("log_prob (enumerated)", model.log_prob(v),
            (-reference.free_energy(v) - log_z).detach())
