"""Small helpers shared by the model families (shapes, Bernoulli likelihoods, MLPs, noise)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def flatten(x: Tensor) -> Tensor:
    """[N, ...] -> [N, D]: every model can be fed the same flat data."""
    return x.reshape(x.shape[0], -1)


def as_images(x: Tensor, side: int, channels: int = 1) -> Tensor:
    """Accept [N, C*side*side] or [N, C, side, side] and return [N, C, side, side]."""
    if x.dim() == 2 and x.shape[1] == channels * side * side:
        return x.reshape(x.shape[0], channels, side, side)
    if x.dim() == 4 and tuple(x.shape[1:]) == (channels, side, side):
        return x
    raise ValueError(
        f"expected [N, {channels * side * side}] or [N, {channels}, {side}, {side}], "
        f"got {tuple(x.shape)}"
    )


def as_flat(x: Tensor, dim: int) -> Tensor:
    """Accept [N, dim] or any [N, ...] with dim entries per example; return [N, dim]."""
    x = flatten(x)
    if x.shape[1] != dim:
        raise ValueError(f"expected {dim} values per example, got {x.shape[1]}")
    return x


def bernoulli_log_prob(logits: Tensor, x: Tensor) -> Tensor:
    """Per-example sum of log Bernoulli(x | sigmoid(logits)) over the trailing event dims.

    Written with BCE-with-logits (log-sigmoid internally), so it stays finite for any logit.
    The non-batch dims of ``x`` are the event; ``logits`` may carry extra leading sample dims
    (e.g. [K, N, D] against x of shape [N, D]), giving a result of shape [K, N].
    """
    ll = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
    return ll.reshape(*ll.shape[: ll.dim() - (x.dim() - 1)], -1).sum(-1)


def sample_bernoulli(logits: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Draw {0,1} values with probabilities sigmoid(logits)."""
    return torch.bernoulli(torch.sigmoid(logits), generator=generator)


def mlp(
    sizes: Sequence[int],
    activation: Callable[[], nn.Module] = nn.ReLU,
    final_activation: Callable[[], nn.Module] | None = None,
) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    if final_activation is not None:
        layers.append(final_activation())
    return nn.Sequential(*layers)


def like(module: nn.Module) -> dict[str, torch.dtype | torch.device]:
    """dtype/device of a module's parameters, for fresh noise tensors."""
    p = next(module.parameters())
    return {"dtype": p.dtype, "device": p.device}


def randn(
    shape: Sequence[int], module: nn.Module, generator: torch.Generator | None = None
) -> Tensor:
    """Standard normal noise matching the module's dtype/device (seeded by ``generator``)."""
    return torch.randn(*shape, generator=generator, **like(module))  # type: ignore[arg-type]


def rand(
    shape: Sequence[int], module: nn.Module, generator: torch.Generator | None = None
) -> Tensor:
    """Uniform [0, 1) noise matching the module's dtype/device."""
    return torch.rand(*shape, generator=generator, **like(module))  # type: ignore[arg-type]


def checked_context(owner: str, context_dim: int, context: Tensor | None, n: int
                    ) -> Tensor | None:
    """A conditional model's context checked against its `context_dim` and broadcast to
    [n, C] (one [C] vector serves the whole batch); None for an unconditional model."""
    if context_dim == 0:
        if context is not None:
            raise ValueError(f"{owner} takes no context (context_dim = 0)")
        return None
    if context is None:
        raise ValueError(f"{owner} needs a context of dimension {context_dim}")
    if context.dim() == 1:
        context = context.expand(n, -1)
    if tuple(context.shape) != (n, context_dim):
        raise ValueError(f"context must be [{context_dim}] or [{n}, {context_dim}], "
                         f"got {tuple(context.shape)}")
    return context


class Conditional:
    """What a companion model's ``context=`` goes through: ``context_dim`` (0 for an
    unconditional model) and `_context`, the context checked against it and broadcast to
    [n, C]. Mixed into each family's base class."""

    #: Dimension of the conditioning vector (0: unconditional).
    context_dim = 0

    def _context(self, context: Tensor | None, n: int) -> Tensor | None:
        """The context checked against ``context_dim`` and broadcast to [n, C]."""
        return checked_context(type(self).__name__, self.context_dim, context, n)


def positive(name: str, value: float) -> float:
    """value as a float, refused unless > 0 (a scale bound, a spline's interval)."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return float(value)


def soft_clamp(raw: Tensor, bound: float) -> Tensor:
    """bound * tanh(raw / bound): raw where |raw| << bound, smoothly limited to
    (-bound, bound); the flows' log-scales, so exp(s) cannot overflow."""
    return bound * torch.tanh(raw / bound)


def one_hot(labels: Tensor, classes: int, module: nn.Module) -> Tensor:
    """Integer class labels [N] -> the float one-hot context [N, classes] a conditional
    model takes (its dtype and device), so p(x | c) is p(x | label) (Mirza and Osindero
    2014; Sohn et al. 2015). Labels outside 0..classes - 1 are a ValueError."""
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1:
        raise ValueError(f"labels must be a vector [N], got shape {tuple(labels.shape)}")
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < classes):
        raise ValueError(f"labels must lie in 0..{classes - 1}, got "
                         f"{int(labels.min())}..{int(labels.max())}")
    p = next(module.parameters())
    return F.one_hot(labels.to(p.device), classes).to(dtype=p.dtype)
