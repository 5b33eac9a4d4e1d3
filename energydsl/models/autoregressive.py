"""Autoregressive models of binary data (seed 003, 18.2-18.3).

Each factorises p(x) = prod_i p(x_i | x_<i) in a fixed order, with every conditional a
Bernoulli given by a logit that depends only on earlier coordinates. So ``log_prob(x)`` is
exact (``log_prob_kind = "exact"``), computed for all i in one pass, and ``sample(n)``
draws the coordinates one at a time in order. Data are {0, 1} (``data_kind = "binary"``).

- FVSBN: logit_i = b_i + sum_{j<i} W_ij x_j (a fully visible sigmoid belief net).
- NADE: weight-tied hidden layer h_i = sigmoid(c + W[:, <i] x_<i), logit_i = V_i . h_i + b_i.
- MADE: an MLP whose weights are masked by the seed 003 degree rule; optionally
  order-agnostic and/or connectivity-agnostic (several mask sets, cycled during training).
- PixelCNN: masked convolutions (mask A then mask B) over the image in raster order.
- LSTMAR: an LSTM reading the pixels in raster order, shifted by one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import as_flat, as_images, bernoulli_log_prob, like, sample_bernoulli

__all__ = ["FVSBN", "NADE", "UntiedNADE", "MADE", "PixelCNN", "LSTMAR", "RNNAR", "MaskedConv2d"]


def _sample_in_order(
    n: int,
    order: Sequence[int],
    shape: tuple[int, ...],
    logits_fn: Callable[[Tensor], Tensor],
    module: nn.Module,
    generator: torch.Generator | None,
) -> Tensor:
    """Ancestral sampling: fill flat coordinates in ``order`` from logits_fn(current x).

    One full network pass per coordinate (D passes): simple, and only the entry being
    sampled is read, so it is correct for any model whose logit i ignores x_>=i.
    """
    x = torch.zeros(n, *shape, **like(module))  # type: ignore[arg-type]
    flat = x.view(n, -1)
    for d in order:
        logit = logits_fn(x).reshape(n, -1)[:, d]
        flat[:, d] = sample_bernoulli(logit, generator)
    return x


class FVSBN(nn.Module):
    """Fully visible sigmoid belief network: p(x_i=1|x_<i) = sigmoid(b_i + sum_{j<i} W_ij x_j)."""

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.event_shape: tuple[int, ...] = (dim,)
        self.weight = nn.Parameter(torch.randn(dim, dim) * (1.0 / math.sqrt(dim)))
        self.bias = nn.Parameter(torch.zeros(dim))
        # Strictly lower-triangular: logit i sees only x_j with j < i.
        self.register_buffer("mask", torch.tril(torch.ones(dim, dim), diagonal=-1))

    def logits(self, x: Tensor) -> Tensor:
        """All D conditional logits at once, shape [N, D]."""
        return F.linear(as_flat(x, self.dim), self.weight * self.mask, self.bias)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape [N]."""
        x = as_flat(x, self.dim)
        return bernoulli_log_prob(self.logits(x), x)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples, shape [n, D]."""
        return _sample_in_order(n, range(self.dim), (self.dim,), self.logits, self, generator)


class NADE(nn.Module):
    """Weight-tied NADE (Larochelle and Murray 2011).

    h_i = sigmoid(c + W[:, <i] x_<i) shares W across all i, so the pre-activations are a
    running sum over the inputs. It is taken a block of positions at a time: each block's
    pre-activations are one exclusive cumulative sum from the running [N, H] total, so
    memory is O(N H B) for blocks of B positions (B from `block_elements`), and under
    autograd each block is recomputed in the backward pass (activation checkpointing)
    rather than kept: O(N H (D / B + B)) where the whole [N, D, H] tensor took 200 MB at
    MNIST scale.
    """

    data_kind = "binary"
    log_prob_kind = "exact"
    block_elements = 2**22  # N * B * H entries per block at most

    def __init__(self, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.event_shape: tuple[int, ...] = (dim,)
        self.W = nn.Parameter(torch.randn(hidden, dim) * (1.0 / math.sqrt(dim)))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.randn(dim, hidden) * (1.0 / math.sqrt(hidden)))
        self.b = nn.Parameter(torch.zeros(dim))

    def logits(self, x: Tensor) -> Tensor:
        """All D conditional logits, shape [N, D]."""
        x = as_flat(x, self.dim)
        n, hidden = x.shape[0], self.c.shape[0]
        block = max(1, min(self.dim, self.block_elements // max(1, n * hidden)))
        running = self.c.expand(n, hidden)  # c + W[:, <s] x_<s before block s
        out = []
        for start in range(0, self.dim, block):
            stop = min(self.dim, start + block)
            if block < self.dim and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                out.append(checkpoint(self._block_logits, x, running, start, stop,
                                      use_reentrant=False))
            else:
                out.append(self._block_logits(x, running, start, stop))
            running = running + x[:, start:stop] @ self.W[:, start:stop].t()
        return torch.cat(out, dim=1)

    def _block_logits(self, x: Tensor, running: Tensor, start: int, stop: int) -> Tensor:
        """The logits of positions start..stop-1 from the running pre-activation."""
        contrib = x[:, start:stop].unsqueeze(-1) * self.W[:, start:stop].t()  # [N, B, H]
        a = running.unsqueeze(1) + torch.cumsum(contrib, dim=1) - contrib  # exclusive sum
        return (torch.sigmoid(a) * self.V[start:stop]).sum(-1) + self.b[start:stop]

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape [N]."""
        x = as_flat(x, self.dim)
        return bernoulli_log_prob(self.logits(x), x)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples with the O(H) per-step update a += W[:, i] x_i."""
        x = torch.zeros(n, self.dim, **like(self))  # type: ignore[arg-type]
        a = self.c.expand(n, -1).clone()
        for i in range(self.dim):
            logit = torch.sigmoid(a) @ self.V[i] + self.b[i]
            x[:, i] = sample_bernoulli(logit, generator)
            a = a + x[:, i : i + 1] * self.W[:, i]
        return x


class MADE(nn.Module):
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
                layer_degrees, low = [], 1
                for h in hidden:
                    deg = torch.randint(low, dim, (h,), generator=g)
                    layer_degrees.append(deg)
                    low = int(deg.min())
            degrees.append(layer_degrees)
        # orders[k, i] = the input coordinate at position i of ordering k.
        self.register_buffer("orders", torch.stack(orders))
        for layer_idx in range(len(hidden)):
            self.register_buffer(
                f"degrees_{layer_idx}", torch.stack([d[layer_idx] for d in degrees])
            )
        self.n_hidden_layers = len(hidden)
        self.register_buffer("mask_index", torch.zeros((), dtype=torch.long))

    def order(self, k: int | None = None) -> Tensor:
        """The ordering of mask set k (default: the current one)."""
        return self.orders[int(self.mask_index) if k is None else k]

    def masks(self, k: int | None = None) -> list[Tensor]:
        """The {0,1} weight masks of mask set k, one per linear layer ([out, in])."""
        k = int(self.mask_index) if k is None else k
        deg_in = torch.empty(self.dim, dtype=torch.long, device=self.orders.device)
        deg_in[self.orders[k]] = torch.arange(1, self.dim + 1, device=self.orders.device)
        out, prev = [], deg_in
        for layer_idx in range(self.n_hidden_layers):
            deg = getattr(self, f"degrees_{layer_idx}")[k]
            out.append(deg[:, None] >= prev[None, :])
            prev = deg
        out.append(deg_in[:, None] > prev[None, :])
        return out

    def logits(self, x: Tensor, k: int | None = None) -> Tensor:
        """All D conditional logits under mask set k, shape [N, D]."""
        h = as_flat(x, self.dim)
        masks = self.masks(k)
        for i, (layer, m) in enumerate(zip(self.layers, masks, strict=True)):
            h = F.linear(h, layer.weight * m.to(h.dtype), layer.bias)
            if i < len(self.layers) - 1:
                h = F.relu(h)
        return h

    def log_prob(self, x: Tensor, ensemble: bool = False) -> Tensor:
        """Exact log p(x) under the current ordering, or of the uniform mixture of all K."""
        x = as_flat(x, self.dim)
        if not ensemble:
            return bernoulli_log_prob(self.logits(x), x)
        lps = torch.stack([bernoulli_log_prob(self.logits(x, k), x) for k in range(self.num_masks)])
        return torch.logsumexp(lps, dim=0) - math.log(self.num_masks)

    def loss(self, x: Tensor) -> Tensor:
        """Mean NLL under the current mask set (no side effect: the mask set moves on only
        when asked, by `next_mask_set` or the training loop's `after_step`)."""
        return -self.log_prob(x).mean()

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
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples in the current ordering, shape [n, D]."""
        order = self.order().tolist()
        return _sample_in_order(n, order, (self.dim,), self.logits, self, generator)


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


class PixelCNN(nn.Module):
    """PixelCNN for binary [N, 1, side, side] images (flat [N, side*side] accepted).

    One mask-A convolution (``kernel_a``), ``n_layers`` mask-B convolutions (``kernel_b``),
    then two 1x1 convolutions to one Bernoulli logit per pixel. Single channel: the RGB
    channel ordering of the full PixelCNN is not needed for the digits.
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
    ) -> None:
        super().__init__()
        self.side = side
        self.dim = side * side
        self.event_shape: tuple[int, ...] = (1, side, side)
        layers: list[nn.Module] = [MaskedConv2d("A", 1, channels, kernel_a), nn.ReLU()]
        for _ in range(n_layers):
            layers += [MaskedConv2d("B", channels, channels, kernel_b), nn.ReLU()]
        layers += [nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, 1, 1)]
        self.net = nn.Sequential(*layers)

    def logits(self, x: Tensor) -> Tensor:
        """Per-pixel logits, shape [N, 1, side, side]; input centred to {-1, 1}."""
        return self.net(2 * as_images(x, self.side) - 1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape [N]."""
        x = as_images(x, self.side)
        return bernoulli_log_prob(self.logits(x), x)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Raster-order ancestral samples, shape [n, 1, side, side]."""
        return _sample_in_order(n, range(self.dim), self.event_shape, self.logits, self, generator)


class LSTMAR(nn.Module):
    """LSTM over the pixels in raster order (seed 003, 18.3).

    Step i reads x_{i-1} (as -1/+1; the first step reads 0, a start symbol no pixel takes)
    and emits the logit of x_i, so the weights are shared across positions.
    """

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(self, dim: int = 64, hidden: int = 64, num_layers: int = 1,
                 cell: str = "lstm") -> None:
        """cell: "lstm", or "rnn" for a plain tanh recurrent network (RNNAR)."""
        super().__init__()
        if cell not in ("lstm", "rnn"):
            raise ValueError(f"cell must be 'lstm' or 'rnn', got {cell!r}")
        self.dim = dim
        self.cell = cell
        self.event_shape: tuple[int, ...] = (dim,)
        if cell == "lstm":  # the attribute names keep LSTM checkpoints loadable
            self.lstm = nn.LSTM(1, hidden, num_layers=num_layers, batch_first=True)
        else:
            self.rnn = nn.RNN(1, hidden, num_layers=num_layers, nonlinearity="tanh",
                              batch_first=True)
        self.head = nn.Linear(hidden, 1)

    @property
    def recurrent(self) -> nn.Module:
        """The recurrent network: the LSTM, or the tanh RNN."""
        return self.lstm if self.cell == "lstm" else self.rnn

    def logits(self, x: Tensor) -> Tensor:
        """All D conditional logits, shape [N, D] (one recurrent pass over the shifted
        input)."""
        x = as_flat(x, self.dim)
        shifted = torch.cat([torch.zeros_like(x[:, :1]), 2 * x[:, :-1] - 1], dim=1)
        h, _ = self.recurrent(shifted.unsqueeze(-1))
        return self.head(h).squeeze(-1)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape [N]."""
        x = as_flat(x, self.dim)
        return bernoulli_log_prob(self.logits(x), x)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples carrying the recurrent state: one step per pixel, [n, D]."""
        x = torch.zeros(n, self.dim, **like(self))  # type: ignore[arg-type]
        inp = torch.zeros(n, 1, 1, **like(self))  # type: ignore[arg-type]
        state = None
        for i in range(self.dim):
            h, state = self.recurrent(inp, state)
            x[:, i] = sample_bernoulli(self.head(h[:, -1]).squeeze(-1), generator)
            inp = (2 * x[:, i] - 1).reshape(n, 1, 1)
        return x


class RNNAR(LSTMAR):
    """LSTMAR with a plain tanh recurrent network instead of the LSTM (Elman 1990)."""

    def __init__(self, dim: int = 64, hidden: int = 64, num_layers: int = 1) -> None:
        super().__init__(dim, hidden, num_layers, cell="rnn")


class UntiedNADE(nn.Module):
    """NADE with untied weights (Larochelle and Murray 2011's untied variant): each
    conditional i has its own input weights W[i] [H, D], masked to the inputs before i,
    h_i = sigmoid(c_i + W[i][:, <i] x_<i), logit_i = V_i . h_i + b_i. D times NADE's
    input parameters; all D conditionals in one masked contraction."""

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(self, dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.dim = dim
        self.event_shape: tuple[int, ...] = (dim,)
        self.W = nn.Parameter(torch.randn(dim, hidden, dim) * (1.0 / math.sqrt(dim)))
        self.c = nn.Parameter(torch.zeros(dim, hidden))
        self.V = nn.Parameter(torch.randn(dim, hidden) * (1.0 / math.sqrt(hidden)))
        self.b = nn.Parameter(torch.zeros(dim))
        # mask[i, j] = 1 where input j comes before conditional i
        self.register_buffer("mask", torch.ones(dim, dim).tril(-1), persistent=False)

    def logits(self, x: Tensor) -> Tensor:
        """All D conditional logits, shape [N, D]."""
        x = as_flat(x, self.dim)
        weights = self.W * self.mask.to(self.W.dtype).unsqueeze(1)  # [D, H, D]
        a = torch.einsum("ihj,nj->nih", weights, x) + self.c  # [N, D, H]
        return (torch.sigmoid(a) * self.V).sum(-1) + self.b

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x), shape [N]."""
        x = as_flat(x, self.dim)
        return bernoulli_log_prob(self.logits(x), x)

    def loss(self, x: Tensor) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x).mean()

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Ancestral samples in order, shape [n, D]."""
        return _sample_in_order(n, list(range(self.dim)), (self.dim,), self.logits, self,
                                generator)
