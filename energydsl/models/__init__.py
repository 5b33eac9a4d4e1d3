"""Companion library: the course's generative models that are not energy-based.

Every model is a plain ``torch.nn.Module`` following the protocol shared with the generated
energy models:

- ``loss(x)``: the training objective, a scalar tensor, lower is better;
- ``log_prob(x)``: per-example log-likelihood, shape [N], where the model has one;
  ``log_prob_kind`` says whether it is ``"exact"``, a ``"lower_bound"`` or ``"none"``
  (then the method does not exist: autoencoders, GANs);
- ``sample(n, generator=None)``: n samples shaped ``(n, *model.event_shape)``, i.e. [n, D]
  for flat models or [n, 1, side, side] for image models ([n, colours, side, side] for
  the gated PixelCNN);
- ``data_kind``: ``"binary"`` ({0, 1} data) or ``"continuous"`` (values in [0, 1]);
- ``context_dim``: 0, or C for a conditional model p(x | c) built with ``context_dim=C``
  (every family): its methods of x then take ``context=`` ([N, C], or
  [C] shared by the batch), which an unconditional model refuses; ``one_hot(labels,
  classes, model)`` turns integer class labels into that context.

All models take flat data [N, D]; image models also accept [N, 1, side, side]. The GAN
additionally has ``discriminator_loss``, ``generator_loss`` and ``train_step``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from ._utils import one_hot
from .autoencoders import MLPAE, ConvAE, DenoisingAE, LinearAE, SparseAE
from .autoregressive import (
    FVSBN,
    LSTMAR,
    MADE,
    NADE,
    RNNAR,
    MaskedConv2d,
    MaskedNetwork,
    PixelCNN,
    UntiedNADE,
)
from .flows import (
    IAF,
    MAF,
    NICE,
    ActNorm,
    AdditiveCoupling,
    AffineCoupling,
    MaskedAffine,
    MaskedSpline,
    RealNVP,
    SplineCoupling,
    make_mask,
)
from .gan import (
    DCGAN,
    GAN,
    discriminator_loss_from_logits,
    generator_loss_from_logits,
    minimax_value,
)
from .glow import ChannelCoupling, Glow, InvConv1x1, LULinear, Permutation, Squeeze
from .pixelcnn import ColourMaskedConv2d, GatedBlock, GatedPixelCNN, colour_mask
from .splines import rq_spline
from .vae import VAE, BetaVAE, ConvVAE, gaussian_kl

MODELS: dict[str, Callable[..., nn.Module]] = {
    "linear_ae": LinearAE,
    "mlp_ae": MLPAE,
    "conv_ae": ConvAE,
    "denoising_ae": DenoisingAE,
    "sparse_ae": SparseAE,
    "vae": VAE,
    "beta_vae": BetaVAE,
    "conv_vae": ConvVAE,
    "gan": GAN,
    "dcgan": DCGAN,
    "nice": NICE,
    "realnvp": RealNVP,
    "maf": MAF,
    "iaf": IAF,
    "glow": Glow,
    "fvsbn": FVSBN,
    "nade": NADE,
    "untied_nade": UntiedNADE,
    "made": MADE,
    "pixelcnn": PixelCNN,
    "gated_pixelcnn": GatedPixelCNN,
    "lstm_ar": LSTMAR,
    "rnn_ar": RNNAR,
}

#: What data each registered model expects with its default arguments.
DATA_KINDS: dict[str, str] = {
    name: str(getattr(cls, "data_kind", "continuous")) for name, cls in MODELS.items()
}

DATA_NOTES: dict[str, str] = {
    "linear_ae": "continuous in [0, 1] (MSE reconstruction)",
    "mlp_ae": "continuous in [0, 1] (MSE reconstruction; recon='bce' for binary)",
    "conv_ae": "continuous in [0, 1], images side x side",
    "denoising_ae": "continuous in [0, 1]",
    "sparse_ae": "continuous in [0, 1]",
    "vae": "binary {0, 1} (Bernoulli decoder); continuous with likelihood='gaussian'",
    "beta_vae": "binary {0, 1} (Bernoulli decoder), KL weighted by beta (default 4)",
    "conv_vae": "binary {0, 1} images (Bernoulli); continuous with likelihood='gaussian'",
    "gan": "continuous in [0, 1] (generator output is (tanh + 1) / 2)",
    "dcgan": "continuous in [0, 1] images side x side",
    "nice": "continuous in [0, 1], discrete with `levels` values (uniformly dequantised)",
    "realnvp": "continuous in [0, 1], discrete with `levels` values (logit dequantisation)",
    "maf": "continuous in [0, 1], discrete with `levels` values (logit dequantisation)",
    "iaf": "continuous in [0, 1], discrete with `levels` values (logit dequantisation)",
    "glow": "continuous in [0, 1] images side x side, `levels` values (logit dequantisation)",
    "fvsbn": "binary {0, 1}",
    "nade": "binary {0, 1}",
    "untied_nade": "binary {0, 1}",
    "made": "binary {0, 1}",
    "pixelcnn": "binary {0, 1} images side x side",
    "gated_pixelcnn": "binary {0, 1} images colours x side x side; levels=L > 2: values "
    "k/(L-1) in [0, 1] (categorical per subpixel)",
    "lstm_ar": "binary {0, 1}",
    "rnn_ar": "binary {0, 1}",
}


#: The registered models that take ``context_dim`` (conditional p(x | c)): today every
#: one; `--conditional` refuses a model added without it.
CONDITIONAL: tuple[str, ...] = tuple(
    name for name, cls in MODELS.items() if "context_dim" in inspect.signature(cls).parameters
)


def create(name: str, **kwargs: object) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(MODELS)}") from None
    return factory(**kwargs)


__all__ = [
    "MODELS",
    "DATA_KINDS",
    "DATA_NOTES",
    "CONDITIONAL",
    "create",
    "one_hot",
    "LinearAE",
    "MLPAE",
    "ConvAE",
    "DenoisingAE",
    "SparseAE",
    "VAE",
    "BetaVAE",
    "ConvVAE",
    "gaussian_kl",
    "UntiedNADE",
    "RNNAR",
    "ActNorm",
    "GAN",
    "DCGAN",
    "minimax_value",
    "discriminator_loss_from_logits",
    "generator_loss_from_logits",
    "NICE",
    "RealNVP",
    "MAF",
    "IAF",
    "Glow",
    "Permutation",
    "LULinear",
    "InvConv1x1",
    "Squeeze",
    "ChannelCoupling",
    "MaskedAffine",
    "MaskedSpline",
    "AdditiveCoupling",
    "AffineCoupling",
    "SplineCoupling",
    "rq_spline",
    "make_mask",
    "FVSBN",
    "NADE",
    "MADE",
    "MaskedNetwork",
    "PixelCNN",
    "MaskedConv2d",
    "GatedPixelCNN",
    "GatedBlock",
    "ColourMaskedConv2d",
    "colour_mask",
    "LSTMAR",
]
