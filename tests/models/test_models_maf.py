"""MaskedNetwork, MAF and IAF from the mathematics (float64, small sizes): log-determinants
against autograd Jacobians, inverses, the autoregressive property by perturbation,
normalisation by quadrature at D = 2 (also conditional), the shared MADE degree rule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor
from torch.autograd.functional import jacobian

from energydsl.models import IAF, MADE, MAF, MaskedAffine, MaskedNetwork
from energydsl.models.flows import ActNorm, _Flow

from models_helpers import perturb

FLOWS = {"maf": MAF, "iaf": IAF}


def make_flow(
    name: str,
    dim: int = 5,
    dequantization: str = "none",
    context_dim: int = 0,
    n_layers: int = 3,
    seed: int = 0,
    max_log_scale: float = 3.0,
) -> _Flow:
    torch.manual_seed(seed)
    flow = FLOWS[name](
        dim=dim, n_layers=n_layers, hidden=(16, 16), context_dim=context_dim,
        dequantization=dequantization, levels=4, max_log_scale=max_log_scale,
    )  # fmt: skip
    perturb(flow, 0.2, seed)  # away from the initialisation: non-trivial scales and shifts
    return flow.double()


def full_map(flow: _Flow, y: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Data y -> latent z, with the total log|det| (preprocessing + flow)."""
    v, ld_pre = flow.preprocess(y)
    z, ld = flow.forward_transform(v, context)
    return z, ld + ld_pre


