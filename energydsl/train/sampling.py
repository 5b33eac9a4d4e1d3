"""MCMC for compiled energy models: block Gibbs, single-entry flips, Langevin (ULA), MALA
and HMC.

A generated module derives F(v), the score -dF/dv and, for latent models, the Gibbs
conditionals in closed form, so every sampler here runs on those methods alone: no autograd,
under `torch.no_grad`, vectorised over chains (v is [N, D], one chain per row).

Binary or spin data (a module whose `visible_domain` is discrete) has no score, so Langevin,
MALA and HMC are refused there; `flip` (a heat-bath update of one random entry per chain)
needs only F, and block Gibbs applies when the model has the conditionals.

The kernels run on a `Target`, an unnormalised density p~(v) = exp(log_density(v)) with its
score (or, for discrete data, the two values its entries take): a model is the common case
(log_density = -F), and AIS (energydsl.train.ais) passes its tempered path p_0^(1-b) p~^b
through the same kernels.

Randomness comes from `generator` when one is given (same seed, same chains), except Gamma
draws (positive hidden units, e.g. MPoT's hc): torch's Gamma sampler takes no generator, so
those use the global RNG; seed it with `torch.manual_seed` for reproducible Gibbs chains.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, get_args

import torch
from torch import Tensor
from tqdm import tqdm

from energydsl.compiler.domains import DOMAINS, visible_domain

Method = Literal["auto", "gibbs", "flip", "langevin", "mala", "hmc"]
METHODS: tuple[str, ...] = get_args(Method)
GRADIENT_METHODS = ("langevin", "mala", "hmc")  # they move along the score

# Optimal acceptance rates: 0.574 for MALA (Roberts and Rosenthal 1998), 0.65 for HMC
# (Neal 2011; Beskos et al. 2013).
TARGET_ACCEPTANCE: dict[str, float] = {"mala": 0.574, "hmc": 0.65}
DEFAULT_STEP_SIZE: dict[str, float] = {"langevin": 0.01, "mala": 0.1, "hmc": 0.1}


class EnergyModel(Protocol):
    """What the gradient samplers need from a model (every generated module has it)."""

    def free_energy(self, v: Tensor, /) -> Tensor: ...

    def score(self, v: Tensor, /) -> Tensor: ...


@dataclass(frozen=True)
class State:
    """Chains at `v` with the target's log density [N] and score [N, D] there (None for
    discrete data), cached so that a kernel never evaluates a point twice; `parts` holds
    extra per-chain tensors a target keeps with the state (AIS keeps the model and base
    terms apart)."""

    v: Tensor
    log_density: Tensor
    score: Tensor | None
    parts: tuple[Tensor, ...] = ()

    def where(self, mask: Tensor, other: State) -> State:
        """Rows of `other` where `mask` [N] is true, else rows of self."""

        def pick(mine: Tensor, theirs: Tensor) -> Tensor:
            return torch.where(mask.reshape(-1, *[1] * (mine.ndim - 1)), theirs, mine)

        parts = tuple(pick(a, b) for a, b in zip(self.parts, other.parts, strict=True))
        score = None if self.score is None or other.score is None else pick(self.score,
                                                                             other.score)
        return State(pick(self.v, other.v), pick(self.log_density, other.log_density),
                     score, parts)


def _score(state: State) -> Tensor:
    """The state's score, for the gradient kernels (which are refused on discrete data)."""
    if state.score is None:
        raise TypeError("a gradient kernel needs the score: discrete data has none")
    return state.score


def _no_score(v: Tensor) -> Tensor:
    raise TypeError("binary or spin data has no score: sample it by 'flip' or 'gibbs'")


class Target:
    """An unnormalised density: log_density(v) -> [N] and score(v) = grad log_density ->
    [N, D]. For binary or spin data, `values` holds the two values every entry takes, and
    there is no score. Subclasses override `evaluate` to share work or keep parts."""

    def __init__(
        self,
        log_density: Callable[[Tensor], Tensor],
        score: Callable[[Tensor], Tensor] | None = None,
        values: tuple[int, int] | None = None,
    ) -> None:
        if (score is None) == (values is None):
            raise TypeError("a Target has a score (real data) or values (discrete data)")
        self.log_density = log_density
        self.score = _no_score if score is None else score
        self.values = values

    def evaluate(self, v: Tensor) -> State:
        """The state at v (log density, and score for real data)."""
        return State(v, self.log_density(v), None if self.values is not None else
                     self.score(v))


def data_values(model: object) -> tuple[int, int] | None:
    """The two values each entry of a model's (or Target's) data takes, None for real
    data."""
    if isinstance(model, Target):
        return model.values
    domain = visible_domain(model)
    return domain.low_high if domain.discrete else None


