"""Autoregressive models: normalisation by enumeration, the autoregressive property by
autograd Jacobians, sampling frequencies, the seed 003 MADE mask rule."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.autograd.functional import jacobian

from energydsl.models import (
    FVSBN,
    LSTMAR,
    MADE,
    NADE,
    RNNAR,
    MaskedConv2d,
    PixelCNN,
    UntiedNADE,
)

from models_helpers import perturb

# name -> builder(dim or side hint) used by the parametrised tests; kept tiny and float64.
BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "fvsbn": lambda d: FVSBN(dim=d),
    "nade": lambda d: NADE(dim=d, hidden=8),
    "made": lambda d: MADE(dim=d, hidden=(16, 16)),
    "made-order-agnostic": lambda d: MADE(
        dim=d, hidden=(16,), num_masks=3, order_agnostic=True, connectivity_agnostic=True
    ),
    "pixelcnn": lambda d: PixelCNN(side=math.isqrt(d), channels=4, n_layers=2),
    "lstm_ar": lambda d: LSTMAR(dim=d, hidden=8),
    "rnn_ar": lambda d: RNNAR(dim=d, hidden=8),
    "untied_nade": lambda d: UntiedNADE(dim=d, hidden=8),
}
# Dimensions per test: PixelCNN needs a square number of pixels.
ENUM_DIM = {k: (9 if k == "pixelcnn" else 10) for k in BUILDERS}


def build(name: str, dim: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = BUILDERS[name](dim)
    # Larger random weights: conditionals far from 1/2, a stronger test of normalisation.
    return perturb(model, 0.5, seed).double()


def all_binary(dim: int) -> Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=dim)), dtype=torch.float64)


def orders_of(model: nn.Module) -> list[list[int]]:
    """The coordinate orderings the model uses (raster order except for MADE)."""
    if isinstance(model, MADE):
        return [model.order(k).tolist() for k in range(model.num_masks)]
    return [list(range(model.dim))]


def logits_under(model: nn.Module, k: int) -> Callable[[Tensor], Tensor]:
    if isinstance(model, MADE):
        return lambda x: model.logits(x, k).reshape(x.shape[0], -1)
    return lambda x: model.logits(x).reshape(x.shape[0], -1)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_probabilities_of_all_binary_vectors_sum_to_one(name: str) -> None:
    dim = ENUM_DIM[name]
    model = build(name, dim)
    x = all_binary(dim)
    with torch.no_grad():
        for k in range(len(orders_of(model))):
            if isinstance(model, MADE):
                model.mask_index.fill_(k)
            lp = model.log_prob(x)
            assert lp.shape == (2**dim,)
            assert abs(float(torch.logsumexp(lp, 0))) < 1e-10
            # Not a near-uniform model: the check above is not trivially satisfied.
            assert float(lp.max() - lp.min()) > 1.0
        if isinstance(model, MADE) and model.num_masks > 1:
            assert abs(float(torch.logsumexp(model.log_prob(x, ensemble=True), 0))) < 1e-10


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_autoregressive_property_by_jacobian(name: str) -> None:
    """d logit_i / d x_j = 0 whenever j is not before i in the model's ordering."""
    dim = 16
    model = build(name, dim)
    x = torch.rand(1, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for k, order in enumerate(orders_of(model)):
        jac = jacobian(logits_under(model, k), x).reshape(dim, dim)  # [output, input]
        pos = torch.empty(dim, dtype=torch.long)
        pos[torch.tensor(order)] = torch.arange(dim)
        later_or_same = pos[None, :] >= pos[:, None]  # input j not before output i
        assert torch.all(jac[later_or_same] == 0), (name, k)
        # The model does use the past: some allowed entries are non-zero.
        assert (jac[~later_or_same] != 0).float().mean() > 0.3


def test_made_orderings_differ_and_cycle_in_training() -> None:
    model = MADE(dim=8, hidden=(16,), num_masks=3, order_agnostic=True)
    orders = [tuple(model.order(k).tolist()) for k in range(3)]
    assert len(set(orders)) == 3
    x = torch.bernoulli(torch.full((4, 8), 0.5), generator=torch.Generator().manual_seed(0))
    model.train()
    model.loss(x)
    assert int(model.mask_index) == 0  # loss has no side effect
    seen = []
    for _ in range(4):
        seen.append(int(model.mask_index))
        model.loss(x)
        model.after_step()  # what the training loop calls after each optimiser step
    assert seen == [0, 1, 2, 0]
    model.eval()
    model.after_step()
    assert int(model.mask_index) == 1  # eval mode does not move on
    assert model.next_mask_set() == 2  # explicit rotation, in any mode


def test_made_masks_follow_the_seed_rule() -> None:
    """One hidden layer, natural order: m(k) in [1, D-1], M^W = 1[m(k) >= d], M^V = 1[d > m(k)]."""
    dim, hidden = 7, 50
    model = MADE(dim=dim, hidden=(hidden,), seed=3)
    m = model.degrees_0[0]
    assert int(m.min()) >= 1 and int(m.max()) <= dim - 1
    mask_w, mask_v = model.masks()
    for k in range(hidden):
        for d in range(1, dim + 1):
            assert bool(mask_w[k, d - 1]) == (int(m[k]) >= d)
            assert bool(mask_v[d - 1, k]) == (d > int(m[k]))


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_sample_frequencies_match_log_prob(name: str) -> None:
    """Ancestral samples of a 4-dim model hit each of the 16 states with probability p(x)."""
    dim, n = 4, 20000
    model = build(name, dim)
    model.eval()
    with torch.no_grad():
        s = model.sample(n, generator=torch.Generator().manual_seed(0)).reshape(n, dim)
        p = torch.exp(model.log_prob(all_binary(dim)))
    index = (s * (2 ** torch.arange(dim - 1, -1, -1, dtype=s.dtype))).sum(1).long()
    freq = torch.bincount(index, minlength=2**dim).double() / n
    tol = 5 * torch.sqrt(p * (1 - p) / n) + 1e-3
    assert torch.all((freq - p).abs() < tol), (freq, p)


def test_nade_matches_the_per_step_definition() -> None:
    """The cumulative-sum NADE equals the seed's h_i = sigmoid(W[:, <i] x_<i + c) loop."""
    model = build("nade", 6)
    x = all_binary(6)[::5]
    with torch.no_grad():
        fast = model.logits(x)
        slow = torch.stack(
            [
                torch.sigmoid(x[:, :i] @ model.W[:, :i].t() + model.c) @ model.V[i] + model.b[i]
                for i in range(6)
            ],
            dim=1,
        )
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)


