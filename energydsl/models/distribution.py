"""Any energydsl model with an exact log-likelihood as a torch.distributions.Distribution.

The companion models (flows, autoregressive models) and the generated energy models whose
normaliser is exact (Gaussians, mixtures, models summed over their hidden states) share a
small protocol: `log_prob(x)` on a batch [N, *event_shape], `sample(n, generator=None)`,
`loss(x)`. `as_distribution(model)` wraps one as a Distribution with that event shape, so
it composes with the ecosystem (torch.distributions.kl, Independent, MixtureSameFamily's
callers, Pyro-style code): `log_prob` takes any leading batch shape, `sample` any sample
shape. Models whose `log_prob` is a bound or an estimate are refused: a Distribution's
log_prob must be the density.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Transform, constraints


def event_shape_of(model: nn.Module) -> tuple[int, ...]:
    """The shape of one draw: the model's `event_shape` (companion and generated models
    both have one), else its visible size."""
    shape = getattr(model, "event_shape", None)
    if shape is not None:
        return tuple(shape)
    size = getattr(model, "visible_size", None)
    if size is None:
        raise ValueError(f"{type(model).__name__} has no event_shape nor visible_size")
    return (int(size),)


def exact_log_prob(model: nn.Module) -> bool:
    """Whether `model.log_prob` is the exact log-likelihood (not a bound or estimate)."""
    if not callable(getattr(model, "log_prob", None)):
        return False
    kind = getattr(model, "log_prob_kind", None)
    if kind is not None:  # the companion models say so
        return kind == "exact"
    return getattr(model, "normalised", True)  # generated modules have it only when exact


def likelihood_kind(model: nn.Module) -> str:
    """What `model.log_prob` is: "exact", or the bound the model names (`log_prob_bound`:
    the VAE's "IW bound", a dequantising flow's "dequantisation bound")."""
    return "exact" if exact_log_prob(model) else getattr(model, "log_prob_bound", "a bound")


class ModelDistribution(Distribution):
    """A model with an exact `log_prob` and a `sample(n)` as a Distribution (batch shape
    (), event shape the model's); `rsample` where the model has one (the flows: samples
    are a differentiable function of the parameters). For a conditional model, `context`
    (a [C] vector) makes it the distribution p(x | context)."""

    arg_constraints: dict = {}

    def __init__(self, model: nn.Module, validate_args: bool | None = False,
                 context: Tensor | None = None) -> None:
        if context is not None and context.dim() != 1:
            raise ValueError(f"context must be one [C] vector, got shape {tuple(context.shape)}")
        if getattr(model, "context_dim", 0) and context is None:
            raise ValueError(f"{type(model).__name__} is conditional (context_dim = "
                             f"{model.context_dim}): pass the context it is conditioned on")
        self.given = {} if context is None else {"context": context}
        if not exact_log_prob(model):
            raise ValueError(f"{type(model).__name__} has no exact log_prob (log_prob_kind="
                             f"{getattr(model, 'log_prob_kind', None)!r}); a Distribution "
                             "needs the density itself")
        self.model = model
        super().__init__(torch.Size(), torch.Size(event_shape_of(model)),
                         validate_args=validate_args)

    @property
    def support(self):  # noqa: ANN201 - a torch constraint
        binary = getattr(self.model, "data_kind", None) == "binary" or getattr(
            self.model, "visible_domain", None) == "binary"
        return constraints.independent(constraints.boolean if binary else constraints.real,
                                       len(self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """log p(value) with any leading batch shape: [*B, *event_shape] -> [*B]."""
        events = len(self.event_shape)
        batch = value.shape[:value.dim() - events]
        flat = value.reshape(math.prod(batch), *self.event_shape)
        return self.model.log_prob(flat, **self.given).reshape(batch)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        """Whether the model draws differentiably (the flows)."""
        return bool(getattr(self.model, "has_rsample", False))

    def rsample(self, sample_shape: torch.Size | tuple = (),
                generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised draws [*sample_shape, *event_shape] (the model's rsample)."""
        if not self.has_rsample:
            raise NotImplementedError(f"{type(self.model).__name__} has no rsample")
        shape = torch.Size(sample_shape)
        draws = self.model.rsample(max(1, math.prod(shape)), generator=generator, **self.given)
        return draws[: math.prod(shape)].reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: torch.Size | tuple = (),
               generator: torch.Generator | None = None) -> Tensor:
        """Draws of shape [*sample_shape, *event_shape] (the model's own sampler)."""
        shape = torch.Size(sample_shape)
        with torch.no_grad():
            draws = self.model.sample(max(1, math.prod(shape)), generator=generator,
                                      **self.given)
        return draws[: math.prod(shape)].reshape(*shape, *self.event_shape)


def as_distribution(model: nn.Module, context: Tensor | None = None) -> ModelDistribution:
    """`model` as a torch.distributions.Distribution (see the module docstring); for a
    conditional model, p(x | context) with `context` a [C] vector."""
    return ModelDistribution(model, context=context)


class FlowTransform(Transform):
    """A flow's bijection v -> z (its couplings and scaling, not the data-space logit or
    dequantisation) as a torch.distributions.Transform with event_dim 1, so that
    `TransformedDistribution(base, [FlowTransform(flow).inv])` is the flow's density in its
    own input space. Caches the last (x, y) pair like torch's transforms (cache_size=1)."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, flow: nn.Module, cache_size: int = 1) -> None:
        super().__init__(cache_size=cache_size)
        self.flow = flow
        self._last: tuple[Tensor, Tensor] | None = None  # (x, log|det|) of the last _call

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FlowTransform) and other.flow is self.flow

    def __hash__(self) -> int:
        return id(self.flow)

    def _call(self, x: Tensor) -> Tensor:
        y, logdet = self.flow.forward_transform(x)
        self._last = (x, logdet)  # log_prob asks for the log-det of this x next
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        return self.flow.inverse_transform(y)

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """The log-det _call computed with y for this very x (one flow pass per log_prob),
        else a pass of its own."""
        if self._last is not None and self._last[0] is x:
            return self._last[1]
        return self.flow.forward_transform(x)[1]


def as_transform(flow: nn.Module) -> FlowTransform:
    """A flow (NICE, RealNVP: anything with forward_transform and inverse_transform) as a
    torch.distributions.Transform."""
    if not (callable(getattr(flow, "forward_transform", None))
            and callable(getattr(flow, "inverse_transform", None))):
        raise ValueError(f"{type(flow).__name__} is not a flow (no forward_transform and "
                         "inverse_transform)")
    return FlowTransform(flow)
