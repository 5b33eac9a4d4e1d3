"""Generative adversarial networks (seed 001, question 2; DCGAN guidelines of seed 004).

Value function (seed 001, 2.2):  V(D, G) = E_pdata[log D(x)] + E_pz[log(1 - D(G(z)))].
The discriminator outputs a *logit* l, D = sigmoid(l), so log D = logsigmoid(l) and
log(1 - D) = logsigmoid(-l) are evaluated stably. For fixed G the best discriminator is
D* = p_d / (p_d + p_g) and V(D*, G) = -log 4 + 2 JSD(p_d || p_g), which is -log 4 at
p_g = p_d (seed 001, 2.3).

A GAN has no likelihood: there is **no** ``log_prob`` (``log_prob_kind = "none"``), and no
single objective either. Training alternates ``discriminator_loss(x)`` (minimised by D) and
``generator_loss(n)`` (minimised by G); ``train_step(x, opt_d, opt_g)`` does one of each.
``loss(x)`` returns their sum for monitoring only: minimising it is not GAN training.

Conditional GAN (Mirza and Osindero 2014; ``context_dim = C > 0``): both players see the
context c, G(z, c) and D(x, c), and V(D, G) = E_{x,c}[log D(x, c)] + E_{z,c}[log(1 -
D(G(z, c), c))], so at the optimum p_g(x | c) = p_d(x | c) for every c. The MLP players
read [z, c] and [x, c]; DCGAN's generator reads [z, c] as its 1x1 input image
(z_dim + C channels) and its discriminator reads the image with c broadcast as C constant
feature maps (1 + C input channels). Every method that makes or judges samples takes
``context=`` ([N, C], or [C] shared by the batch); the fakes are drawn for the real
batch's contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._utils import Conditional, as_flat, as_images, randn

__all__ = [
    "GAN",
    "DCGAN",
    "minimax_value",
    "discriminator_loss_from_logits",
    "generator_loss_from_logits",
]

_GENERATOR_LOSSES = ("non_saturating", "minimax")


def _weighted_mean(values: Tensor, weights: Tensor | None) -> Tensor:
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum()


def minimax_value(
    logit_real: Tensor,
    logit_fake: Tensor,
    weight_real: Tensor | None = None,
    weight_fake: Tensor | None = None,
) -> Tensor:
    """V(D, G) = E_real[log D] + E_fake[log(1 - D)] from discriminator logits.

    Plain means over samples, or weighted means (e.g. quadrature weights p(x_i) dx) when
    weights are given; weights are normalised to sum to one.
    """
    return _weighted_mean(F.logsigmoid(logit_real), weight_real) + _weighted_mean(
        F.logsigmoid(-logit_fake), weight_fake
    )


def discriminator_loss_from_logits(
    logit_real: Tensor,
    logit_fake: Tensor,
    real_label: float = 1.0,
    weight_real: Tensor | None = None,
    weight_fake: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy of D with target ``real_label`` on real data and 0 on fakes.

    ``real_label = 1`` gives exactly -V(D, G). ``real_label < 1`` is one-sided label
    smoothing (seed 001, 2.5): the per-point optimum becomes
    D = real_label * p_d / (p_d + p_g), which keeps D from saturating early.
    """
    real = F.binary_cross_entropy_with_logits(
        logit_real, torch.full_like(logit_real, real_label), reduction="none"
    )
    fake = F.softplus(logit_fake)  # = -log(1 - sigmoid(l))
    return _weighted_mean(real, weight_real) + _weighted_mean(fake, weight_fake)


def generator_loss_from_logits(logit_fake: Tensor, kind: str = "non_saturating") -> Tensor:
    """Generator objective from D's logits on fakes (seed 001, 2.4).

    ``"minimax"``: minimise E[log(1 - D(G(z)))] = -E[softplus(l)]; its gradient
    -sigmoid(l) vanishes when D confidently rejects fakes (l -> -inf), early in training.
    ``"non_saturating"``: minimise -E[log D(G(z))] = E[softplus(-l)]; gradient
    -sigmoid(-l) -> -1 there, so G still learns.
    """
    if kind == "minimax":
        return -F.softplus(logit_fake).mean()
    if kind == "non_saturating":
        return F.softplus(-logit_fake).mean()
    raise ValueError(f"kind must be one of {_GENERATOR_LOSSES}, got {kind!r}")


