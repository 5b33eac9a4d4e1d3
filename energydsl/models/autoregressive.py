"""Autoregressive models of binary data (seed 003, 18.2-18.3).

Each factorises p(x) = prod_i p(x_i | x_<i) in a fixed order, with every conditional a
Bernoulli given by a logit that depends only on earlier coordinates. So ``log_prob(x)`` is
exact (``log_prob_kind = "exact"``), computed for all i in one pass, and ``sample(n)``
draws the coordinates one at a time in order. Data are {0, 1} (``data_kind = "binary"``).

- FVSBN: logit_i = b_i + sum_{j<i} W_ij x_j (a fully visible sigmoid belief net).
- NADE: weight-tied hidden layer h_i = sigmoid(c + W[:, <i] x_<i), logit_i = V_i . h_i + b_i.
- MADE: an MLP whose weights are masked by the seed 003 degree rule; optionally
  order-agnostic and/or connectivity-agnostic (several mask sets, cycled during training).
  The degree rule lives in ``hidden_degrees``/``input_degrees``/``degree_masks``, shared
  with ``MaskedNetwork``: a MADE with P real outputs per coordinate and an optional
  unmasked context, the conditioner of the masked autoregressive flows (flows.MAF/IAF).
- PixelCNN: masked convolutions (mask A then mask B) over the image in raster order.
- LSTMAR: an LSTM reading the pixels in raster order, shifted by one.

Every model may be conditional (``context_dim = C > 0``): p(x | c) = prod_i p(x_i | x_<i, c),
the context c ([N, C], or [C] shared by the batch) entering every conditional's logit
without a mask, so each conditional is still a Bernoulli and p(. | c) is normalised for
every c. ``log_prob``, ``loss``, ``logits`` and ``sample`` then take ``context=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import (
    Conditional,
    as_flat,
    as_images,
    bernoulli_log_prob,
    like,
    sample_bernoulli,
)

__all__ = [
    "FVSBN",
    "NADE",
    "MADE",
    "MaskedNetwork",
    "PixelCNN",
    "LSTMAR",
    "RNNAR",
    "UntiedNADE",
    "MaskedConv2d",
    "hidden_degrees",
    "input_degrees",
    "degree_masks",
]


def hidden_degrees(
    dim: int, hidden: Sequence[int], generator: torch.Generator | None = None
) -> list[Tensor]:
    """Random degrees of the hidden units (Germain et al. 2015; seed 003, 18.2.4).

    Layer l's units draw m(k) uniformly from [min degree of layer l - 1, D - 1] (the first
    hidden layer from [1, D - 1]), so no unit is useless.
    """
    degrees, low = [], 1
    for h in hidden:
        deg = torch.randint(low, dim, (h,), generator=generator)
        degrees.append(deg)
        low = int(deg.min()) if h > 0 else low
    return degrees


def input_degrees(order: Tensor) -> Tensor:
    """Input degrees from an ordering (order[i] = the coordinate at position i):
    coordinate order[i] gets degree i + 1."""
    deg = torch.empty_like(order)
    deg[order] = torch.arange(1, order.numel() + 1, device=order.device, dtype=order.dtype)
    return deg


def degree_masks(
    deg_in: Tensor, hidden: Sequence[Tensor], deg_out: Tensor | None = None
) -> list[Tensor]:
    """The {0,1} (bool) weight masks, one per linear layer ([out, in]), of the degree rule:
    hidden unit k <- unit j iff m(k) >= m(j); output o <- unit j iff m(o) > m(j), with
    ``deg_out`` the outputs' degrees (default ``deg_in``: one output per coordinate).
    Output o then depends only on inputs of degree < m(o)."""
    deg_out = deg_in if deg_out is None else deg_out
    out, prev = [], deg_in
    for deg in hidden:
        out.append(deg[:, None] >= prev[None, :])
        prev = deg
    out.append(deg_out[:, None] > prev[None, :])
    return out


def _sample_in_order(
    n: int,
    order: Sequence[int],
    shape: tuple[int, ...],
    logits_fn: Callable[..., Tensor],
    module: nn.Module,
    generator: torch.Generator | None,
    context: Tensor | None = None,
) -> Tensor:
    """Ancestral sampling: fill flat coordinates in ``order`` from
    logits_fn(current x, context=context) (the context, if any, [n, C], fixed throughout).

    One full network pass per coordinate (D passes): simple, and only the entry being
    sampled is read, so it is correct for any model whose logit i ignores x_>=i.
    """
    x = torch.zeros(n, *shape, **like(module))  # type: ignore[arg-type]
    flat = x.view(n, -1)
    for d in order:
        logit = logits_fn(x, context=context).reshape(n, -1)[:, d]
        flat[:, d] = sample_bernoulli(logit, generator)
    return x


def _context_map(context_dim: int, width: int) -> nn.Linear | None:
    """The bias-free linear map a context adds to `width` pre-activations (None without a
    context, so unconditional models keep their parameters and state dicts)."""
    if context_dim < 0:
        raise ValueError(f"context_dim must be >= 0, got {context_dim}")
    return nn.Linear(context_dim, width, bias=False) if context_dim else None


class _ExactBinary(Conditional, nn.Module):
    """The shared part of the autoregressive models of binary data whose
    `logits(x, context=None)` give all D conditionals at once: the exact log-likelihood
    (log p(x), or log p(x | c) for a conditional model) and its mean as the loss."""

    dim: int
    event_shape: tuple[int, ...]

    def _prepare(self, x: Tensor) -> Tensor:
        """The data in the layout `logits` takes (flat [N, D]; images for PixelCNN)."""
        return as_flat(x, self.dim)

    def logits(self, x: Tensor, *, context: Tensor | None = None
               ) -> Tensor:  # pragma: no cover - every subclass has one
        raise NotImplementedError

    def log_prob(self, x: Tensor, *, context: Tensor | None = None) -> Tensor:
        """Exact log p(x) (log p(x | c) with a context), shape [N]."""
        x = self._prepare(x)
        return bernoulli_log_prob(self.logits(x, context=context), x)

    def loss(self, x: Tensor, *, context: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x, context=context).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """Ancestral samples in order, shape [n, *event_shape] (given c: [C] or [n, C])."""
        return _sample_in_order(n, range(self.dim), self.event_shape, self.logits, self,
                                generator, self._context(context, n))


class FVSBN(_ExactBinary):
    """Fully visible sigmoid belief network: p(x_i=1|x_<i) = sigmoid(b_i + sum_{j<i} W_ij x_j).

    Conditional (``context_dim = C``): the bias becomes b + U c, one learnt [D, C] map U.
    """

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(self, dim: int = 64, context_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.event_shape = (dim,)
        self.weight = nn.Parameter(torch.randn(dim, dim) * (1.0 / math.sqrt(dim)))
        self.bias = nn.Parameter(torch.zeros(dim))
        # Strictly lower-triangular: logit i sees only x_j with j < i.
        self.register_buffer("mask", torch.tril(torch.ones(dim, dim), diagonal=-1))
        self.context_map = _context_map(context_dim, dim)
        self.context_dim = context_dim

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """All D conditional logits at once, shape [N, D]."""
        x = as_flat(x, self.dim)
        c = self._context(context, x.shape[0])
        out = F.linear(x, self.weight * self.mask, self.bias)
        return out if self.context_map is None else out + self.context_map(c)


class NADE(_ExactBinary):
    """Weight-tied NADE (Larochelle and Murray 2011).

    h_i = sigmoid(c + W[:, <i] x_<i) shares W across all i, so the pre-activations are a
    running sum over the inputs. It is taken a block of positions at a time: each block's
    pre-activations are one exclusive cumulative sum from the running [N, H] total, so
    memory is O(N H B) for blocks of B positions (B from `block_elements`), and under
    autograd each block is recomputed in the backward pass (activation checkpointing)
    rather than kept: O(N H (D / B + B)) where the whole [N, D, H] tensor took 200 MB at
    MNIST scale.

    Conditional (``context_dim = C``): the context shifts the hidden bias and the output
    biases, c -> c + A ctx and b -> b + B ctx (learnt A [H, C], B [D, C]), the same for
    every conditional, so the weight sharing and the running sum are unchanged.
    """

    data_kind = "binary"
    log_prob_kind = "exact"
    block_elements = 2**22  # N * B * H entries per block at most

    def __init__(self, dim: int = 64, hidden: int = 64, context_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.event_shape = (dim,)
        self.W = nn.Parameter(torch.randn(hidden, dim) * (1.0 / math.sqrt(dim)))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(dim, hidden) * (1.0 / math.sqrt(hidden)))
        self.b = nn.Parameter(torch.zeros(dim))
        self.context_hidden = _context_map(context_dim, hidden)
        self.context_out = _context_map(context_dim, dim)
        self.context_dim = context_dim

    def _biases(self, context: Tensor | None, n: int) -> tuple[Tensor, Tensor]:
        """The hidden and output biases, [n, H] and [n, D] (or [H] and [D] unconditional)."""
        c = self._context(context, n)
        if c is None or self.context_hidden is None or self.context_out is None:
            return self.c, self.b
        return self.c + self.context_hidden(c), self.b + self.context_out(c)

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """All D conditional logits, shape [N, D]."""
        x = as_flat(x, self.dim)
        n, hidden = x.shape[0], self.c.shape[0]
        c_bias, b_bias = self._biases(context, n)
        b_bias = b_bias.expand(n, self.dim)
        block = max(1, min(self.dim, self.block_elements // max(1, n * hidden)))
        running = c_bias.expand(n, hidden)  # c + W[:, <s] x_<s before block s
        out = []
        for start in range(0, self.dim, block):
            stop = min(self.dim, start + block)
            if block < self.dim and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                out.append(checkpoint(self._block_logits, x, running, b_bias, start, stop,
                                      use_reentrant=False))
            else:
                out.append(self._block_logits(x, running, b_bias, start, stop))
            running = running + x[:, start:stop] @ self.W[:, start:stop].t()
        return torch.cat(out, dim=1)

    def _block_logits(self, x: Tensor, running: Tensor, b_bias: Tensor, start: int,
                      stop: int) -> Tensor:
        """The logits of positions start..stop-1 from the running pre-activation."""
        contrib = x[:, start:stop].unsqueeze(-1) * self.W[:, start:stop].t()  # [N, B, H]
        a = running.unsqueeze(1) + torch.cumsum(contrib, dim=1) - contrib  # exclusive sum
        return (torch.sigmoid(a) * self.V[start:stop]).sum(-1) + b_bias[:, start:stop]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """Ancestral samples with the O(H) per-step update a += W[:, i] x_i."""
        x = torch.zeros(n, self.dim, **like(self))  # type: ignore[arg-type]
        c_bias, b_bias = self._biases(context, n)
        a = c_bias.expand(n, -1).clone()
        b_bias = b_bias.expand(n, self.dim)
        for i in range(self.dim):
            logit = torch.sigmoid(a) @ self.V[i] + b_bias[:, i]
            x[:, i] = sample_bernoulli(logit, generator)
            a = a + x[:, i : i + 1] * self.W[:, i]
        return x


class MADE(_ExactBinary):
    """Masked autoencoder for distribution estimation (seed 003, 18.2.4).

    Every unit k gets a degree m(k): input d has the degree of its position in the ordering
    (1..D); hidden units draw m(k) uniformly from [min degree of the layer below, D - 1]
    (for one hidden layer: [1, D - 1] as in seed 003). A weight k <- j is kept iff
    m(k) >= m(j); an output d <- k iff m(d) > m(k). Hence logit d depends only on inputs
    earlier in the ordering.

    ``num_masks > 1`` stores that many mask sets: ``order_agnostic`` draws a new ordering
    for each, ``connectivity_agnostic`` new hidden degrees. In training mode each ``loss``
    call uses the current set and then moves to the next (cycling), as in the MADE paper.
    ``log_prob(x, ensemble=True)`` averages the K models' probabilities (an exact mixture).

    Conditional (``context_dim = C``): as in ``MaskedNetwork``, an unmasked bias-free
    linear map of the context adds to every hidden layer and to the logits.
    """

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(
        self,
        dim: int = 64,
        hidden: Sequence[int] = (128,),
        num_masks: int = 1,
        order_agnostic: bool = False,
        connectivity_agnostic: bool = False,
        seed: int = 0,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError("MADE needs dim >= 2")
        if num_masks < 1:
            raise ValueError("num_masks must be >= 1")
        if num_masks > 1 and not (order_agnostic or connectivity_agnostic):
            raise ValueError("num_masks > 1 needs order_agnostic or connectivity_agnostic")
        self.dim = dim
        self.event_shape: tuple[int, ...] = (dim,)
        self.num_masks = num_masks
        sizes = [dim, *hidden, dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        g = torch.Generator().manual_seed(seed)
        orders, degrees = [], []
        layer_degrees: list[Tensor] = []
        for k in range(num_masks):
            orders.append(torch.randperm(dim, generator=g) if order_agnostic else torch.arange(dim))
            if k == 0 or connectivity_agnostic:
                layer_degrees = hidden_degrees(dim, hidden, g)
            degrees.append(layer_degrees)
        # orders[k, i] = the input coordinate at position i of ordering k.
        self.register_buffer("orders", torch.stack(orders))
        for layer_idx in range(len(hidden)):
            self.register_buffer(
                f"degrees_{layer_idx}", torch.stack([d[layer_idx] for d in degrees])
            )
        self.n_hidden_layers = len(hidden)
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.context_layers = nn.ModuleList(
            nn.Linear(context_dim, h, bias=False) for h in (sizes[1:] if context_dim else [])
        )
        self.context_dim = context_dim
        # mask set k's masks in a dtype on a device, as `logits` multiplies them in: built
        # once, not at every call; a loaded state dict (other orders or degrees) clears it
        self._weight_masks: dict[tuple, list[Tensor]] = {}
        self.register_load_state_dict_post_hook(_forget_weight_masks)

    def _mask_set(self, k: int | None) -> int:
        """k, or the current mask set (read without a device sync when there is one)."""
        if k is not None:
            return k
        return int(self.mask_index) if self.num_masks > 1 else 0

    def order(self, k: int | None = None) -> Tensor:
        """The ordering of mask set k (default: the current one)."""
        return self.orders[self._mask_set(k)]

    def masks(self, k: int | None = None) -> list[Tensor]:
        """The {0,1} weight masks of mask set k, one per linear layer ([out, in])."""
        k = self._mask_set(k)
        hidden = [getattr(self, f"degrees_{i}")[k] for i in range(self.n_hidden_layers)]
        return degree_masks(input_degrees(self.orders[k]), hidden)

    def logits(self, x: Tensor, k: int | None = None, context: Tensor | None = None
               ) -> Tensor:
        """All D conditional logits under mask set k, shape [N, D]."""
        h = as_flat(x, self.dim)
        c = self._context(context, h.shape[0])
        key = (self._mask_set(k), h.dtype, self.orders.device)
        if key not in self._weight_masks:
            self._weight_masks[key] = [m.to(h.dtype) for m in self.masks(key[0])]
        for i, (layer, m) in enumerate(zip(self.layers, self._weight_masks[key], strict=True)):
            h = F.linear(h, layer.weight * m, layer.bias)
            if c is not None:
                h = h + self.context_layers[i](c)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h

    def log_prob(self, x: Tensor, ensemble: bool = False, context: Tensor | None = None
                 ) -> Tensor:
        """Exact log p(x) (or log p(x | c)) under the current ordering, or of the uniform
        mixture of all K."""
        x = as_flat(x, self.dim)
        if not ensemble:
            return bernoulli_log_prob(self.logits(x, context=context), x)
        lps = torch.stack([bernoulli_log_prob(self.logits(x, k, context), x)
                           for k in range(self.num_masks)])
        return torch.logsumexp(lps, dim=0) - math.log(self.num_masks)

    def loss(self, x: Tensor, *, context: Tensor | None = None) -> Tensor:
        """Mean NLL under the current mask set (no side effect: the mask set moves on only
        when asked, by `next_mask_set` or the training loop's `after_step`)."""
        return -self.log_prob(x, context=context).mean()

    @torch.no_grad()
    def next_mask_set(self) -> int:
        """Move to the next of the `num_masks` mask sets (cyclically); returns its index."""
        self.mask_index.copy_((self.mask_index + 1) % self.num_masks)
        return int(self.mask_index)

    def after_step(self) -> None:
        """Called by the training loop after each optimiser step: an order- or
        connectivity-agnostic MADE trains each mask set in turn."""
        if self.training and self.num_masks > 1:
            self.next_mask_set()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """Ancestral samples in the current ordering, shape [n, D]."""
        order = self.order().tolist()
        return _sample_in_order(n, order, (self.dim,), self.logits, self, generator,
                                self._context(context, n))


def _forget_weight_masks(module: MADE, incompatible_keys: object) -> None:
    """After a state dict is loaded: its orders and degrees may differ (a function, not
    a lambda, so that a pickled MADE stays picklable)."""
    module._weight_masks.clear()


class MaskedNetwork(nn.Module):
    """A MADE used as a conditioner: D inputs -> D x P real outputs, autoregressive.

    ``forward(x, context=None)`` returns [N, P, D]: out[:, p, i] is parameter p of
    coordinate i (e.g. P = 2 for a shift and a log-scale) and depends only on the inputs
    before i in ``order`` (order[j] = the coordinate at position j; default 0, 1, ...,
    D - 1), by the degree rule of MADE (``hidden_degrees``, ``degree_masks``: the output
    unit (i, p) has the degree of input i). The first coordinate's outputs are constants.

    ``context_dim = C > 0`` adds an unmasked context vector [N, C] (or [C], shared by the
    batch) feeding every hidden unit and every output (one bias-free linear map per layer),
    for conditional models: even the first coordinate's outputs, which see no input, then
    depend on the context. It does not break the autoregressive property in x. The masks
    are buffers (saved in the state dict); hidden degrees are drawn from ``seed``.
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (128,),
        params_per_dim: int = 2,
        order: Sequence[int] | Tensor | None = None,
        context_dim: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ValueError("MaskedNetwork needs dim >= 2")
        if params_per_dim < 1 or context_dim < 0:
            raise ValueError("params_per_dim must be >= 1 and context_dim >= 0")
        order_t = torch.arange(dim) if order is None else torch.as_tensor(order).long()
        if not torch.equal(torch.sort(order_t).values, torch.arange(dim)):
            raise ValueError(f"order must be a permutation of 0..{dim - 1}")
        self.dim, self.params_per_dim, self.context_dim = dim, params_per_dim, context_dim
        deg_in = input_degrees(order_t)
        hid = hidden_degrees(dim, hidden, torch.Generator().manual_seed(seed))
        masks = degree_masks(deg_in, hid, deg_out=deg_in.repeat(params_per_dim))
        sizes = [dim, *hidden, dim * params_per_dim]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.register_buffer("order", order_t)
        for i, m in enumerate(masks):
            self.register_buffer(f"mask_{i}", m.float())
        self.context_layers = nn.ModuleList(
            nn.Linear(context_dim, h, bias=False) for h in (sizes[1:] if context_dim else [])
        )

    def masks(self) -> list[Tensor]:
        """The {0,1} float weight masks, one per linear layer ([out, in])."""
        return [getattr(self, f"mask_{i}") for i in range(len(self.layers))]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """[N, D] -> [N, P, D] (output (i, p) at [:, p, i])."""
        h = as_flat(x, self.dim)
        if (context is None) != (self.context_dim == 0):
            raise ValueError(
                f"this network takes a context of dimension {self.context_dim}"
                if self.context_dim
                else "this network takes no context"
            )
        last = len(self.layers) - 1
        for i, (layer, m) in enumerate(zip(self.layers, self.masks(), strict=True)):
            h = F.linear(h, layer.weight * m.to(h.dtype), layer.bias)
            if context is not None:
                h = h + self.context_layers[i](context)
            if i < last:
                h = F.relu(h)
        return h.reshape(h.shape[0], self.params_per_dim, self.dim)


class MaskedConv2d(nn.Conv2d):
    """Conv2d whose kernel sees only pixels before the centre in raster order.

    Mask A (first layer) also hides the centre pixel; mask B (later layers) keeps it, since
    there the centre feature already only summarises earlier pixels (seed 003, 18.2.5).
    """

    def __init__(
        self, mask_type: str, in_channels: int, out_channels: int, kernel_size: int
    ) -> None:
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size % 2 == 0:
            raise ValueError("kernel_size must be odd")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        c = kernel_size // 2
        mask = torch.ones_like(self.weight)
        mask[:, :, c, c + (mask_type == "B") :] = 0
        mask[:, :, c + 1 :, :] = 0
        self.register_buffer("mask", mask)
        self.mask_type = mask_type

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding)


class PixelCNN(_ExactBinary):
    """PixelCNN for binary [N, 1, side, side] images (flat [N, side*side] accepted).

    One mask-A convolution (``kernel_a``), ``n_layers`` mask-B convolutions (``kernel_b``),
    then two 1x1 convolutions to one Bernoulli logit per pixel. Single channel: the RGB
    channel ordering of the full PixelCNN is not needed for the digits.

    Conditional (``context_dim = C``), as the class-conditional PixelCNN of van den Oord
    et al. 2016 ("Conditional Image Generation with PixelCNN Decoders"): every convolution
    gets a context-dependent bias V_l c, one value per channel, the same at every pixel
    (location-independent), so the masks and the raster-order factorisation are kept.
    """

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(
        self,
        side: int = 8,
        channels: int = 32,
        n_layers: int = 3,
        kernel_a: int = 5,
        kernel_b: int = 3,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        self.side = side
        self.dim = side * side
        self.event_shape = (1, side, side)
        layers: list[nn.Module] = [MaskedConv2d("A", 1, channels, kernel_a), nn.ReLU()]
        for _ in range(n_layers):
            layers += [MaskedConv2d("B", channels, channels, kernel_b), nn.ReLU()]
        layers += [nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1)]
        self.net = nn.Sequential(*layers)
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        convs = [m for m in layers if isinstance(m, nn.Conv2d)]
        self.context_layers = nn.ModuleList(
            nn.Linear(context_dim, m.out_channels, bias=False) for m in
            (convs if context_dim else [])
        )
        self.context_dim = context_dim

    def _prepare(self, x: Tensor) -> Tensor:
        return as_images(x, self.side)

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Per-pixel logits, shape [N, 1, side, side]; input centred to {-1, 1}."""
        h = 2 * as_images(x, self.side) - 1
        c = self._context(context, h.shape[0])
        if c is None:
            return self.net(h)
        biases = iter(self.context_layers)
        for module in self.net:
            h = module(h)
            if isinstance(module, nn.Conv2d):
                h = h + next(biases)(c)[:, :, None, None]
        return h


class LSTMAR(_ExactBinary):
    """LSTM over the pixels in raster order (seed 003, 18.3).

    Step i reads x_{i-1} (as -1/+1; the first step reads 0, a start symbol no pixel takes)
    and emits the logit of x_i, so the weights are shared across positions.

    Conditional (``context_dim = C``): every step also reads the context, its input
    [x_{i-1}, c] (C + 1 numbers), so every hidden state and logit sees c.
    """

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(self, dim: int = 64, hidden: int = 64, num_layers: int = 1,
                 cell: str = "lstm", context_dim: int = 0) -> None:
        """cell: "lstm", or "rnn" for a plain tanh recurrent network (RNNAR)."""
        super().__init__()
        if cell not in ("lstm", "rnn"):
            raise ValueError(f"cell must be 'lstm' or 'rnn', got {cell!r}")
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.dim = dim
        self.cell = cell
        self.context_dim = context_dim
        self.event_shape = (dim,)
        inputs = 1 + context_dim
        if cell == "lstm":  # the attribute names keep LSTM checkpoints loadable
            self.lstm = nn.LSTM(inputs, hidden, num_layers=num_layers, batch_first=True)
        else:
            self.rnn = nn.RNN(inputs, hidden, num_layers=num_layers, nonlinearity="tanh",
                              batch_first=True)
        self.head = nn.Linear(hidden, 1)

    @property
    def recurrent(self) -> nn.Module:
        """The recurrent network: the LSTM, or the tanh RNN."""
        return self.lstm if self.cell == "lstm" else self.rnn

    def _inputs(self, previous: Tensor, c: Tensor | None) -> Tensor:
        """Step inputs [N, L, 1 + C] from the previous pixels [N, L] and the context."""
        steps = previous.unsqueeze(-1)
        if c is None:
            return steps
        return torch.cat([steps, c[:, None, :].expand(-1, steps.shape[1], -1)], dim=-1)

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """All D conditional logits, shape [N, D] (one recurrent pass over the shifted
        input)."""
        x = as_flat(x, self.dim)
        c = self._context(context, x.shape[0])
        shifted = torch.cat([torch.zeros_like(x[:, :1]), 2 * x[:, :-1] - 1], dim=1)
        h, _ = self.recurrent(self._inputs(shifted, c))
        return self.head(h).squeeze(-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """Ancestral samples carrying the recurrent state: one step per pixel, [n, D]."""
        c = self._context(context, n)
        x = torch.zeros(n, self.dim, **like(self))  # type: ignore[arg-type]
        previous = torch.zeros(n, 1, **like(self))  # type: ignore[arg-type]
        state = None
        for i in range(self.dim):
            h, state = self.recurrent(self._inputs(previous, c), state)
            x[:, i] = sample_bernoulli(self.head(h[:, -1]).squeeze(-1), generator)
            previous = (2 * x[:, i] - 1).reshape(n, 1)
        return x


class RNNAR(LSTMAR):
    """LSTMAR with a plain tanh recurrent network instead of the LSTM (Elman 1990)."""

    def __init__(self, dim: int = 64, hidden: int = 64, num_layers: int = 1,
                 context_dim: int = 0) -> None:
        super().__init__(dim, hidden, num_layers, cell="rnn", context_dim=context_dim)


class UntiedNADE(_ExactBinary):
    """NADE with untied weights (Larochelle and Murray 2011's untied variant): each
    conditional i has its own input weights W[i] [H, D], masked to the inputs before i,
    h_i = sigmoid(c_i + W[i][:, <i] x_<i), logit_i = V_i . h_i + b_i. D times NADE's
    input parameters; all D conditionals in one masked contraction. Conditional
    (``context_dim = C``): as NADE, c_i -> c_i + A ctx and b -> b + B ctx."""

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(self, dim: int = 64, hidden: int = 64, context_dim: int = 0) -> None:
        super().__init__()
        self.dim = dim
        self.event_shape = (dim,)
        self.W = nn.Parameter(torch.randn(dim, hidden, dim) * (1.0 / math.sqrt(dim)))
        self.c = nn.Parameter(torch.zeros(dim, hidden))
        self.V = nn.Parameter(torch.randn(dim, hidden) * (1.0 / math.sqrt(hidden)))
        self.b = nn.Parameter(torch.zeros(dim))
        # mask[i, j] = 1 where input j comes before conditional i
        self.register_buffer("mask", torch.ones(dim, dim).tril(-1), persistent=False)
        self.context_hidden = _context_map(context_dim, hidden)
        self.context_out = _context_map(context_dim, dim)
        self.context_dim = context_dim

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """All D conditional logits, shape [N, D]."""
        x = as_flat(x, self.dim)
        c = self._context(context, x.shape[0])
        weights = self.W * self.mask.to(self.W.dtype).unsqueeze(1)  # [D, H, D]
        a = torch.einsum("ihj,nj->nih", weights, x) + self.c  # [N, D, H]
        out = self.b
        if c is not None and self.context_hidden is not None and self.context_out is not None:
            a = a + self.context_hidden(c).unsqueeze(1)
            out = out + self.context_out(c)
        return (torch.sigmoid(a) * self.V).sum(-1) + out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """Ancestral samples, computing at step i only conditional i's logit (O(H D) a
        step; `logits` would form all D conditionals each step). The entries not drawn
        yet are zero, so W[i] x needs no mask."""
        c = self._context(context, n)
        x = torch.zeros(n, self.dim, **like(self))  # type: ignore[arg-type]
        hidden, out = self.c.expand(n, -1, -1), self.b.expand(n, -1)
        if c is not None and self.context_hidden is not None and self.context_out is not None:
            hidden = hidden + self.context_hidden(c).unsqueeze(1)
            out = out + self.context_out(c)
        for i in range(self.dim):
            a = x @ self.W[i].T + hidden[:, i]  # [n, H]
            x[:, i] = sample_bernoulli(torch.sigmoid(a) @ self.V[i] + out[:, i], generator)
        return x
