"""Annealed importance sampling (Neal 2001; Salakhutdinov and Murray 2008) for log Z.

Why: most energy models (MPoT, DEM, any RBM with many hidden units) have no tractable
normaliser, yet comparing models by likelihood needs log Z = log of the integral of
exp(-F(v)) dv. AIS anneals along the geometric path p_b(v) ∝ p_0(v)^(1-b) p~(v)^b from a
normalised base p_0 (default N(0, I); `base_from_data` fits a diagonal Gaussian to data) to
p~ = exp(-F), moving the chains at each b by MALA or HMC (energydsl.train.sampling) on the
tempered target, which leaves p_b invariant, and accumulating the importance weights
log w = sum_k (b_k - b_(k-1)) (log p~(v_(k-1)) - log p_0(v_(k-1))).

Binary or spin data (a BB-RBM, an Ising model) has no score: there the base is a product of
Bernoullis (default: every entry uniform over its two values, `bernoulli_base`; or
`base_from_data(data, values=...)`) and the chains move by single-entry heat-bath flips
(`flip_kernel`), which need only F.

The mean weight is an unbiased estimate of Z / Z_0 = Z, so log Z_hat = log mean w is, by
Jensen's inequality, biased low in expectation (a stochastic lower bound): too few
temperatures or transitions under-estimate log Z, never systematically over-estimate it.
`stderr` is the delta-method standard error of log Z_hat, sd(w) / (sqrt(n) mean(w)),
estimated from the same weights: it measures Monte Carlo noise, not that bias, and it is
itself unreliable when a few weights dominate (check `ess`, the effective sample size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, MultivariateNormal, Normal

from energydsl.train.sampling import (
    TARGET_ACCEPTANCE,
    EnergyModel,
    State,
    Target,
    _check_leapfrog,
    _dtype_device,
    _progress,
    as_target,
    flip_kernel,
    hmc_kernel,
    mala_kernel,
)

Schedule = Literal["sigmoid", "linear"]


@dataclass(frozen=True)
class AISResult:
    """An AIS estimate: log_z with its delta-method standard error `stderr`, the per-chain
    log importance weights [n_chains] (log_z is their log-mean-exp), the mean acceptance
    rate of the transitions (NaN when there were none), the effective sample size
    (sum w)^2 / sum w^2, the temperatures used and the final step size (NaN for flips,
    whose acceptance is the rate of flips)."""

    log_z: float
    stderr: float
    log_weights: Tensor
    acceptance: float
    ess: float
    betas: Tensor
    step_size: float

    def __repr__(self) -> str:
        """The estimate and its diagnostics, not every chain's weight."""
        return (f"AISResult(log_z={self.log_z:.6g} +/- {self.stderr:.3g}, "
                f"chains={self.log_weights.numel()}, temperatures={self.betas.numel()}, "
                f"ess={self.ess:.1f}, acceptance={self.acceptance:.3f}, "
                f"step_size={self.step_size:.3g})")


def temperatures(
    n: int, kind: Schedule = "sigmoid", sharpness: float = 4.0, dtype: torch.dtype = torch.float64
) -> Tensor:
    """n inverse temperatures from 0 to 1. "sigmoid" (Grosse et al. 2013) rescales
    sigmoid(sharpness (2t - 1)) over t in [0, 1]: denser near both ends, where the
    distributions change fastest; "linear" spaces them evenly."""
    if not (isinstance(n, int) and n >= 2):
        raise ValueError(f"n_temperatures must be an integer >= 2, got {n!r}")
    t = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    if kind == "linear":
        betas = t
    elif kind == "sigmoid":
        s = torch.sigmoid(sharpness * (2 * t - 1))
        betas = (s - s[0]) / (s[-1] - s[0])
    else:
        raise ValueError(f"schedule must be 'sigmoid', 'linear' or a tensor, got {kind!r}")
    betas[0], betas[-1] = 0.0, 1.0
    return betas.to(dtype)


