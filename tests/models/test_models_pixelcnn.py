"""Gated PixelCNN with colour masks: the causal structure (and no blind spot) by autograd
Jacobians, normalisation by enumeration, sampling frequencies against log_prob, training
on the digits; the colour mask against its picture and the plain PixelCNN's mask."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from energydsl.models import GatedPixelCNN, MaskedConv2d, PixelCNN, colour_mask

from models_helpers import perturb


def build(seed: int = 0, **kwargs: int) -> GatedPixelCNN:
    """A tiny float64 model with larger random weights (conditionals far from uniform)."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(**{"channels": 6, "n_layers": 2, **kwargs})
    perturb(model, 0.5, seed)
    return model.double()


def all_images(model: GatedPixelCNN) -> Tensor:
    """Every image the model can emit, flat [L^D, D] in float64, in lexicographic order of
    the level indices (the last coordinate fastest)."""
    values = [k / (model.levels - 1) for k in range(model.levels)]
    return torch.tensor(list(itertools.product(values, repeat=model.dim)), dtype=torch.float64)


def allowed(colours: int, side: int) -> Tensor:
    """[D, D] bool, D = colours*side*side in (c, i, j) order: output subpixel (c, i, j) may
    depend on input (c', i', j') iff (i', j') comes before (i, j) in raster order, or it is
    (i, j) itself and c' < c."""
    c, i, j = torch.meshgrid(torch.arange(colours), torch.arange(side), torch.arange(side),
                             indexing="ij")
    pos, c = (i * side + j).reshape(-1), c.reshape(-1)
    before = pos[None, :] < pos[:, None]
    return before | ((pos[None, :] == pos[:, None]) & (c[None, :] < c[:, None]))


def logit_jacobian(model: nn.Module, x: Tensor, **kwargs: Tensor) -> Tensor:
    """[K, D, D]: d logit k of subpixel d / d input subpixel d' (x flat [D]); K = 1 for
    the plain PixelCNN."""
    d = x.numel()

    def f(flat: Tensor) -> Tensor:
        out = model.logits(flat.reshape(1, -1), **kwargs)
        if out.dim() == 5:  # GatedPixelCNN: [1, C, K, H, W] -> [K, C, H, W]
            out = out[0].transpose(0, 1)
        return out.reshape(-1, d)

    return jacobian(f, x.reshape(-1), vectorize=True)


def test_colour_mask_matches_its_picture_and_the_plain_pixelcnn_mask() -> None:
    for mask_type in ("A", "B"):  # one colour: the plain PixelCNN's mask (another implementation)
        conv = MaskedConv2d(mask_type, 4, 5, 5)
        torch.testing.assert_close(colour_mask(4, 5, 5, 1, mask_type), conv.mask, rtol=0, atol=0)
    lower = {"A": torch.tril(torch.ones(3, 3), -1), "B": torch.tril(torch.ones(3, 3))}
    for mask_type, centre in lower.items():
        mask = colour_mask(3, 6, 3, 3, mask_type)  # outputs R R G G B B, inputs R G B
        assert torch.equal(mask[:, :, 1, 1], centre.repeat_interleave(2, dim=0))
        assert torch.all(mask[:, :, 0, :] == 1) and torch.all(mask[:, :, 1, 0] == 1)
        assert torch.all(mask[:, :, 1, 2] == 0) and torch.all(mask[:, :, 2, :] == 0)
    with pytest.raises(ValueError):
        colour_mask(4, 6, 3, 3, "B")  # 4 inputs do not split into 3 colour groups


CAUSAL_CASES = [
    {"colours": 3},
    {"colours": 1, "levels": 3, "context_dim": 2},
    {"colours": 3, "levels": 4, "context_dim": 2},
]