class GAN(Conditional, nn.Module):
    """MLP GAN of seed 001 (2.5), for flat data in [0, 1].

    Generator: z (N(0, I), ``z_dim``) -> Linear 128 -> LeakyReLU(0.2) -> [Linear -> BatchNorm
    -> LeakyReLU(0.2)] for 256, 512, 1024 -> Linear D -> tanh, mapped to [0, 1] by
    (t + 1) / 2. Discriminator: D -> 512 -> 256 -> 1 with LeakyReLU(0.2); it returns the
    logit (the sigmoid of the seed is folded into the losses). No ``log_prob``.
    ``context_dim = C``: a conditional GAN, the first layers read [z, c] and [x, c].
    """

    data_kind = "continuous"
    log_prob_kind = "none"

    def __init__(
        self,
        dim: int = 64,
        z_dim: int = 100,
        generator_hidden: Sequence[int] = (128, 256, 512, 1024),
        discriminator_hidden: Sequence[int] = (512, 256),
        generator_loss_kind: str = "non_saturating",
        real_label: float = 0.9,
        leak: float = 0.2,
        context_dim: int = 0,
        *,
        generator_net: nn.Module | None = None,
        discriminator_net: nn.Module | None = None,
        event_shape: tuple[int, ...] | None = None,
    ) -> None:
        """MLP players; a subclass passes its own networks (the generator maps z, or
        [z, c], to tanh outputs in [-1, 1], the discriminator data, or what
        `_discriminator_input` makes of [x, c], to one logit) and event_shape."""
        super().__init__()
        if context_dim < 0:
            raise ValueError(f"context_dim must be >= 0, got {context_dim}")
        self.dim = dim
        self.context_dim = context_dim
        self.event_shape: tuple[int, ...] = event_shape or (dim,)
        self._init_common(z_dim, generator_loss_kind, real_label)
        if (generator_net is None) != (discriminator_net is None):
            raise ValueError("pass both generator_net and discriminator_net, or neither "
                             "(the MLP players are built together)")
        if generator_net is not None and discriminator_net is not None:
            self.generator_net, self.discriminator_net = generator_net, discriminator_net
            return
        g: list[nn.Module] = []
        widths = [z_dim + context_dim, *generator_hidden]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            g.append(nn.Linear(a, b))
            if i > 0:  # seed 001: no BatchNorm after the first layer
                g.append(nn.BatchNorm1d(b))
            g.append(nn.LeakyReLU(leak))
        g += [nn.Linear(widths[-1], dim), nn.Tanh()]
        self.generator_net = nn.Sequential(*g)
        d: list[nn.Module] = []
        widths = [dim + context_dim, *discriminator_hidden]
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            d += [nn.Linear(a, b), nn.LeakyReLU(leak)]
        d.append(nn.Linear(widths[-1], 1))
        self.discriminator_net = nn.Sequential(*d)

    def _init_common(self, z_dim: int, generator_loss_kind: str, real_label: float) -> None:
        if generator_loss_kind not in _GENERATOR_LOSSES:
            raise ValueError(
                f"generator_loss_kind must be one of {_GENERATOR_LOSSES}, "
                f"got {generator_loss_kind!r}"
            )
        if not 0.0 < real_label <= 1.0:
            raise ValueError(f"real_label must be in (0, 1], got {real_label}")
        self.z_dim = z_dim
        self.generator_loss_kind = generator_loss_kind
        self.real_label = real_label

    # -- layout hooks -------------------------------------------------------------------
    def _prepare(self, x: Tensor) -> Tensor:
        return as_flat(x, self.dim)

    def _noise(self, n: int, generator: torch.Generator | None) -> Tensor:
        return randn((n, self.z_dim), self, generator)

    def _generator_input(self, z: Tensor, c: Tensor | None) -> Tensor:
        """What the generator network reads: z, or [z, c]."""
        return z if c is None else torch.cat([z, c], dim=-1)

    def _discriminator_input(self, x: Tensor, c: Tensor | None) -> Tensor:
        """What the discriminator network reads: x (prepared), or [x, c]."""
        return x if c is None else torch.cat([x, c], dim=-1)

    # -- networks -----------------------------------------------------------------------
    def generate(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        """G(z) (or G(z, c)) in [0, 1] (tanh output rescaled), shaped like the data."""
        c = self._context(context, z.shape[0])
        return (self.generator_net(self._generator_input(z, c)) + 1) / 2

    def discriminate(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Discriminator logit l(x) (or l(x, c)), shape [N]; D(x) = sigmoid(l(x))."""
        x = self._prepare(x)
        c = self._context(context, x.shape[0])
        return self.discriminator_net(self._discriminator_input(x, c)).reshape(-1)

    def fake(self, n: int, generator: torch.Generator | None = None,
             context: Tensor | None = None) -> Tensor:
        """n generator samples with gradients, in the module's current train/eval mode."""
        return self.generate(self._noise(n, generator), context)

    # -- objectives ---------------------------------------------------------------------
    def discriminator_loss(self, x: Tensor, generator: torch.Generator | None = None,
                           context: Tensor | None = None) -> Tensor:
        """D's loss on a real batch x and as many (detached) fakes, the fakes made for the
        batch's contexts; minimised by D only."""
        x = self._prepare(x)
        c = self._context(context, x.shape[0])
        fake = self.fake(x.shape[0], generator, c).detach()
        return discriminator_loss_from_logits(
            self.discriminate(x, c), self.discriminate(fake, c), self.real_label
        )

    def generator_loss(self, n: int, generator: torch.Generator | None = None,
                       context: Tensor | None = None) -> Tensor:
        """G's loss on n fresh fakes (non-saturating or minimax), for the contexts given
        ([n, C] or [C]); minimised by G only."""
        c = self._context(context, n)
        return generator_loss_from_logits(
            self.discriminate(self.fake(n, generator, c), c), self.generator_loss_kind
        )

    def loss(self, x: Tensor, generator: torch.Generator | None = None,
             context: Tensor | None = None) -> Tensor:
        """discriminator_loss(x) + generator_loss(len(x)), for monitoring only: computed
        without gradients, so `loss(x).backward()` fails rather than training both
        players on the sum. The two players minimise different objectives; use
        ``train_step`` (or ``discriminator_loss`` and ``generator_loss``) to train."""
        n = x.shape[0]
        with torch.no_grad():
            return (self.discriminator_loss(x, generator, context)
                    + self.generator_loss(n, generator, context))

    def train_step(
        self,
        x: Tensor,
        opt_d: torch.optim.Optimizer,
        opt_g: torch.optim.Optimizer,
        generator: torch.Generator | None = None,
        context: Tensor | None = None,
    ) -> dict[str, float]:
        """One discriminator update then one generator update; returns both losses.

        ``opt_d`` must hold the discriminator's parameters and ``opt_g`` the generator's;
        a conditional GAN's generator step makes its fakes for the batch's contexts.
        """
        opt_d.zero_grad(set_to_none=True)
        d_loss = self.discriminator_loss(x, generator, context)
        d_loss.backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        g_loss = self.generator_loss(x.shape[0], generator, context)
        g_loss.backward()
        opt_g.step()
        return {
            "discriminator_loss": float(d_loss.detach()),
            "generator_loss": float(g_loss.detach()),
        }

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               context: Tensor | None = None) -> Tensor:
        """n samples G(z) (G(z, c) given a context), z ~ N(0, I), generator in eval mode.

        Eval mode makes BatchNorm use its running statistics, so sampling is deterministic
        given the noise, works for n = 1 and leaves the statistics untouched.
        """
        was_training = self.generator_net.training
        self.generator_net.eval()
        try:
            out = self.generate(self._noise(n, generator), context)
        finally:
            self.generator_net.train(was_training)
        return out.reshape(n, *self.event_shape)


class DCGAN(GAN):
    """DCGAN for [N, 1, side, side] images (side divisible by 4), per seed 004's guidelines.

    Strided convolutions instead of pooling in D and transposed convolutions in G; no fully
    connected hidden layers (z enters as a 1x1 image); BatchNorm in both networks (not on
    D's input layer nor G's output, as in the DCGAN paper); ReLU in G except the tanh
    output (rescaled to [0, 1]); LeakyReLU in D. Accepts flat [N, side*side] data too.

    ``context_dim = C``: conditional (see the module docstring): G's 1x1 input image has
    z_dim + C channels, [z, c]; D reads 1 + C channels, the image and c broadcast as C
    constant feature maps, so its first convolution learns how each class shifts it.
    """

    def __init__(
        self,
        side: int = 8,
        z_dim: int = 100,
        channels: int = 32,
        generator_loss_kind: str = "non_saturating",
        real_label: float = 0.9,
        leak: float = 0.2,
        context_dim: int = 0,
    ) -> None:
        if side % 4:
            raise ValueError(f"side must be divisible by 4, got {side}")
        s4, c, c2 = side // 4, channels, 2 * channels
        z_in = z_dim + max(context_dim, 0)
        generator_net = nn.Sequential(
            nn.Unflatten(1, (z_in, 1, 1)),
            nn.ConvTranspose2d(z_in, c2, s4, bias=False),  # 1x1 -> side/4
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.ConvTranspose2d(c2, c, 4, stride=2, padding=1, bias=False),  # -> side/2
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1),  # -> side
            nn.Tanh(),
        )
        discriminator_net = nn.Sequential(
            nn.Conv2d(1 + max(context_dim, 0), c, 4, stride=2, padding=1),  # -> side/2
            nn.LeakyReLU(leak),
            nn.Conv2d(c, c2, 4, stride=2, padding=1, bias=False),  # -> side/4
            nn.BatchNorm2d(c2),
            nn.LeakyReLU(leak),
            nn.Conv2d(c2, 1, s4),  # -> 1x1 logit
        )
        super().__init__(side * side, z_dim=z_dim, generator_loss_kind=generator_loss_kind,
                         real_label=real_label, leak=leak, context_dim=context_dim,
                         generator_net=generator_net, discriminator_net=discriminator_net,
                         event_shape=(1, side, side))
        self.side = side

    def _prepare(self, x: Tensor) -> Tensor:
        return as_images(x, self.side)

    def _discriminator_input(self, x: Tensor, c: Tensor | None) -> Tensor:
        """The image, and c as C constant feature maps: [N, 1 + C, side, side]."""
        if c is None:
            return x
        maps = c[:, :, None, None].expand(-1, -1, self.side, self.side)
        return torch.cat([x, maps], dim=1)
