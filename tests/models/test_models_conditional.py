"""Conditional companion models p(x | c) from the mathematics (float64, small sizes):
normalisation for every context (enumeration of all 2^D binary vectors; quadrature at
D = 2 for the coupling flows), the autoregressive property by perturbation with a context,
samples that follow log_prob(x | c), log-determinants against autograd and exact inverses
for conditional couplings, the conditional GAN's players reading the context, and the
context convention (refused without context_dim, required with it)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from energydsl.models import (
    CONDITIONAL,
    DCGAN,
    FVSBN,
    GAN,
    LSTMAR,
    MADE,
    MODELS,
    NADE,
    NICE,
    RNNAR,
    BetaVAE,
    ConvVAE,
    PixelCNN,
    RealNVP,
    UntiedNADE,
    one_hot,
)

from models_helpers import perturb

C = 3  # context dimension throughout

BINARY: dict[str, Callable[[int], nn.Module]] = {
    "fvsbn": lambda d: FVSBN(dim=d, context_dim=C),
    "nade": lambda d: NADE(dim=d, hidden=5, context_dim=C),
    "untied_nade": lambda d: UntiedNADE(dim=d, hidden=5, context_dim=C),
    "made": lambda d: MADE(dim=d, hidden=(12, 12), context_dim=C),
    "made_order_agnostic": lambda d: MADE(dim=d, hidden=(12,), num_masks=2,
                                          order_agnostic=True, seed=3, context_dim=C),
    "lstm_ar": lambda d: LSTMAR(dim=d, hidden=5, context_dim=C),
    "rnn_ar": lambda d: RNNAR(dim=d, hidden=5, context_dim=C),
    "pixelcnn": lambda d: PixelCNN(side=round(d**0.5), channels=4, n_layers=1, kernel_a=3,
                                   kernel_b=3, context_dim=C),
}
SIDE_SQUARE = {"pixelcnn"}  # D must be a square


def binary_model(name: str, dim: int) -> nn.Module:
    torch.manual_seed(0)
    return perturb(BINARY[name](dim), 0.3).double()


def every_vector(dim: int) -> Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)), dtype=torch.float64)


def contexts() -> list[Tensor]:
    """Three one-hot contexts (class labels) and a real-valued one, each [C]."""
    labels = one_hot(torch.arange(C), C, nn.Linear(1, 1).double())
    return [*labels, torch.tensor([0.7, -1.2, 2.0], dtype=torch.float64)]


def flat_logits(model: nn.Module, x: Tensor, context: Tensor) -> Tensor:
    return model.logits(x, context=context).reshape(x.shape[0], -1)


def order_of(model: nn.Module) -> list[int]:
    return model.order().tolist() if isinstance(model, MADE) else list(range(model.dim))


# ------------------------------------------------------------------ binary models


@pytest.mark.parametrize("name", sorted(BINARY))
def test_every_context_gives_a_normalised_distribution(name: str) -> None:
    """sum over all 2^D x of p(x | c) = 1 for each c, and p(. | c) differs between c."""
    dim = 9 if name in SIDE_SQUARE else 8
    model = binary_model(name, dim)
    x = every_vector(dim)
    tables = []
    with torch.no_grad():
        for c in contexts():
            lp = model.log_prob(x, context=c)
            assert lp.shape == (2**dim,)
            torch.testing.assert_close(torch.logsumexp(lp, 0), lp.new_zeros(()), rtol=0,
                                       atol=1e-10)
            # [C] is shared by the batch: the same as the context repeated per row
            torch.testing.assert_close(lp, model.log_prob(x, context=c.expand(2**dim, C)))
            tables.append(lp)
    for a, b in itertools.combinations(tables, 2):
        assert (a - b).abs().max() > 1e-2  # the context is used


def test_an_order_agnostic_made_ensemble_is_normalised_for_every_context() -> None:
    model = binary_model("made_order_agnostic", 7)
    x = every_vector(7)
    assert not torch.equal(model.order(0), model.order(1))
    with torch.no_grad():
        for c in contexts():
            lp = model.log_prob(x, ensemble=True, context=c)
            assert abs(float(torch.logsumexp(lp, 0))) < 1e-10


@pytest.mark.parametrize("name", sorted(BINARY))
def test_a_logit_depends_only_on_earlier_coordinates_and_on_the_context(name: str) -> None:
    """Flipping x_j changes no logit at or before j in the model's order, and changes
    some later one; changing the context changes every logit, the first included."""
    dim = 9 if name in SIDE_SQUARE else 7
    model = binary_model(name, dim)
    order = order_of(model)
    position = {d: i for i, d in enumerate(order)}
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((5, dim), 0.5, dtype=torch.float64), generator=g)
    c = torch.randn(5, C, generator=g, dtype=torch.float64)
    with torch.no_grad():
        base = flat_logits(model, x, c)
        for j in range(dim):
            flipped = x.clone()
            flipped[:, j] = 1 - flipped[:, j]
            moved = (flat_logits(model, flipped, c) - base).abs().amax(0)
            for i in range(dim):
                if position[i] <= position[j]:
                    assert moved[i] < 1e-12, (j, i, float(moved[i]))
            if position[j] < dim - 1:
                later = [i for i in range(dim) if position[i] > position[j]]
                assert moved[later].max() > 1e-6, j
        other = flat_logits(model, x, c + 1.0)
    assert ((other - base).abs().amin(0) > 1e-8).all()


@pytest.mark.parametrize("name", sorted(BINARY))
def test_samples_given_a_context_follow_log_prob_given_it(name: str) -> None:
    """Ancestral samples for context c have the frequencies exp(log_prob(x | c)) over the
    16 states of a 4-dim model (so sampling reads the same context as log_prob)."""
    model = binary_model(name, 4)
    c = contexts()[3]
    n = 20_000
    with torch.no_grad():
        s = model.sample(n, generator=torch.Generator().manual_seed(0), context=c)
        p = torch.exp(model.log_prob(every_vector(4), context=c))
    assert s.shape == (n, *model.event_shape)
    codes = (s.reshape(n, 4) * torch.tensor([8.0, 4.0, 2.0, 1.0], dtype=s.dtype)).sum(1)
    freq = torch.bincount(codes.long(), minlength=16).double() / n
    tolerance = 5 * torch.sqrt(p * (1 - p) / n) + 1e-3
    assert ((freq - p).abs() <= tolerance).all(), (freq, p)
    # one context per sample: [n, C]
    per_row = one_hot(torch.arange(6) % C, C, model)
    assert model.sample(6, context=per_row).shape == (6, *model.event_shape)


@pytest.mark.parametrize("name", sorted(BINARY))
def test_a_conditional_model_trains_and_backpropagates_to_its_context_weights(name: str) -> None:
    model = binary_model(name, 9 if name in SIDE_SQUARE else 6)
    x = every_vector(model.dim)[::7]
    c = one_hot(torch.arange(len(x)) % C, C, model)
    model.loss(x, context=c).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "context" in n or
             n.startswith(("lstm", "rnn"))}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


# ------------------------------------------------------------------ the context convention

AUTOENCODERS = ("linear_ae", "mlp_ae", "conv_ae", "denoising_ae", "sparse_ae")


def test_every_family_is_conditional() -> None:
    assert set(CONDITIONAL) == set(MODELS)
    assert all("context_dim" in inspect.signature(MODELS[n]).parameters for n in CONDITIONAL)


@pytest.mark.parametrize("name", AUTOENCODERS)
def test_a_conditional_autoencoder_decodes_the_context_too(name: str) -> None:
    """The decoder reads [h, c]: one code decodes differently under two contexts, the
    loss's gradient reaches the decoder's context weights, and the encoder ignores c."""
    torch.manual_seed(0)
    model = MODELS[name](**({"side": 4} if name == "conv_ae" else {"dim": 16}), context_dim=C)
    x = torch.rand(5, 16)
    h = model.encode(x)
    a = model.decode(h, torch.eye(C)[0])
    b = model.decode(h, torch.eye(C)[1])
    assert (a - b).abs().max() > 1e-4
    model.loss(x, context=torch.eye(C)[2]).backward()
    first = next(m for m in model.decoder.modules() if isinstance(m, nn.Linear))
    assert first.in_features == model.code_dim + C
    assert first.weight.grad[:, -C:].abs().sum() > 0


@pytest.mark.parametrize("name", CONDITIONAL)
def test_conditional_models_require_a_context_and_unconditional_ones_refuse_it(
        name: str) -> None:
    size = {"dcgan": {"side": 4}, "conv_vae": {"side": 4}, "pixelcnn": {"side": 4},
            "realnvp": {"dim": 16, "side": 4}, "glow": {"side": 4},
            "gated_pixelcnn": {"side": 4}, "conv_ae": {"side": 4}}.get(name, {"dim": 16})
    x = torch.rand(3, 16)
    conditional = MODELS[name](**size, context_dim=C)
    plain = MODELS[name](**size)
    if conditional.data_kind == "binary":
        x = (x > 0.5).float()
    assert conditional.context_dim == C and plain.context_dim == 0
    with pytest.raises(ValueError, match="needs a context of dimension 3"):
        conditional.loss(x)
    with pytest.raises(ValueError, match="needs a context"):
        conditional.sample(2)
    with pytest.raises(ValueError, match="takes no context"):
        plain.loss(x, context=torch.zeros(3, C))
    with pytest.raises(ValueError, match=r"context must be \[3\] or \[3, 3\]"):
        conditional.loss(x, context=torch.zeros(3, C + 1))
    assert torch.isfinite(conditional.loss(x, context=torch.eye(C))).all()
    assert conditional.sample(2, context=torch.eye(C)[0]).shape == (2, *plain.event_shape)


def test_unconditional_models_keep_their_parameters_and_state_dicts() -> None:
    """context_dim = 0 adds nothing: old checkpoints of every model still load."""
    for name, factory in MODELS.items():
        keys = list(factory().state_dict())
        assert not any("context" in k for k in keys), (name, keys)


def test_one_hot_labels() -> None:
    module = nn.Linear(1, 1).double()
    out = one_hot(torch.tensor([2, 0, 1]), 4, module)
    assert out.dtype == torch.float64
    assert torch.equal(out, torch.eye(4, dtype=torch.float64)[[2, 0, 1]])
    with pytest.raises(ValueError, match=r"0\.\.3"):
        one_hot(torch.tensor([4]), 4, module)
    with pytest.raises(ValueError, match="vector"):
        one_hot(torch.zeros(2, 2, dtype=torch.long), 4, module)


# ------------------------------------------------------------------ coupling flows

FLOWS = {
    "nice": lambda d, **kw: NICE(dim=d, hidden=(8,), context_dim=C, **kw),
    "realnvp": lambda d, **kw: RealNVP(dim=d, hidden=(8,), mask="alternating", side=None,
                                       context_dim=C, **kw),
}


def flow(name: str, dim: int, n_couplings: int = 4, **kw: object) -> nn.Module:
    torch.manual_seed(0)
    model = FLOWS[name](dim, n_couplings=n_couplings, dequantization="none", **kw)
    return perturb(model, 0.2).double()


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_conditional_coupling_log_det_matches_autograd(name: str) -> None:
    model = flow(name, 5)
    g = torch.Generator().manual_seed(2)
    v = torch.randn(4, 5, generator=g, dtype=torch.float64)
    c = torch.randn(4, C, generator=g, dtype=torch.float64)
    z, logdet = model.forward_transform(v, c)
    for i in range(4):
        jac = jacobian(lambda row, i=i: model.forward_transform(row[None], c[i])[0][0], v[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)
    # the context moves the map
    assert (model.forward_transform(v, c + 1)[0] - z).abs().max() > 1e-3


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_conditional_couplings_invert_exactly_on_both_paths(name: str) -> None:
    """inverse(forward(v, c), c) = v, and the split-once fast path gives the layer-by-layer
    values (both read the context)."""
    model = flow(name, 6)
    g = torch.Generator().manual_seed(3)
    v = torch.randn(8, 6, generator=g, dtype=torch.float64)
    c = torch.randn(8, C, generator=g, dtype=torch.float64)
    assert model._alternating
    z, logdet = model.forward_transform(v, c)
    torch.testing.assert_close(model.inverse_transform(z, c), v, rtol=0, atol=1e-12)
    model._alternating = False
    z_slow, logdet_slow = model.forward_transform(v, c)
    torch.testing.assert_close(z_slow, z, rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet_slow, logdet, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.inverse_transform(z, c), v, rtol=0, atol=1e-12)


def _mass(model: nn.Module, c: Tensor, half_width: float = 25.0, n: int = 600) -> float:
    edges = torch.linspace(-half_width, half_width, n + 1, dtype=torch.float64)
    grid = (edges[:-1] + edges[1:]) / 2
    dx = 2 * half_width / n
    with torch.no_grad():
        lp = model.log_density(torch.cartesian_prod(grid, grid), c)
    return float(torch.exp(lp).sum()) * dx * dx


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_conditional_2d_coupling_flow_integrates_to_one_for_each_context(name: str) -> None:
    model = flow(name, 2, n_couplings=3)
    c1 = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    c2 = torch.tensor([-0.5, 1.5, 0.3], dtype=torch.float64)
    assert abs(_mass(model, c1) - 1) < 1e-3
    assert abs(_mass(model, c2) - 1) < 1e-3
    pts = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        assert (model.log_density(pts, c1) - model.log_density(pts, c2)).abs().max() > 1e-2
    s = model.sample(5, context=c1)
    assert s.shape == (5, 2)


# ------------------------------------------------------------------ GAN and VAE


@pytest.mark.parametrize("kind", ["gan", "dcgan"])
def test_a_conditional_gan_reads_the_context_in_both_players(kind: str) -> None:
    torch.manual_seed(0)
    if kind == "gan":
        model: GAN = GAN(dim=16, z_dim=4, generator_hidden=(8, 8), discriminator_hidden=(8,),
                         context_dim=C)
    else:
        model = DCGAN(side=4, z_dim=4, channels=4, context_dim=C)
    model = model.double().eval()
    x = torch.rand(6, 16, dtype=torch.float64)
    z = torch.randn(6, 4, dtype=torch.float64)
    c1, c2 = one_hot(torch.arange(6) % C, C, model), one_hot((torch.arange(6) + 1) % C, C, model)
    d1, d2 = model.discriminate(x, c1), model.discriminate(x, c2)
    assert d1.shape == (6,) and (d1 - d2).abs().min() > 0
    g1, g2 = model.generate(z, c1), model.generate(z, c2)
    assert (g1 - g2).reshape(6, -1).abs().amax(1).min() > 0
    s = model.sample(6, generator=torch.Generator().manual_seed(0), context=c1)
    assert s.shape == (6, *model.event_shape) and 0 <= s.min() and s.max() <= 1
    model.train()
    opt_d = torch.optim.Adam(model.discriminator_net.parameters(), lr=1e-3)
    opt_g = torch.optim.Adam(model.generator_net.parameters(), lr=1e-3)
    out = model.train_step(x, opt_d, opt_g, context=c1)
    assert set(out) == {"discriminator_loss", "generator_loss"}
    # the weights reading the context get gradients in both players
    model.zero_grad()
    model.discriminator_loss(x, context=c1).backward()
    model.generator_loss(6, context=c1).backward()
    first_g = next(p for p in model.generator_net.parameters() if p.dim() >= 2)
    first_d = next(p for p in model.discriminator_net.parameters() if p.dim() >= 2)
    if kind == "gan":  # Linear weights [out, in]: the context's columns come last
        assert first_g.grad[:, -C:].abs().sum() > 0 and first_d.grad[:, -C:].abs().sum() > 0
    else:  # ConvTranspose2d [in, out, k, k] and Conv2d [out, in, k, k]
        assert first_g.grad[-C:].abs().sum() > 0 and first_d.grad[:, -C:].abs().sum() > 0


def test_a_conditional_conv_vae_reads_the_context_in_encoder_and_decoder() -> None:
    torch.manual_seed(0)
    model = ConvVAE(side=4, channels=4, z_dim=2, context_dim=C).double()
    x = (torch.rand(5, 16, dtype=torch.float64) > 0.5).double()
    c1, c2 = torch.eye(C, dtype=torch.float64)[:2]
    q1, q2 = model.encode(x, c1), model.encode(x, c2)
    assert (q1.loc - q2.loc).abs().min() > 0
    z = torch.randn(5, 2, dtype=torch.float64)
    assert (model.decode(z, c1) - model.decode(z, c2)).abs().amax((1, 2, 3)).min() > 0
    assert model.decode(z[None].expand(3, 5, 2), c1).shape == (3, 5, 1, 4, 4)
    assert torch.isfinite(model.log_prob(x, context=c1)).all()
    assert model.sample(4, context=c2).shape == (4, 1, 4, 4)
    beta = BetaVAE(dim=16, context_dim=C)  # every VAE takes context_dim
    assert beta.context_dim == C and torch.isfinite(beta.loss(x.float(), context=c1.float()))