@pytest.mark.parametrize("case", CAUSAL_CASES, ids=str)
def test_logits_depend_on_exactly_the_past(case: dict[str, int]) -> None:
    """d logit(c, i, j) / d x(c', i', j') is exactly zero unless (i', j') is before (i, j)
    in raster order or (i', j') == (i, j) and c' < c; and with 4 blocks of 3x3 kernels
    on a 5x5 image every such dependence is present: no blind spot (in particular the
    pixels up-right of (i, j)). Summed over 3 inputs, and 8 feature maps per colour, so
    a ReLU of the head that happens to be off at one input hides no dependence."""
    side = 5
    model = build(side=side, channels=24, n_layers=4, **case)
    ok = allowed(model.colours, side)
    g = torch.Generator().manual_seed(1)
    context = {"context": torch.randn(2, dtype=torch.float64, generator=g)} if case.get(
        "context_dim") else {}
    seen = torch.zeros_like(ok)
    for _ in range(3):
        x = torch.rand(model.dim, dtype=torch.float64, generator=g)
        jac = logit_jacobian(model, x, **context)
        assert jac.shape == (model.outputs, model.dim, model.dim)
        assert torch.all(jac[:, ~ok] == 0)  # no forbidden dependence
        seen |= (jac != 0).any(0)
    assert torch.all(seen[ok])  # every allowed dependence


