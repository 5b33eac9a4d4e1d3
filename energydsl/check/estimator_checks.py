"""`energydsl check`, continued: the estimators and normalisers against references.

Each reference is written out independently of the generated code: the score and the
Hessian by autograd of the spec's own (enumerated or integrated) free energy, NCE as the
seed's formula log(1 + nu w) with w = p_n / p_model (via logaddexp, in float64), the
joint energy by the reference interpreter, and an RBM's log Z as a sum over hidden states
of Gaussian integrals taken from autograd's Hessian of E(., h).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from energydsl.check.reference import Reference
from energydsl.compiler.domains import DOMAINS

Add = Callable[[str, torch.Tensor, torch.Tensor], None]


def gradient(output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """d output / d x with its graph kept; zeros where output does not depend on x (an
    energy linear in x has a score free of x)."""
    if not output.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(output, x, create_graph=True, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _reference_score(reference: Reference, x: torch.Tensor, create_graph: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    free_energy = reference.free_energy(x)
    return x, -gradient(free_energy.sum(), x)


def check_objectives(model: torch.nn.Module, reference: Reference, v: torch.Tensor,
                     add: Add, seed: int, nce: bool = True) -> None:
    """dsm_loss, ssm_loss, nce_loss (unless `nce` is false: the model has no usable
    normaliser), cnce_loss at fixed noise."""
    generator = torch.Generator().manual_seed(seed + 5)
    batch, dim = v.shape
    dtype = v.dtype

    # denoising score matching
    noise_std = 0.3
    noise = torch.randn(batch, dim, generator=generator, dtype=dtype)
    _, score = _reference_score(reference, v + noise_std * noise)
    expected = 0.5 * (score + noise / noise_std).square().sum(dim=1).mean()
    add("dsm_loss", model.dsm_loss(v, noise_std, noise=noise), expected)

    # sliced score matching: u^T H u + 1/2 (u^T s)^2 with the full Hessian by autograd
    projections = torch.randn(3, batch, dim, generator=generator, dtype=dtype)
    point, score = _reference_score(reference, v)
    hessian = torch.stack([gradient(score[:, i].sum(), point).detach()
                           for i in range(dim)], dim=1)  # [N, D, D]
    curvature = torch.einsum("pni,nij,pnj->pn", projections, hessian, projections)
    along = torch.einsum("pni,ni->pn", projections, score)
    expected = (curvature + 0.5 * along.square()).mean()
    add("ssm_loss", model.ssm_loss(v, projections=projections), expected.detach())

    if nce:
        _check_nce(model, reference, v, add, generator)

    # conditional NCE with fixed symmetric noise
    contrast_noise = torch.randn(2, batch, dim, generator=generator, dtype=dtype)
    zero = torch.zeros((), dtype=dtype)
    contrast = v[None] + noise_std * contrast_noise
    difference = reference.free_energy(v)[None] - reference.free_energy(
        contrast.reshape(-1, dim)).reshape(2, batch)
    expected = 2 * torch.logaddexp(zero, difference).mean()
    add("cnce_loss", model.cnce_loss(v, noise_std, noise=contrast_noise), expected.detach())


def _check_nce(model: torch.nn.Module, reference: Reference, v: torch.Tensor, add: Add,
               generator: torch.Generator) -> None:
    """NCE against a standard Gaussian, seed 000's formula (2) in log space."""
    batch, dim = v.shape
    dtype = v.dtype
    nu = 2.0
    noise_distribution = torch.distributions.MultivariateNormal(
        torch.zeros(dim, dtype=dtype), torch.eye(dim, dtype=dtype))
    samples = torch.randn(int(nu * batch), dim, generator=generator, dtype=dtype)
    log_z = (model.log_partition() if not hasattr(model, "log_z") else model.log_z).detach()

    def log_w(x: torch.Tensor) -> torch.Tensor:  # log p_n / p_model
        return noise_distribution.log_prob(x) + reference.free_energy(x) + log_z

    zero = torch.zeros((), dtype=dtype)
    expected = (torch.logaddexp(zero, math.log(nu) + log_w(v)).mean()
                + nu * torch.logaddexp(zero, -math.log(nu) - log_w(samples)).mean())
    add("nce_loss", model.nce_loss(v, noise_distribution, nu, noise_samples=samples),
        expected.detach())


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