def _context(n: int, c: int, seed: int = 7) -> Tensor | None:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) if c else None


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("dequantization", ["none", "logit"])
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_log_det_equals_autograd_jacobian(name: str, dequantization: str, context_dim: int) -> None:
    flow = make_flow(name, dequantization=dequantization, context_dim=context_dim)
    y = torch.rand(4, flow.dim, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ctx = _context(4, context_dim)
    _, logdet = full_map(flow, y, ctx)
    for i in range(y.shape[0]):
        c_i = None if ctx is None else ctx[i : i + 1]

        def f(row: Tensor, c_i: Tensor | None = c_i) -> Tensor:
            return full_map(flow, row.unsqueeze(0), c_i)[0].squeeze(0)

        jac = jacobian(f, y[i])
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        torch.testing.assert_close(logdet[i], logabs, rtol=0, atol=1e-10)


@pytest.mark.parametrize("context_dim", [0, 3])
@pytest.mark.parametrize("name", sorted(FLOWS))
def test_inverse_recovers_input(name: str, context_dim: int) -> None:
    flow = make_flow(name, context_dim=context_dim)
    g = torch.Generator().manual_seed(1)
    v = 3 * torch.randn(16, flow.dim, generator=g, dtype=torch.float64)
    ctx = _context(16, context_dim)
    with torch.no_grad():
        z, _ = flow.forward_transform(v, ctx)
        torch.testing.assert_close(flow.inverse_transform(z, ctx), v, rtol=0, atol=1e-10)
        z2 = torch.randn(16, flow.dim, generator=g, dtype=torch.float64)
        again, _ = flow.forward_transform(flow.inverse_transform(z2, ctx), ctx)
        torch.testing.assert_close(again, z2, rtol=0, atol=1e-10)
    # In data space with the logit dequantisation as well.
    flow = make_flow(name, dequantization="logit", context_dim=context_dim)
    y = torch.rand(16, flow.dim, generator=g, dtype=torch.float64)
    with torch.no_grad():
        z, _ = full_map(flow, y, ctx)
        back = flow.postprocess(flow.inverse_transform(z, ctx))
    torch.testing.assert_close(back, y, rtol=0, atol=1e-10)


def _positions(order: Tensor) -> Tensor:
    """pos[d] = the position of coordinate d in the ordering."""
    return torch.argsort(order)


@pytest.mark.parametrize("context_dim", [0, 2])
@pytest.mark.parametrize("hidden", [(), (12,), (12, 9)])
def test_masked_network_is_autoregressive(hidden: tuple[int, ...], context_dim: int) -> None:
    """Changing input j changes outputs (any parameter p) only at positions after j's."""
    dim, params = 6, 3
    order = torch.randperm(dim, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    net = MaskedNetwork(dim, hidden, params, order, context_dim, seed=1).double()
    perturb(net, 0.3)
    pos = _positions(order)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, dim, generator=g, dtype=torch.float64)
    ctx = _context(8, context_dim)
    out = net(x, ctx)
    assert out.shape == (8, params, dim)
    changed_any = torch.zeros(dim, dtype=torch.bool)
    for j in range(dim):
        x2 = x.clone()
        x2[:, j] += 1.0 + torch.rand(8, generator=g, dtype=torch.float64)
        changed = (net(x2, ctx) - out).abs().amax(dim=(0, 1)) > 1e-12  # per coordinate i
        allowed = pos > pos[j]
        assert not (changed & ~allowed).any(), (j, changed, allowed)
        changed_any |= changed
    # Every coordinate except the first in the ordering does see some input.
    assert changed_any.sum() == dim - 1 and not changed_any[order[0]]


def test_context_reaches_every_output() -> None:
    """The context is unmasked: it moves all outputs, the first position's included."""
    torch.manual_seed(0)
    net = MaskedNetwork(5, (10,), 2, context_dim=2).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    a = net(x, torch.zeros(2, dtype=torch.float64))
    b = net(x, torch.ones(2, dtype=torch.float64))
    assert ((a - b).abs() > 1e-12).all()
    with pytest.raises(ValueError, match="context"):
        net(x)
    with pytest.raises(ValueError, match="no context"):
        MaskedNetwork(5, (10,))(x.float(), torch.zeros(2))


@pytest.mark.parametrize("kind", ["maf", "iaf"])
def test_layer_jacobian_is_triangular_in_its_ordering(kind: str) -> None:
    """A MaskedAffine layer: z at position i depends on v at positions <= i only, with
    dz_i/dv_i = exp(-s_i) > 0 on the diagonal."""
    dim = 5
    order = torch.tensor([3, 0, 4, 1, 2])
    torch.manual_seed(0)
    layer = MaskedAffine(dim, (16,), order, kind).double()
    perturb(layer, 0.3)
    v = torch.randn(dim, dtype=torch.float64)
    jac = jacobian(lambda row: layer(row.unsqueeze(0))[0].squeeze(0), v)
    pj = jac[order][:, order]  # rows and columns in the layer's ordering
    assert torch.equal(pj.triu(1), torch.zeros_like(pj))
    assert (pj.diagonal() > 0).all()


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_orderings_reverse_between_layers(name: str) -> None:
    flow = FLOWS[name](dim=4, n_layers=3, hidden=(8,))
    orders = [layer.net.order.tolist() for layer in flow.layers]
    assert orders == [[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]]


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_random_orderings_are_seeded_permutations_and_the_flow_stays_exact(name: str) -> None:
    """ordering="random": each layer's ordering is a permutation drawn from seed + i (so
    two layers differ, and the same seed gives the same flow); the whole flow's log|det|
    still equals autograd's."""
    torch.manual_seed(0)
    flow = FLOWS[name](dim=6, n_layers=3, hidden=(16,), ordering="random", seed=4,
                       dequantization="none")
    orders = [layer.net.order for layer in flow.layers]
    assert all(sorted(o.tolist()) == list(range(6)) for o in orders)
    assert len({tuple(o.tolist()) for o in orders}) == 3
    again = FLOWS[name](dim=6, n_layers=3, hidden=(16,), ordering="random", seed=4)
    assert all(torch.equal(a, b.net.order) for a, b in zip(orders, again.layers, strict=True))
    flow = perturb(flow, 0.2).double()
    y = torch.randn(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, logdet = full_map(flow, y)
    for i in range(3):
        jac = jacobian(lambda row: full_map(flow, row.unsqueeze(0))[0].squeeze(0), y[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="ordering"):
        FLOWS[name](dim=6, ordering="shuffled")


def _grid(lo: float, hi: float, n: int) -> tuple[Tensor, float]:
    edges = torch.linspace(lo, hi, n + 1, dtype=torch.float64)
    return (edges[:-1] + edges[1:]) / 2, (hi - lo) / n


def flow_2d(name: str, context_dim: int = 0) -> _Flow:
    """A 2-d flow whose tails fit the quadrature box: each layer scales by e^(+-1) at most
    (a composition of 4 affine maps with scales up to e^3 can put ~2% of the mass beyond
    +-20: exact, but out of the grid's reach)."""
    return make_flow(name, dim=2, n_layers=4, context_dim=context_dim, max_log_scale=1.0)


def _mass(flow: _Flow, context: Tensor | None = None, half_width: float = 20.0) -> float:
    g, dx = _grid(-half_width, half_width, 500)
    with torch.no_grad():
        lp = flow.log_density(torch.cartesian_prod(g, g), context)
    return float(torch.exp(lp).sum()) * dx * dx


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_2d_density_integrates_to_one(name: str) -> None:
    flow = flow_2d(name)
    assert abs(_mass(flow) - 1) < 1e-3


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_conditional_2d_density_integrates_to_one_for_each_context(name: str) -> None:
    flow = flow_2d(name, context_dim=2)
    c1 = torch.tensor([0.5, -1.0], dtype=torch.float64)
    c2 = torch.tensor([-2.0, 1.5], dtype=torch.float64)
    assert abs(_mass(flow, c1) - 1) < 1e-3
    assert abs(_mass(flow, c2) - 1) < 1e-3
    # ... and they are two different densities.
    pts = torch.randn(10, 2, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.allclose(flow.log_density(pts, c1), flow.log_density(pts, c2))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_samples_follow_the_density(name: str) -> None:
    """Sample means match the mean of the density computed by quadrature (the sampling
    direction is the inverse of the density direction), conditional on a context."""
    flow = flow_2d(name, context_dim=1)
    ctx = torch.tensor([0.7], dtype=torch.float64)
    g, dx = _grid(-20, 20, 500)
    pts = torch.cartesian_prod(g, g)
    with torch.no_grad():
        w = torch.exp(flow.log_density(pts, ctx)) * dx * dx
    mean_q = (w[:, None] * pts).sum(0) / w.sum()
    s = flow.sample(20000, generator=torch.Generator().manual_seed(0), context=ctx)
    assert s.shape == (20000, 2)
    se = s.std(0) / math.sqrt(s.shape[0])
    assert ((s.mean(0) - mean_q).abs() < 5 * se).all(), (s.mean(0), mean_q, se)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_log_scales_are_bounded(name: str) -> None:
    """Huge network weights: |s| < max_log_scale, and float32 stays finite."""
    flow = FLOWS[name](dim=6, n_layers=2, hidden=(8,), max_log_scale=2.0)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1e3)
        x = torch.rand(16, 6)
        for layer in flow.layers:
            s, _ = layer.log_scale_shift(x)
            assert s.abs().max() <= 2.0
        assert torch.isfinite(flow.log_prob(x)).all()


def test_made_and_masked_network_share_the_degree_rule() -> None:
    """With the same seed and natural order, MaskedNetwork's masks for P = 1 are MADE's;
    for P = 2 the output mask is MADE's repeated for each parameter."""
    made = MADE(dim=7, hidden=(20, 15), seed=5)
    net1 = MaskedNetwork(7, (20, 15), 1, seed=5)
    net2 = MaskedNetwork(7, (20, 15), 2, seed=5)
    for a, b in zip(made.masks(), net1.masks(), strict=True):
        assert torch.equal(a.float(), b)
    *_, out = net2.masks()
    assert torch.equal(out, made.masks()[-1].float().repeat(2, 1))


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_dequantised_log_prob_and_loss(name: str, digits: Tensor) -> None:
    """Grey levels: a bound, D log(levels) below the density of the dequantised data."""
    flow = FLOWS[name](dim=64, n_layers=2, hidden=(32,))
    assert flow.log_prob_kind == "lower_bound" and flow.data_kind == "continuous"
    assert flow.event_shape == (64,)
    x = digits[:8]
    g = torch.Generator().manual_seed(0)
    y = flow.dequantize(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(
        flow.log_prob(x, g), flow.log_density(y) - 64 * math.log(17)
    )
    loss = flow.loss(x)
    assert loss.dim() == 0 and torch.isfinite(loss)
    exact = FLOWS[name](dim=64, n_layers=2, hidden=(32,), dequantization="none")
    assert exact.log_prob_kind == "exact"


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_actnorm_layers_keep_the_flow_exact(name: str) -> None:
    """With ActNorm before every masked layer: the first training batch sets its shift and
    scale (whitened outputs), and log-determinants still equal the autograd Jacobian's,
    inverses still invert."""
    torch.manual_seed(5)
    flow = FLOWS[name](dim=4, n_layers=2, hidden=(8,), dequantization="none",
                       actnorm=True).double()
    first = flow.layers[0]
    assert isinstance(first, ActNorm) and not bool(first.initialised)
    batch = 3.0 + 2.0 * torch.randn(64, 4, dtype=torch.float64)
    flow.train()
    out, _ = first(batch)
    assert bool(first.initialised)
    torch.testing.assert_close(out.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-10,
                               rtol=0)
    torch.testing.assert_close(out.std(0), torch.ones(4, dtype=torch.float64), atol=1e-5,
                               rtol=0)
    flow.eval()
    perturb(flow, 0.2, 1)
    x = torch.randn(3, 4, dtype=torch.float64)
    z, logdet = flow.forward_transform(x)
    for i in range(3):
        jac = jacobian(lambda row: flow.forward_transform(row.unsqueeze(0))[0].squeeze(0), x[i])
        torch.testing.assert_close(logdet[i], torch.linalg.slogdet(jac)[1], rtol=0,
                                   atol=1e-10)
    torch.testing.assert_close(flow.inverse_transform(z), x, rtol=0, atol=1e-9)