def test_plain_pixelcnn_has_the_blind_spot_the_gated_one_lacks() -> None:
    """The same check finds the plain PixelCNN's blind spot: output (2, 0) of a 5x5 image
    never sees pixel (1, 4), up-right of it, at any depth of masked 3x3 layers."""
    side = 5
    torch.manual_seed(0)
    plain = perturb(PixelCNN(side=side, channels=8, n_layers=4, kernel_a=3), 0.5).double()
    gated = build(side=side, channels=24, n_layers=4)
    x = torch.rand(side * side, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ok = allowed(1, side)
    out, inp = 2 * side + 0, 1 * side + 4
    assert ok[out, inp]
    jac_plain = logit_jacobian(plain, x)[0]
    jac_gated = logit_jacobian(gated, x)[0]
    assert torch.all(jac_plain[~ok] == 0)
    assert jac_plain[out, inp] == 0 and jac_gated[out, inp] != 0
    assert (jac_plain[ok] == 0).any() and (jac_gated[ok] != 0).all()


ENUM_CASES = [
    {"side": 2, "colours": 1},
    {"side": 2, "colours": 3},
    {"side": 2, "colours": 1, "context_dim": 2},
    {"side": 2, "colours": 3, "context_dim": 2},
    {"side": 2, "colours": 1, "levels": 3},
    {"side": 1, "colours": 3, "levels": 3, "context_dim": 2},
]


@pytest.mark.parametrize("case", ENUM_CASES, ids=str)
def test_probabilities_of_all_images_sum_to_one(case: dict[str, int]) -> None:
    model = build(**case)
    x = all_images(model)
    contexts: list[Tensor | None] = [None]
    if model.context_dim:
        contexts = [torch.tensor([1.0, 0.0], dtype=torch.float64),
                    torch.tensor([0.0, 1.0], dtype=torch.float64)]
    with torch.no_grad():
        lps = [model.log_prob(x, context=c) for c in contexts]
    for lp in lps:
        assert lp.shape == (model.levels**model.dim,)
        assert abs(float(torch.logsumexp(lp, 0))) < 1e-10
        assert float(lp.max() - lp.min()) > 1.0  # far from uniform: not trivially normalised
    if len(lps) == 2:  # the context changes the distribution
        assert float((lps[0] - lps[1]).abs().max()) > 0.1


@pytest.mark.parametrize(
    "case", [{"side": 2, "colours": 1}, {"side": 1, "colours": 3, "levels": 3, "context_dim": 2}],
    ids=str,
)
def test_sample_frequencies_match_log_prob(case: dict[str, int]) -> None:
    """Raster/colour-order ancestral samples hit each image x with probability p(x) (within
    5 binomial standard deviations of n = 20000 draws, plus 1e-3)."""
    n = 20000
    model = build(**case)
    context = torch.tensor([0.3, -1.0], dtype=torch.float64) if model.context_dim else None
    with torch.no_grad():
        s = model.sample(n, generator=torch.Generator().manual_seed(0), context=context)
        p = torch.exp(model.log_prob(all_images(model), context=context))
    assert s.shape == (n, *model.event_shape)
    k = torch.round(s.reshape(n, -1) * (model.levels - 1)).long()
    assert torch.equal(k.double(), s.reshape(n, -1) * (model.levels - 1))  # on the levels
    index = (k * model.levels ** torch.arange(model.dim - 1, -1, -1)).sum(1)
    freq = torch.bincount(index, minlength=len(p)).double() / n
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-3
    assert torch.all((freq - p).abs() < tol), (freq, p)


def test_adam_steps_on_the_digits_lower_the_loss(digits: Tensor) -> None:
    torch.manual_seed(0)
    model = GatedPixelCNN()  # the defaults: 8x8, one colour, Bernoulli
    x = (digits > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    with torch.no_grad():
        before = float(model.loss(x))
    for _ in range(30):
        opt.zero_grad(set_to_none=True)
        model.loss(x).backward()
        opt.step()
    with torch.no_grad():
        after = float(model.loss(x))
    assert after < before - 5.0, (before, after)


def test_context_is_checked_and_broadcast() -> None:
    model = build(side=2, context_dim=2)
    x = all_images(model)[:5]
    with pytest.raises(ValueError):
        model.log_prob(x)
    with pytest.raises(ValueError):
        build(side=2).log_prob(x, context=torch.zeros(2, dtype=torch.float64))
    c = torch.tensor([0.5, -2.0], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob(x, context=c),
                                   model.log_prob(x, context=c.expand(5, 2)), rtol=0, atol=0)


def test_flat_and_image_inputs_agree_and_options_are_checked() -> None:
    model = build(side=3, colours=3, levels=4)
    assert model.data_kind == "continuous" and build(side=3).data_kind == "binary"
    x = torch.randint(0, 4, (6, 27), generator=torch.Generator().manual_seed(0)) / 3.0
    with torch.no_grad():
        flat = model.log_prob(x.double())
        images = model.log_prob(x.double().reshape(6, 3, 3, 3))
    torch.testing.assert_close(flat, images, rtol=0, atol=0)
    with pytest.raises(ValueError):
        GatedPixelCNN(colours=3, channels=32)  # 32 feature maps do not split into 3 groups
    with pytest.raises(ValueError):
        GatedPixelCNN(kernel_size=4)


@pytest.mark.parametrize("levels", [2, 5])
def test_float32_log_prob_finite_with_saturated_conditionals(levels: int) -> None:
    """Weights x 50 give huge logits: log_prob must stay finite and <= 0 in float32."""
    torch.manual_seed(0)
    model = GatedPixelCNN(side=4, colours=3, levels=levels, channels=6, n_layers=2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50)
        x = torch.randint(0, levels, (16, 48), generator=torch.Generator().manual_seed(0))
        lp = model.log_prob(x.float() / (levels - 1))
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    assert float(lp.min()) < -100  # the logits really are saturated


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    model = build(side=3, colours=3, levels=3, context_dim=2)
    x = torch.randint(0, 3, (8, 27), generator=torch.Generator().manual_seed(0)) / 2.0
    x = x.double()
    c = torch.tensor([1.0, 0.0], dtype=torch.float64)
    with torch.no_grad():
        cpu = model.log_prob(x, context=c)
        gpu = model.cuda().log_prob(x.cuda(), context=c.cuda())
        s = model.sample(4, generator=torch.Generator("cuda").manual_seed(0), context=c.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu)
    assert s.device.type == "cuda" and s.shape == (4, 3, 3, 3)
    assert math.isfinite(float(model.log_prob(s, context=c.cuda()).sum()))
