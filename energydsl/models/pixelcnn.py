"""Gated PixelCNN with colour channel masks.

Gated blocks of van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders"; the R -> G -> B channel masks of van den Oord et al. 2016, "Pixel Recurrent
Neural Networks". The model factorises an image of C colours in raster order, and within
a pixel in colour order:

    p(x) = prod_{(i, j) raster} prod_{c} p(x_{c,i,j} | x_{:, <(i, j)}, x_{<c, i, j}),

so ``log_prob`` is exact (one network pass) and ``sample`` fills one subpixel per pass.

Two stacks make the receptive field the whole past, with no blind spot (stacked masked
k x k convolutions miss a wedge of pixels up-right of the current one, at any depth):

- vertical stack: (k//2+1) x k convolutions over the image shifted down one row, so its
  features at (i, j) see every column of the rows above i, and nothing of row i;
- horizontal stack: 1 x (k//2+1) convolutions padded on the left only (the kernel shifted
  right), so they see pixels (i, j - k//2 .. j); the centre column carries the colour mask,
  and the vertical features enter through a 1x1 link (they see only rows above).

Each block gates, tanh(W_f * x + V_f c) * sigmoid(W_g * x + V_g c) (the V c terms only
with a context, ``context_dim > 0``), has a residual connection on the horizontal stack and
sends a skip connection to the output head, which reads their sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import Conditional, as_images, bernoulli_log_prob, like, sample_bernoulli

__all__ = ["colour_groups", "colour_mask", "ColourMaskedConv2d", "GatedBlock", "GatedPixelCNN"]


def colour_groups(features: int, colours: int) -> Tensor:
    """The colour group of each of `features` feature maps: contiguous blocks of
    features / colours (first R, then G, then B); for the image itself, channel c is c."""
    if colours < 1 or features % colours:
        raise ValueError(f"{features} feature maps do not split into {colours} colour groups")
    return torch.arange(features) // (features // colours)


def colour_mask(
    in_channels: int, out_channels: int, kernel_size: int, colours: int, mask_type: str
) -> Tensor:
    """The {0, 1} float mask [out, in, k, k] of a colour-masked k x k convolution.

    Pixels before the centre in raster order are seen through every channel; the centre
    pixel only from input group g_in to output group g_out with g_in < g_out (type A, the
    first layer: a colour never sees itself) or g_in <= g_out (type B, later layers, whose
    group-g features already see only the colours < g of the centre). For k = 3:

        1 1 1       M (type B)  in: R G B     M (type A)  in: R G B
        1 M 0           out R       1 0 0         out R       0 0 0
        0 0 0               G       1 1 0             G       1 0 0
                            B       1 1 1             B       1 1 0

    With one colour this is the plain PixelCNN mask (centre hidden for A, kept for B).
    """
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
    if kernel_size % 2 == 0:
        raise ValueError("kernel_size must be odd")
    c = kernel_size // 2
    g_out = colour_groups(out_channels, colours)[:, None]
    g_in = colour_groups(in_channels, colours)[None, :]
    mask = torch.zeros(out_channels, in_channels, kernel_size, kernel_size)
    mask[:, :, :c, :] = 1
    mask[:, :, c, :c] = 1
    mask[:, :, c, c] = (g_in < g_out) if mask_type == "A" else (g_in <= g_out)
    return mask


class ColourMaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by `colour_mask` (a buffer).

    part="full": the k x k kernel zero-padded by k//2 on every side (a colour PixelCNN
    layer). part="row": only the mask's centre row up to the centre, a 1 x (k//2+1) kernel
    padded by k//2 on the left only, so output (i, j) sees (i, j - k//2 .. j): the
    horizontal stack. gates=2 stacks the output features twice, [f, g] for tanh(f) *
    sigmoid(g), each half split into colour groups alike, so a gate and the features it
    gates are in one colour group.
    """

    mask: Tensor

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        colours: int,
        mask_type: str,
        part: str = "full",
        gates: int = 1,
    ) -> None:
        if part not in ("full", "row"):
            raise ValueError(f"part must be 'full' or 'row', got {part!r}")
        mask = colour_mask(in_channels, out_channels, kernel_size, colours, mask_type)
        mask = mask.repeat(gates, 1, 1, 1)
        c = kernel_size // 2
        if part == "row":
            mask, pad = mask[:, :, c : c + 1, : c + 1], (c, 0, 0, 0)
        else:
            pad = (c, c, c, c)
        super().__init__(in_channels, gates * out_channels, (mask.shape[2], mask.shape[3]))
        self.register_buffer("mask", mask.contiguous())
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


def _gate(pre: Tensor) -> Tensor:
    """tanh(f) * sigmoid(g) for pre = [f, g] along the channels."""
    f, g = pre.chunk(2, dim=1)
    return torch.tanh(f) * torch.sigmoid(g)