def as_target(model: EnergyModel | Target) -> Target:
    """The model's p~(v) = exp(-F(v)) as a Target (a Target is returned unchanged)."""
    if isinstance(model, Target):
        return model
    values = data_values(model)
    needed = ("free_energy",) if values is not None else ("free_energy", "score")
    missing = [name for name in needed if not callable(getattr(model, name, None))]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is neither a Target nor a model: it has no "
            + " and no ".join(f"{name}(v)" for name in missing)
        )
    if values is not None:
        return Target(lambda v: -model.free_energy(v), values=values)
    return Target(lambda v: -model.free_energy(v), model.score)


# ---------------------------------------------------------------------------------------
# Block Gibbs


def gibbs_plan(model: object) -> tuple[list[tuple[str, str]], str]:
    """The (hidden name, domain) pairs and the visible name for block Gibbs, or a TypeError
    naming what the model lacks (free-energy models like DEM have no hidden units)."""
    name = type(model).__name__
    hidden = getattr(model, "hidden", None)
    visible = getattr(model, "visible", None)
    instead = ("method='flip'" if data_values(model) else
               "method='mala', 'hmc' or 'langevin'")
    if not isinstance(hidden, dict) or not hidden or not isinstance(visible, str):
        raise TypeError(
            f"block Gibbs needs hidden units, but {name} has none (hidden = {hidden!r}): "
            f"it is a free-energy model; use {instead} instead"
        )
    needed = [f"sample_{h}" for h in hidden] + [f"sample_{visible}"]
    missing = [method for method in needed if not callable(getattr(model, method, None))]
    if missing:
        raise TypeError(
            f"block Gibbs needs {', '.join(needed)} but {name} has no "
            f"{', '.join(missing)} (p({visible} | hidden) has no closed-form sampler); "
            f"use {instead} instead"
        )
    return list(hidden.items()), visible


def has_gibbs(model: object) -> bool:
    """Whether the model has every conditional sampler block Gibbs needs."""
    try:
        gibbs_plan(model)
    except TypeError:
        return False
    return True


def _gibbs(
    model: object,
    plan: tuple[list[tuple[str, str]], str],
    v: Tensor,
    generator: torch.Generator | None,
) -> Tensor:
    hidden, visible = plan
    # torch's Gamma sampler takes no generator: positive units draw from the global RNG
    draws = [
        getattr(model, f"sample_{name}")(
            v, generator=generator if DOMAINS[domain].takes_generator else None)
        for name, domain in hidden
    ]
    return getattr(model, f"sample_{visible}")(*draws, generator=generator)