def test_pixelcnn_mask_a_hides_the_centre_mask_b_keeps_it() -> None:
    side = 5
    for mask_type, sees_centre in (("A", False), ("B", True)):
        torch.manual_seed(0)
        conv = MaskedConv2d(mask_type, 1, 1, 3).double()
        x = torch.rand(1, 1, side, side, dtype=torch.float64)
        jac = jacobian(lambda t, c=conv: c(t.reshape(1, 1, side, side)).reshape(-1), x.reshape(-1))
        centre = 2 * side + 2
        assert (jac[centre, centre] != 0) == sees_centre
        assert torch.all(jac.triu(1) == 0)  # nothing later in raster order
        assert jac[centre, centre - 1] != 0 and jac[centre, centre - side] != 0


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_float32_log_prob_finite_with_saturated_conditionals(name: str) -> None:
    """Huge logits (weights x 50) must give finite log-probabilities in float32."""
    torch.manual_seed(0)
    model = BUILDERS[name](16)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50)
        x = torch.bernoulli(torch.full((32, 16), 0.5), generator=torch.Generator().manual_seed(0))
        lp = model.log_prob(x)
    assert torch.isfinite(lp).all() and (lp <= 0).all()


def test_nade_in_blocks_equals_the_whole_and_so_do_its_gradients(monkeypatch) -> None:
    """Blocks of positions (recomputed in the backward pass) give the same logits and the
    same parameter gradients as one block over all D positions."""
    torch.manual_seed(3)
    model = NADE(dim=10, hidden=4).double()
    x = torch.bernoulli(torch.full((7, 10), 0.5, dtype=torch.float64))
    whole = -model.log_prob(x).mean()
    expected = torch.autograd.grad(whole, list(model.parameters()))
    monkeypatch.setattr(NADE, "block_elements", 7 * 4 * 3)  # blocks of 3 positions
    blocked = -model.log_prob(x).mean()
    got = torch.autograd.grad(blocked, list(model.parameters()))
    torch.testing.assert_close(blocked, whole, rtol=1e-12, atol=1e-12)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_made_masks_follow_a_loaded_state_dict_dtype_and_pickling() -> None:
    """`logits` keeps each mask set's masks once built: a state dict with other orders and
    degrees (another seed) must replace them, as must another dtype; the model pickles."""
    import io
    import pickle

    x = (torch.rand(6, 7, generator=torch.Generator().manual_seed(0)) < 0.5).double()
    model = MADE(dim=7, hidden=(9,), num_masks=2, order_agnostic=True,
                 connectivity_agnostic=True, seed=1).double()
    other = MADE(dim=7, hidden=(9,), num_masks=2, order_agnostic=True,
                 connectivity_agnostic=True, seed=2).double()
    before = model.logits(x)                      # masks of seed 1 kept
    model.load_state_dict(other.state_dict())
    for k in (0, 1):
        torch.testing.assert_close(model.logits(x, k), other.logits(x, k))
    assert not torch.allclose(before, model.logits(x, 0))
    model.mask_index.fill_(1)                     # the buffer, set directly, is obeyed
    torch.testing.assert_close(model.logits(x), other.logits(x, 1))
    torch.testing.assert_close(model.float().logits(x.float()), other.logits(x, 1).float())
    buffer = io.BytesIO()
    pickle.dump(model, buffer)
    buffer.seek(0)
    torch.testing.assert_close(pickle.load(buffer).logits(x.float()), model.logits(x.float()))  # noqa: S301