class GatedBlock(nn.Module):
    """One gated layer of both stacks: (v, h) -> (v', h', skip).

    Vertical: v_pre = W_v * v over rows i - k//2 .. i and columns j - k//2 .. j + k//2
    (padded above and at the sides), v' = gate(v_pre + V_v c). Block A (the first) shifts
    its image input down a row first, so v and v' at row i only ever see rows above i.
    Horizontal: h_pre = W_h * h (colour-masked row kernel) + link(v_pre) + V_h c,
    y = gate(h_pre), skip = S y, h' = h + R y (block A: h' = R y, as its h is the image,
    whose centre must stay hidden). S and R are 1x1 colour-masked (type B). The last block
    (`last=True`) has no R and returns h unchanged: nothing reads it.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        colours: int,
        mask_type: str,
        context_dim: int = 0,
        last: bool = False,
    ) -> None:
        super().__init__()
        k = kernel_size
        self.kernel_size, self.mask_type = k, mask_type
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (k // 2 + 1, k))
        self.horizontal = ColourMaskedConv2d(in_channels, channels, k, colours, mask_type,
                                             part="row", gates=2)
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.skip = ColourMaskedConv2d(channels, channels, 1, colours, "B")
        self.residual = None if last else ColourMaskedConv2d(channels, channels, 1, colours, "B")
        # V c for both gates of both stacks: [V_v c, V_h c], 2 * channels each
        self.context = nn.Linear(context_dim, 4 * channels, bias=False) if context_dim else None

    def forward(
        self, v: Tensor, h: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        k = self.kernel_size
        if self.mask_type == "A":
            v = F.pad(v, (0, 0, 1, 0))[:, :, :-1]  # down-shift: row i holds row i - 1
        v_pre = self.vertical(F.pad(v, (k // 2, k // 2, k // 2, 0)))
        h_pre = self.horizontal(h)
        if self.context is not None and context is not None:
            bias_v, bias_h = self.context(context)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + bias_v, h_pre + bias_h
        h_pre = h_pre + self.link(v_pre)
        y = _gate(h_pre)
        if self.residual is not None:
            h = self.residual(y) + (h if self.mask_type == "B" else 0)
        return _gate(v_pre), h, self.skip(y)


class GatedPixelCNN(Conditional, nn.Module):
    """Gated PixelCNN over [N, colours, side, side] images (flat [N, colours*side*side]
    accepted), with `n_layers` gated blocks of `channels` feature maps (split into
    `colours` groups) and a 1x1 head (ReLU, conv, ReLU, conv) on the sum of the skips.

    levels=2: one Bernoulli logit per subpixel, {0, 1} data (``data_kind = "binary"``).
    levels=L > 2: a categorical over the values k / (L - 1), k = 0 .. L-1, per subpixel
    (``data_kind = "continuous"``: data in [0, 1], rounded to the nearest value; the
    digits' k/16 with L = 17); `log_prob` is then the exact log-mass of the rounded image.
    context_dim = C > 0: class-conditional, p(x | c) with V c added to both gates of both
    stacks in every block; every method takes `context` ([N, C], or [C] for the batch).
    """

    data_kind = "binary"
    log_prob_kind = "exact"

    def __init__(
        self,
        side: int = 8,
        colours: int = 1,
        levels: int = 2,
        channels: int = 30,
        n_layers: int = 5,
        kernel_size: int = 3,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        if levels < 2 or n_layers < 1 or context_dim < 0:
            raise ValueError("need levels >= 2, n_layers >= 1 and context_dim >= 0")
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        colour_groups(channels, colours)  # channels must split into colour groups
        self.side, self.colours, self.levels, self.context_dim = side, colours, levels, context_dim
        self.dim = colours * side * side
        self.event_shape: tuple[int, ...] = (colours, side, side)
        if levels > 2:
            self.data_kind = "continuous"
        self.outputs = 1 if levels == 2 else levels  # logits per subpixel
        self.blocks = nn.ModuleList(
            GatedBlock(colours if i == 0 else channels, channels, kernel_size, colours,
                       "A" if i == 0 else "B", context_dim, last=i == n_layers - 1)
            for i in range(n_layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(),
            ColourMaskedConv2d(channels, channels, 1, colours, "B"),
            nn.ReLU(),
            ColourMaskedConv2d(channels, colours * self.outputs, 1, colours, "B"),
        )

    def logits(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """[N, colours, outputs, side, side]: logit(s) of subpixel (c, i, j), a function of
        the pixels before (i, j) and of the colours < c of (i, j) only. Input centred to
        2 x - 1."""
        x = as_images(x, self.side, self.colours)
        context = self._context(context, x.shape[0])
        v = h = 2 * x - 1
        skips: Tensor | None = None
        for block in self.blocks:
            v, h, skip = block(v, h, context)
            skips = skip if skips is None else skips + skip
        assert skips is not None
        out = self.head(skips)
        return out.reshape(x.shape[0], self.colours, self.outputs, self.side, self.side)

    def _indices(self, x: Tensor) -> Tensor:
        """The level k of each subpixel of x in [0, 1] (nearest of k / (levels - 1))."""
        return torch.round(x * (self.levels - 1)).clamp(0, self.levels - 1).long()

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log p(x) (or log p(x | c)), shape [N]."""
        x = as_images(x, self.side, self.colours)
        if self.levels == 2:
            return bernoulli_log_prob(self.logits(x, context)[:, :, 0], x)
        k = self._indices(x)
        logp = F.log_softmax(self.logits(k.to(x.dtype) / (self.levels - 1), context), dim=2)
        return logp.gather(2, k.unsqueeze(2)).reshape(x.shape[0], -1).sum(1)

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Mean negative log-likelihood (nats per example)."""
        return -self.log_prob(x, context).mean()

    def _draw(self, logits: Tensor, generator: torch.Generator | None) -> Tensor:
        """One value per row of logits [n, outputs]: a Bernoulli draw, or the value
        k / (levels - 1) of a categorical draw k."""
        if self.levels == 2:
            return sample_bernoulli(logits[:, 0], generator)
        k = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
        return k.to(logits.dtype) / (self.levels - 1)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, context: Tensor | None = None
    ) -> Tensor:
        """Ancestral samples [n, colours, side, side]: pixels in raster order, and within
        a pixel the colours in order (R, G, B), one network pass per subpixel."""
        context = self._context(context, n)
        x = torch.zeros((n, *self.event_shape), **like(self))  # type: ignore[call-overload]
        for i in range(self.side):
            for j in range(self.side):
                for c in range(self.colours):
                    x[:, c, i, j] = self._draw(self.logits(x, context)[:, c, :, i, j], generator)
        return x