@torch.no_grad()
def gibbs_step(model: object, v: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One block Gibbs sweep: every hidden variable h ~ p(h | v), then v ~ p(v | h). Exact
    conditionals, so nothing is rejected. Positive (Gamma) units use the global RNG."""
    _check_chains(v)
    return _gibbs(model, gibbs_plan(model), v, generator)


# ---------------------------------------------------------------------------------------
# Gradient kernels on a Target (the cached forms the public steps and AIS build on)


def _randn(v: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)


def langevin_kernel(
    target: Target, v: Tensor, step_size: float, generator: torch.Generator | None
) -> Tensor:
    """v + step/2 score(v) + sqrt(step) xi: Euler-Maruyama for dv = 1/2 score dt + dW."""
    noise = _randn(v, generator)
    return v + 0.5 * step_size * target.score(v) + math.sqrt(step_size) * noise


def _log_proposal(to: Tensor, start: State, step_size: float) -> Tensor:
    """log q(to | start) of the Langevin proposal N(v + step/2 score, step I), up to the
    constant that cancels in the Metropolis-Hastings ratio."""
    drift = start.v + 0.5 * step_size * _score(start)
    return -torch.square(to - drift).sum(dim=1) / (2 * step_size)


def _metropolis(
    state: State, proposal: State, log_ratio: Tensor, generator: torch.Generator | None
) -> tuple[State, Tensor, Tensor]:
    """Accept each chain's proposal with probability min(1, exp(log_ratio)), in log space;
    a NaN ratio (a proposal that left the finite region) is rejected."""
    log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)
    uniform = torch.rand(
        log_ratio.shape, generator=generator, dtype=log_ratio.dtype, device=log_ratio.device
    )
    accept = torch.log(uniform) < log_ratio
    probability = torch.exp(log_ratio.clamp(max=0.0))
    return state.where(accept, proposal), accept, probability


def mala_kernel(
    target: Target, state: State, step_size: float, generator: torch.Generator | None
) -> tuple[State, Tensor, Tensor]:
    """One MALA transition from a cached state: (new state, accepted [N] bool, acceptance
    probability [N], which is the lower-variance signal for step-size adaptation)."""
    proposal = target.evaluate(
        state.v + 0.5 * step_size * _score(state)
        + math.sqrt(step_size) * _randn(state.v, generator)
    )
    log_ratio = (
        proposal.log_density
        - state.log_density
        + _log_proposal(state.v, proposal, step_size)
        - _log_proposal(proposal.v, state, step_size)
    )
    return _metropolis(state, proposal, log_ratio, generator)


def hmc_kernel(
    target: Target,
    state: State,
    step_size: float,
    n_leapfrog: int,
    generator: torch.Generator | None,
) -> tuple[State, Tensor, Tensor]:
    """One HMC transition (unit mass, fresh momentum, n_leapfrog leapfrog steps of size
    step_size), from a cached state; returns as mala_kernel. The leapfrog map is reversible
    and volume-preserving, so the Metropolis test makes it exact whatever the score."""
    momentum = _randn(state.v, generator)
    start_h = -state.log_density + 0.5 * torch.square(momentum).sum(dim=1)
    v = state.v
    p = momentum + 0.5 * step_size * _score(state)
    for step in range(n_leapfrog):
        v = v + step_size * p
        if step < n_leapfrog - 1:
            p = p + step_size * target.score(v)
    proposal = target.evaluate(v)
    p = p + 0.5 * step_size * _score(proposal)
    end_h = -proposal.log_density + 0.5 * torch.square(p).sum(dim=1)
    return _metropolis(state, proposal, start_h - end_h, generator)


def flip_kernel(
    target: Target, state: State, generator: torch.Generator | None
) -> tuple[State, Tensor, Tensor]:
    """One heat-bath update of one random entry i per chain, for binary or spin data: i
    flips with probability sigmoid(-flip_gain_i) = p(v flipped) / (p(v) + p(v flipped)),
    its exact conditional given the other entries (random-scan Gibbs, so p~ is invariant).
    The gain F(v flipped at i) - F(v) comes from the log density at the flipped state:
    one pass the size of F (an RBM's [N, K]), where the module's flip_gain would build
    every entry's gain ([N, D, K]) to use one of them. Returns (new state, flipped [N]
    bool, flip probability [N])."""
    if target.values is None:
        raise TypeError("flip_kernel flips entries of binary or spin data; this target's "
                        "data is real")
    low, high = target.values
    chains, size = state.v.shape
    device = state.v.device
    site = torch.randint(size, (chains,), generator=generator, device=device)
    rows = torch.arange(chains, device=device)
    v = state.v.clone()
    v[rows, site] = low + high - v[rows, site]
    proposal = target.evaluate(v)
    probability = torch.sigmoid(proposal.log_density - state.log_density)
    uniform = torch.rand(chains, generator=generator, dtype=probability.dtype, device=device)
    flipped = uniform < probability  # a NaN probability flips nothing
    return state.where(flipped, proposal), flipped, probability


# ---------------------------------------------------------------------------------------
# Public one-step functions


def _check_chains(v: Tensor) -> None:
    if not isinstance(v, Tensor):
        raise TypeError(f"expected the chains as a torch.Tensor, got {type(v).__name__}")
    if v.ndim != 2:
        raise ValueError(f"expected the chains as an [N, D] tensor, got shape {list(v.shape)}")


def _check_step_size(step_size: float) -> float:
    if not (isinstance(step_size, (int, float)) and math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    return float(step_size)


def _check_leapfrog(n_leapfrog: int) -> int:
    if not (isinstance(n_leapfrog, int) and n_leapfrog >= 1):
        raise ValueError(f"n_leapfrog must be a positive integer, got {n_leapfrog!r}")
    return n_leapfrog


@torch.no_grad()
def langevin_step(
    model: EnergyModel | Target,
    v: Tensor,
    step_size: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unadjusted Langevin: v' = v + step_size/2 score(v) + sqrt(step_size) xi, xi ~ N(0, I)
    (step_size is the noise variance, the time step of dv = 1/2 score dt + dW). Nothing is
    rejected, so it is biased by O(step_size): use MALA where exactness matters."""
    _check_chains(v)
    return langevin_kernel(as_target(model), v, _check_step_size(step_size), generator)


@torch.no_grad()
def mala_step(
    model: EnergyModel | Target,
    v: Tensor,
    step_size: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Metropolis-adjusted Langevin: the Langevin proposal above (same step_size
    convention), accepted by the Metropolis-Hastings ratio of p~ = exp(-F) and the
    proposal densities, in log space. Returns (new state [N, D], accepted [N] bool)."""
    _check_chains(v)
    target = as_target(model)
    state, accept, _ = mala_kernel(target, target.evaluate(v), _check_step_size(step_size),
                                   generator)
    return state.v, accept


@torch.no_grad()
def hmc_step(
    model: EnergyModel | Target,
    v: Tensor,
    step_size: float,
    n_leapfrog: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Hamiltonian Monte Carlo: unit-mass momentum, n_leapfrog leapfrog steps of size
    step_size (the position moves by step_size * momentum; HMC with one leapfrog step is
    MALA with step step_size^2), Metropolis test on H = F(v) + |p|^2/2. Returns (new
    state [N, D], accepted [N] bool)."""
    _check_chains(v)
    target = as_target(model)
    state, accept, _ = hmc_kernel(target, target.evaluate(v), _check_step_size(step_size),
                                  _check_leapfrog(n_leapfrog), generator)
    return state.v, accept


@torch.no_grad()
def flip_step(
    model: EnergyModel | Target, v: Tensor, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """One heat-bath flip of one random entry per chain, for binary or spin data (see
    flip_kernel). Returns (new state [N, D], flipped [N] bool)."""
    _check_chains(v)
    target = as_target(model)
    state, flipped, _ = flip_kernel(target, target.evaluate(v), generator)
    return state.v, flipped


# ---------------------------------------------------------------------------------------
# Sampler


def _progress(total: int, progress: bool | None, description: str) -> Iterable[int]:
    """range(total), with a tqdm bar when asked (None: only on a terminal, so logs stay
    clean)."""
    if progress is False:
        return range(total)
    return tqdm(range(total), desc=description, disable=None if progress is None else False,
                leave=False)


def _wrong_data(model: object, method: str, values: tuple[int, int] | None) -> str:
    """Why `method` cannot sample the model's data, and what can."""
    name = type(model).__name__
    gibbs = " or 'gibbs'" if has_gibbs(model) else ""
    if values:
        return (f"method {method!r} moves along the score, and {name}'s data is discrete "
                f"(entries {values[0]} or {values[1]}), which has none; use 'flip'{gibbs}")
    return (f"method 'flip' flips entries of binary or spin data, and {name}'s data is "
            f"real; use 'mala', 'hmc' or 'langevin'{gibbs}")


class Sampler:
    """A Markov chain on a model (or Target): `Sampler(model)(v, steps)` runs `steps`
    transitions of every chain (rows of v) and returns the final states.

    method: "gibbs" (block Gibbs on the derived conditionals), "flip" (binary or spin data:
    one entry per chain per step, flip_kernel), "mala", "hmc", "langevin" (ULA, biased;
    these three need the score, so real data) or "auto": Gibbs when the model has the
    conditionals, else flip for discrete data and MALA for real data. With `adapt`, the
    step size moves toward `target_acceptance` (0.574 MALA, 0.65 HMC) by Robbins-Monro on
    its logarithm during `burn_in` steps only, then stays fixed so the chain afterwards is
    a proper (time-homogeneous) Markov chain. Gibbs draws of positive (Gamma) units use the
    global RNG whatever the generator.
    """

    def __init__(
        self,
        model: EnergyModel | Target,
        method: Method = "auto",
        step_size: float | None = None,
        n_leapfrog: int = 10,
        adapt: bool = True,
        target_acceptance: float | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"method must be {', '.join(map(repr, METHODS[:-1]))} or "
                             f"{METHODS[-1]!r}, got {method!r}")
        values = data_values(model)
        if method == "auto":
            method = "gibbs" if has_gibbs(model) else "flip" if values else "mala"
        if (method in GRADIENT_METHODS and values) or (method == "flip" and not values):
            raise ValueError(_wrong_data(model, method, values))
        self.model = model
        self.method: str = method
        self._plan = gibbs_plan(model) if method == "gibbs" else None
        self._target = None if method == "gibbs" else as_target(model)
        default = DEFAULT_STEP_SIZE.get(method, 0.1)
        self.step_size = _check_step_size(default if step_size is None else step_size)
        self.n_leapfrog = _check_leapfrog(n_leapfrog)
        self.adapt = adapt and method in TARGET_ACCEPTANCE  # a step size to adapt
        if target_acceptance is None:
            target_acceptance = TARGET_ACCEPTANCE.get(method, 0.574)
        if not 0 < target_acceptance < 1:
            raise ValueError(f"target_acceptance must lie in (0, 1), got {target_acceptance!r}")
        self.target_acceptance = target_acceptance
        self.acceptance_rate: float | None = None  # over the last call's post-burn-in steps
        self._adapted = 0  # adaptation steps so far, for the decreasing gain

    def _adapt(self, probability: Tensor) -> None:
        """log step += gain (mean acceptance probability - target), gain (t + 1)^-0.6."""
        gain = (self._adapted + 1) ** -0.6
        self._adapted += 1
        rate = float(probability.mean())
        self.step_size *= math.exp(gain * (rate - self.target_acceptance))

    @torch.no_grad()
    def __call__(
        self,
        v: Tensor,
        steps: int = 1,
        generator: torch.Generator | None = None,
        *,
        burn_in: int = 0,
        progress: bool | None = False,
    ) -> Tensor:
        """Run burn_in (adapting) then `steps` (fixed) transitions from v [N, D]; returns
        the final states. progress: a tqdm bar (None: only on a terminal)."""
        _check_chains(v)
        for name, count in (("steps", steps), ("burn_in", burn_in)):
            if not (isinstance(count, int) and count >= 0):
                raise ValueError(f"{name} must be a non-negative integer, got {count!r}")
        bar = _progress(burn_in + steps, progress, self.method)
        target = self._target
        if target is None or self.method == "langevin":
            for _ in bar:
                if target is None:
                    assert self._plan is not None
                    v = _gibbs(self.model, self._plan, v, generator)
                else:
                    v = langevin_kernel(target, v, self.step_size, generator)
            self.acceptance_rate = 1.0 if steps else None  # nothing is ever rejected
            return v
        state = target.evaluate(v)
        accepted = torch.zeros((), dtype=torch.float64, device=v.device)
        for t in bar:
            if self.method == "flip":
                state, accept, probability = flip_kernel(target, state, generator)
            elif self.method == "mala":
                state, accept, probability = mala_kernel(target, state, self.step_size,
                                                         generator)
            else:
                state, accept, probability = hmc_kernel(target, state, self.step_size,
                                                        self.n_leapfrog, generator)
            if t < burn_in:
                if self.adapt:
                    self._adapt(probability)
            else:
                accepted += accept.double().mean()
        self.acceptance_rate = float(accepted) / steps if steps else None
        return state.v


def _dtype_device(model: object) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the model's first parameter or buffer."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def initial_chains(model: EnergyModel | Target, n: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """n starting states [n, D] in the model's dtype: N(0, I) for real data, every entry
    uniform over its two values for binary or spin data (a state the chains can flip)."""
    size = getattr(model, "visible_size", None)
    if not isinstance(size, int):
        raise TypeError("pass init: the target has no visible_size to start chains from")
    dtype, device = _dtype_device(model)
    values = data_values(model)
    if values is None:
        return torch.randn((n, size), generator=generator, dtype=dtype, device=device)
    low, high = values
    bits = torch.randint(2, (n, size), generator=generator, device=device).to(dtype)
    return low + (high - low) * bits


@torch.no_grad()
def sample(
    model: EnergyModel | Target,
    n: int,
    steps: int = 1000,
    method: Method = "auto",
    init: Tensor | None = None,
    generator: torch.Generator | None = None,
    *,
    step_size: float | None = None,
    n_leapfrog: int = 10,
    burn_in: int | None = None,
    progress: bool | None = None,
) -> Tensor:
    """n draws [n, D] from the model. With method="auto" and no `init`, the model's exact
    `sample(n)` when it has one (GBRBM by enumeration, Gaussians in closed form); if that
    raises ValueError (e.g. too many hidden states) a warning says so and MCMC runs
    instead. Otherwise chains start at `init` or `initial_chains` and run `steps`
    transitions, the first burn_in of them (default steps // 2) adapting the step size."""
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"n must be a positive integer, got {n!r}")
    exact = getattr(model, "sample", None)
    if method == "auto" and init is None and callable(exact):
        try:
            return exact(n, generator=generator)
        except ValueError as error:
            warnings.warn(f"exact sampling failed ({error}); running MCMC instead",
                          RuntimeWarning, stacklevel=3)  # past torch.no_grad's wrapper
    if not (isinstance(steps, int) and steps >= 0):
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    burn = steps // 2 if burn_in is None else burn_in
    if not 0 <= burn <= steps:
        raise ValueError(f"burn_in must lie in [0, steps={steps}], got {burn_in!r}")
    if init is None:
        init = initial_chains(model, n, generator)
    sampler = Sampler(model, method, step_size=step_size, n_leapfrog=n_leapfrog)
    return sampler(init, steps - burn, generator, burn_in=burn, progress=progress)