def gaussian_base(
    mean: Tensor | float = 0.0,
    std: Tensor | float = 1.0,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Distribution:
    """N(mean, diag(std^2)) as a D-dimensional distribution (event shape [D]); scalar mean
    or std are broadcast to `size`."""
    mean_t = torch.as_tensor(mean, dtype=dtype, device=device)
    std_t = torch.as_tensor(std, dtype=dtype, device=device)
    shape = torch.broadcast_shapes(mean_t.shape, std_t.shape, (size,) if size else ())
    if len(shape) != 1:
        raise ValueError(f"the base must be D-dimensional, got mean/std of shape {list(shape)}")
    return Independent(Normal(mean_t.expand(shape), std_t.expand(shape)), 1)


def bernoulli_base(
    probs: Tensor | float = 0.5,
    size: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Distribution:
    """Independent Bernoullis (event shape [D]) over the indicators [v_i == high] of
    binary or spin data: the base for such data; a scalar `probs` is broadcast to
    `size`."""
    probs_t = torch.as_tensor(probs, dtype=dtype, device=device)
    shape = torch.broadcast_shapes(probs_t.shape, (size,) if size else ())
    if len(shape) != 1:
        raise ValueError(f"the base must be D-dimensional, got probs of shape {list(shape)}")
    return Independent(Bernoulli(probs=probs_t.expand(shape)), 1)


def base_from_data(data: Tensor, min_std: float = 1e-3,
                   values: tuple[int, int] | None = None) -> Distribution:
    """A diagonal Gaussian with the data's mean and standard deviation (floored at
    min_std), or for binary or spin data (`values`: the two values of an entry)
    independent Bernoullis with the data's frequencies (kept min_std from 0 and 1): a base
    close to the model shortens the annealing path."""
    if data.ndim != 2 or data.shape[0] < 2:
        raise ValueError(f"expected data of shape [N >= 2, D], got {list(data.shape)}")
    if values is not None:
        low, high = values
        frequency = ((data - low) / (high - low)).mean(dim=0)
        return bernoulli_base(frequency.clamp(min_std, 1 - min_std))
    return gaussian_base(data.mean(dim=0), data.std(dim=0).clamp_min(min_std))


def _bernoulli(base: Distribution) -> Bernoulli | None:
    """The underlying Bernoulli of a product-of-Bernoullis base, else None."""
    if isinstance(base, Independent) and isinstance(base.base_dist, Bernoulli):
        return base.base_dist
    return base if isinstance(base, Bernoulli) else None


def _normal(base: Distribution) -> Normal | None:
    """The underlying Normal of a diagonal Gaussian base, else None."""
    if isinstance(base, Independent) and isinstance(base.base_dist, Normal):
        return base.base_dist
    return base if isinstance(base, Normal) else None


def _base_log_prob(base: Distribution, v: Tensor) -> Tensor:
    """log p_0(v) per chain [N] (a Normal with batch shape [D] is summed over D)."""
    value = base.log_prob(v)
    return (value.sum(dim=1) if value.ndim == 2 else value).to(v.dtype)


def _base_score(base: Distribution, v: Tensor) -> Tensor:
    """grad log p_0(v) [N, D]: closed form for (diagonal or full) Gaussians, else autograd."""
    normal = _normal(base)
    if normal is not None:
        return ((normal.loc - v) / normal.scale**2).to(v.dtype)
    if isinstance(base, MultivariateNormal):
        return ((base.loc - v) @ base.precision_matrix).to(v.dtype)
    with torch.enable_grad():
        point = v.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(_base_log_prob(base, point).sum(), point)
    return grad


def _base_sample(
    base: Distribution,
    n: int,
    size: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """n draws [n, D] from the base: Gaussians and Bernoullis from `generator`, any other
    distribution by its own sample() (torch's global RNG)."""
    bernoulli = _bernoulli(base)
    if bernoulli is not None:
        probs = bernoulli.probs.to(dtype=dtype, device=device).expand(n, size)
        return torch.bernoulli(probs, generator=generator)
    normal = _normal(base)
    noise = torch.randn((n, size), generator=generator, dtype=dtype, device=device)
    if normal is not None:
        return (normal.loc + normal.scale * noise).to(dtype)
    if isinstance(base, MultivariateNormal):
        return (base.loc + noise @ base.scale_tril.mT).to(dtype)
    return base.sample((n,)).reshape(n, size).to(dtype=dtype, device=device)


class TemperedTarget(Target):
    """p_b(v) ∝ p_0(v)^(1-b) p~(v)^b. States keep the model and base terms as parts
    (log p~, log p_0, and for real data their scores), so moving to the next b costs no
    evaluation. For binary or spin data the base is a distribution of the indicators
    [v_i == high] (bernoulli_base)."""

    def __init__(self, model: Target, base: Distribution, beta: float = 0.0) -> None:
        discrete = model.values is not None
        if discrete != (_bernoulli(base) is not None):
            raise ValueError("binary or spin data needs a product-of-Bernoullis base "
                             "(bernoulli_base), and only such data can take one")
        super().__init__(self._log_density, None if discrete else self._score, model.values)
        self.model = model
        self.base = base
        self.beta = beta

    def _log_base(self, v: Tensor) -> Tensor:
        if self.values is None:
            return _base_log_prob(self.base, v)
        low, high = self.values
        return _base_log_prob(self.base, (v - low) / (high - low))

    def _log_density(self, v: Tensor) -> Tensor:
        return self.beta * self.model.log_density(v) + (1 - self.beta) * self._log_base(v)

    def _score(self, v: Tensor) -> Tensor:
        return self.beta * self.model.score(v) + (1 - self.beta) * _base_score(self.base, v)

    def evaluate(self, v: Tensor) -> State:
        """The state at v with parts (log p~, log p_0[, score of p~, score of p_0])."""
        parts: tuple[Tensor, ...] = (self.model.log_density(v), self._log_base(v))
        if self.values is None:
            parts += (self.model.score(v), _base_score(self.base, v))
        return self.retemper(State(v, parts[0], None, parts))

    def retemper(self, state: State) -> State:
        """The same chains' state under the current beta, from the cached parts."""
        log_model, log_base, *scores = state.parts
        b = self.beta
        score = b * scores[0] + (1 - b) * scores[1] if scores else None
        return State(state.v, b * log_model + (1 - b) * log_base, score, state.parts)


def log_mean_exp(log_weights: Tensor) -> tuple[float, float, float]:
    """(log mean w, its delta-method standard error sd(w) / (sqrt(n) mean(w)), effective
    sample size (sum w)^2 / sum w^2), all from weights rescaled by their maximum so that
    nothing overflows."""
    log_weights = log_weights.double()
    n = log_weights.numel()
    peak = log_weights.max()
    w = torch.exp(log_weights - peak)
    mean = w.mean()
    log_z = float(peak + torch.log(mean))
    stderr = float(w.std() / (math.sqrt(n) * mean)) if n > 1 else math.nan
    ess = float(w.sum() ** 2 / torch.square(w).sum())
    return log_z, stderr, ess


@torch.no_grad()
def ais(
    model: EnergyModel | Target,
    n_chains: int = 1000,
    n_temperatures: int = 1000,
    steps_per_temperature: int = 1,
    *,
    schedule: Schedule | Tensor = "sigmoid",
    base: Distribution | None = None,
    method: Literal["mala", "hmc", "flip"] | None = None,
    step_size: float | None = None,
    n_leapfrog: int = 5,
    adapt: bool = True,
    target_acceptance: float | None = None,
    size: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> AISResult:
    """Estimate log Z of p~ = exp(-F) by AIS with n_chains chains over n_temperatures
    inverse temperatures (a schedule name or an increasing tensor from 0 to 1; with 2 it is
    plain importance sampling from the base) and steps_per_temperature transitions at each
    intermediate one: MALA (default) or HMC for real data; for binary or spin data
    single-entry flips (`method` "flip", the only one there: a sweep of every entry takes
    about D log D transitions), from a uniform product-of-Bernoullis base by default.

    With `adapt`, the (shared) step size follows the target acceptance rate (0.574 MALA,
    0.65 HMC) from one transition to the next, since the right step changes along the path;
    it is driven by the mean over all chains, nearly deterministic for many chains
    (adapt=False keeps every kernel fixed, as the unbiasedness proof assumes). Computes in
    the model's dtype, weights in float64. progress: a tqdm bar (None: only on a terminal).
    """
    target = as_target(model)
    counts = (("n_chains", n_chains, 2), ("steps_per_temperature", steps_per_temperature, 1))
    for name, value, least in counts:
        if not (isinstance(value, int) and value >= least):
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    discrete = target.values is not None
    if method is None:
        method = "flip" if discrete else "mala"
    if method not in (("flip",) if discrete else ("mala", "hmc")):
        allowed = "'flip' (binary or spin data)" if discrete else "'mala' or 'hmc'"
        raise ValueError(f"method must be {allowed}, got {method!r}")
    _check_leapfrog(n_leapfrog)
    dtype, device = _dtype_device(model)
    size = size if size is not None else getattr(model, "visible_size", None)
    if not isinstance(size, int):
        raise TypeError("pass size: the target has no visible_size")
    if isinstance(schedule, Tensor):
        betas = schedule.detach().to(dtype=torch.float64, device="cpu")
        if (betas.ndim != 1 or betas.numel() < 2 or float(betas[0]) != 0.0
                or float(betas[-1]) != 1.0 or bool((betas.diff() < 0).any())):
            raise ValueError("a schedule tensor must increase from 0 to 1 (at least 2 entries)")
    else:
        betas = temperatures(n_temperatures, schedule)
    if base is None and discrete:
        base = bernoulli_base(0.5, size, dtype=dtype, device=device)
    elif base is None:
        base = gaussian_base(0.0, 1.0, size, dtype=dtype, device=device)
    if target_acceptance is None:
        target_acceptance = TARGET_ACCEPTANCE.get(method, 0.5)
    if step_size is None:
        step_size = (0.5 if method == "mala" else 0.5**0.5) * size ** (-1 / 3)
    if not step_size > 0:
        raise ValueError(f"step_size must be positive, got {step_size!r}")

    tempered = TemperedTarget(target, base)
    draws = _base_sample(base, n_chains, size, dtype, device, generator)
    if target.values is not None:  # indicators to the entries' values
        low, high = target.values
        draws = low + (high - low) * draws
    state = tempered.evaluate(draws)
    if state.v.shape != (n_chains, size):
        raise ValueError(f"the base draws have shape {list(state.v.shape)}, "
                         f"expected [{n_chains}, {size}]")
    log_weights = torch.zeros(n_chains, dtype=torch.float64, device=device)
    accepted = torch.zeros((), dtype=torch.float64, device=device)
    transitions = 0
    log_step = math.log(step_size)
    for k in _progress(len(betas) - 1, progress, "AIS"):
        beta, previous = float(betas[k + 1]), float(betas[k])
        log_model, log_base = state.parts[0], state.parts[1]
        log_weights += (beta - previous) * (log_model - log_base).double()
        if k + 1 == len(betas) - 1:
            break  # the last transition (at b = 1) would change no weight
        tempered.beta = beta
        state = tempered.retemper(state)
        for _ in range(steps_per_temperature):
            if method == "flip":
                state, accept, probability = flip_kernel(tempered, state, generator)
            elif method == "mala":
                state, accept, probability = mala_kernel(tempered, state, math.exp(log_step),
                                                         generator)
            else:
                state, accept, probability = hmc_kernel(tempered, state, math.exp(log_step),
                                                        n_leapfrog, generator)
            accepted += accept.double().mean()
            transitions += 1
            if adapt and method != "flip":  # flips have no step size
                log_step += 0.1 * (float(probability.mean()) - target_acceptance)
    log_z, stderr, ess = log_mean_exp(log_weights)
    return AISResult(
        log_z=log_z,
        stderr=stderr,
        log_weights=log_weights,
        acceptance=float(accepted) / transitions if transitions else math.nan,
        ess=ess,
        betas=betas,
        step_size=math.exp(log_step) if method != "flip" else math.nan,
    )
