"""mPoT, the deep energy model and the masked Gaussian (seeds 000 and 002) against
independent references in float64: quadrature over the Gamma units, autograd on the
seeds' formulas written out by hand, and torch.distributions."""

from __future__ import annotations

import math

import pytest
import torch

from energydsl.check.checks import check_compiled, instantiate
from energydsl.compiler.driver import compile_source
from energydsl.compiler.loading import load_module

from support import load_class, randomise

F64 = torch.float64


def _grad(f, v):
    v = v.detach().requires_grad_(True)
    return torch.autograd.grad(f(v).sum(), v)[0]


def _hessian_trace(f, v):
    v = v.detach().requires_grad_(True)
    grad = torch.autograd.grad(f(v).sum(), v, create_graph=True)[0]
    return torch.stack([torch.autograd.grad(grad[:, i].sum(), v, retain_graph=True)[0][:, i]
                        for i in range(v.shape[1])], dim=1).sum(dim=1)


# ---------------------------------------------------------------- mPoT

@pytest.fixture(scope="module")
def mpot_class():
    return load_class("mpot")[0]


def mpot_free_energy_seed(v, C, W, gamma):
    """Seed 002: F = sum_k gamma log(1 + 1/2 (C_k^T v)^2) - sum_j log(1 + e^{W_j^T v})
    + 1/2 v^T v, plus the constant -K log Gamma(gamma) from integrating out h^c."""
    phi = v @ C
    return (gamma * torch.log1p(0.5 * phi**2).sum(1)
            - torch.nn.functional.softplus(v @ W).sum(1)
            + 0.5 * (v**2).sum(1) - C.shape[1] * math.lgamma(gamma))


def mpot_free_energy_quadrature(v, C, W, gamma, nodes=1400):
    """-log of sum over h^m and integral over h^c > 0 of exp(-E), on a joint grid in
    s = log h^c (trapezoidal rule), straight from the energy."""
    K, M = C.shape[1], W.shape[1]
    s = torch.linspace(-60.0, 6.0, nodes, dtype=F64)
    step = s[1] - s[0]
    grid = torch.stack(torch.meshgrid(*([s] * K), indexing="ij"), -1).reshape(-1, K)
    hc = grid.exp()
    hm = torch.tensor([[(b >> j) & 1 for j in range(M)] for b in range(2**M)], dtype=F64)
    phi = v @ C  # [N, K]
    e_c = (hc[None] * (1 + 0.5 * phi[:, None, :] ** 2)
           + (1 - gamma) * grid[None]).sum(-1)  # [N, G]
    e_m = -(v @ W) @ hm.T  # [N, 2^M]
    e_0 = 0.5 * (v**2).sum(1)
    log_jacobian = grid.sum(-1)  # dh = h ds
    total = (torch.logsumexp(-e_c + log_jacobian + K * torch.log(step), dim=1)
             + torch.logsumexp(-e_m, dim=1))
    return e_0 - total


def mpot_sm_derived_by_hand(v, C, W, gamma):
    """The mPoT score-matching objective with the seed's index typos corrected:
    J = sum_i [1/2 psi_i^2 + sum_k (rho(hc_k) D_ik^2 + hc_k K_ik)
               + sum_j hm_j (1 - hm_j) W_ij^2 - 1],
    D_ik = -(C_k^T v) C_ik and K_ik = -C_ik^2 (no sum over k: the seed's typo), and
    rho(x) = x^2 / gamma (the seed prints x^2, right only for gamma = 1)."""
    phi = v @ C
    hc = gamma / (1 + 0.5 * phi**2)
    hm = torch.sigmoid(v @ W)
    D = -phi[:, None, :] * C[None]  # [N, D, K]
    K_ = -(C**2)
    psi = (hc[:, None, :] * D).sum(-1) + hm @ W.T - v
    per_sample = (0.5 * psi**2).sum(1) + (hc[:, None, :] ** 2 / gamma * D**2).sum((1, 2)) \
        + (hc @ K_.T).sum(1) + (hm * (1 - hm) @ (W**2).T).sum(1) - v.shape[1]
    return per_sample.mean()


@pytest.mark.parametrize("D,K,M,gamma", [(3, 1, 2, 1.0), (4, 2, 1, 1.7), (2, 2, 3, 0.6)])
def test_mpot_free_energy_matches_gamma_quadrature_and_seed(mpot_class, D, K, M, gamma):
    model = randomise(mpot_class(D=D, K=K, M=M, gamma=gamma, dtype=F64), 0.8, D + K + M)
    v = torch.randn(5, D, dtype=F64)
    C, W = model.C.detach(), model.W.detach()
    F = model.free_energy(v)
    torch.testing.assert_close(F, mpot_free_energy_seed(v, C, W, gamma), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F, mpot_free_energy_quadrature(v, C, W, gamma, 1400 if K == 1
                                                               else 500),
                               rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("gamma", [1.0, 1.7])
def test_mpot_score_matching_against_autograd_and_corrected_seed(mpot_class, gamma):
    model = randomise(mpot_class(D=5, K=3, M=2, gamma=gamma, dtype=F64), 0.7, 9)
    v = torch.randn(6, 5, dtype=F64)
    C, W = model.C.detach(), model.W.detach()

    def log_density(x):
        return -mpot_free_energy_seed(x, C, W, gamma)

    score = _grad(log_density, v)
    laplacian = _hessian_trace(log_density, v)
    torch.testing.assert_close(model.score(v), score, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.laplacian(v), laplacian, rtol=1e-10, atol=1e-12)
    sm = model.sm_loss(v)
    torch.testing.assert_close(sm, (0.5 * (score**2).sum(1) + laplacian).mean(), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(sm, mpot_sm_derived_by_hand(v, C, W, gamma), rtol=1e-10,
                               atol=1e-12)


def test_the_seeds_printed_mpot_rho_is_wrong_for_gamma_not_one(mpot_class):
    """rho(x) = x^2 as printed differs from the derivation once gamma != 1."""
    gamma = 1.7
    model = randomise(mpot_class(D=5, K=3, M=2, gamma=gamma, dtype=F64), 0.7, 9)
    v = torch.randn(6, 5, dtype=F64)
    C, W = model.C.detach(), model.W.detach()
    as_printed = mpot_sm_derived_by_hand(v, C, W, gamma) + (
        (1 - 1 / gamma) * ((gamma / (1 + 0.5 * (v @ C) ** 2))[:, None, :] ** 2
                           * ((v @ C)[:, None, :] * C[None]) ** 2).sum((1, 2))).mean()
    assert not torch.isclose(model.sm_loss(v), as_printed, rtol=1e-3)


def test_mpot_requires_gamma_positive(mpot_class):
    with pytest.raises(ValueError, match=r"normalisable only if gamma > 0, got gamma=-0.5"):
        mpot_class(gamma=-0.5)


# ---------------------------------------------------------------- deep energy model

@pytest.fixture(scope="module")
def dem_class():
    return load_class("dem")[0]


def dem_log_density_seed(x, V, W, b, c, sigma):
    """Seed 000: log p~(x) = -|x|^2/(2 sigma^2) + b^T x + sum_k S(w_k^T g(x) + c_k),
    g(x) = s(V x)."""
    g = torch.sigmoid(x @ V.T)
    return (-(x**2).sum(1) / (2 * sigma**2) + x @ b
            + torch.nn.functional.softplus(g @ W.T + c).sum(1))


def dem_derivatives_seed(x, V, W, b, c, sigma):
    """Seed 000's hand derivatives: d log p / dx^l and d^2 log p / dx^l^2 (its J has a
    typo: 1/(2N) sum [|grad|^2 + lap] should be 1/N sum [|grad|^2 / 2 + lap])."""
    u = x @ V.T
    s1 = torch.sigmoid(u) * (1 - torch.sigmoid(u))
    s2 = s1 * (1 - 2 * torch.sigmoid(u))
    z = torch.sigmoid(u) @ W.T + c
    a = torch.sigmoid(z)
    a1 = a * (1 - a)
    inner = torch.einsum("kh,nh,hl->nkl", W, s1, V)  # w_k^T s'(Vx) V_l
    grad = -x / sigma**2 + b + torch.einsum("nk,nkl->nl", a, inner)
    lap = -x.shape[1] / sigma**2 + torch.einsum("nk,nkl->n", a1, inner**2) \
        + torch.einsum("nk,kh,nh,hl->n", a, W, s2, V**2)
    return grad, lap


@pytest.mark.parametrize("D,H,K,sigma", [(4, 3, 2, 1.0), (6, 5, 4, 0.7), (3, 7, 5, 1.3)])
def test_dem_against_autograd_and_the_seeds_derivatives(dem_class, D, H, K, sigma):
    model = randomise(dem_class(D=D, H=H, K=K, sigma=sigma, dtype=F64), 0.9, D * H + K)
    x = torch.randn(7, D, dtype=F64)
    V, W, b, c = (p.detach() for p in (model.V, model.W, model.b, model.c))

    def log_density(y):
        return dem_log_density_seed(y, V, W, b, c, sigma)

    torch.testing.assert_close(model.free_energy(x), -log_density(x), rtol=1e-12, atol=1e-12)
    score, laplacian = _grad(log_density, x), _hessian_trace(log_density, x)
    torch.testing.assert_close(model.score(x), score, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.laplacian(x), laplacian, rtol=1e-10, atol=1e-12)
    seed_grad, seed_lap = dem_derivatives_seed(x, V, W, b, c, sigma)
    torch.testing.assert_close(model.score(x), seed_grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.laplacian(x), seed_lap, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.sm_loss(x), (0.5 * (score**2).sum(1) + laplacian).mean(),
                               rtol=1e-10, atol=1e-12)


def test_dem_sm_parameter_gradients(dem_class):
    model = randomise(dem_class(D=5, H=4, K=3, dtype=F64), 0.9, 1)
    x = torch.randn(6, 5, dtype=F64)
    params = [p.detach().clone().requires_grad_(True) for p in (model.V, model.W, model.b,
                                                                 model.c)]

    def loss(*ps):
        def log_density(y):
            return dem_log_density_seed(y, *ps, 1.0)
        y = x.clone().requires_grad_(True)
        grad = torch.autograd.grad(log_density(y).sum(), y, create_graph=True)[0]
        lap = sum(torch.autograd.grad(grad[:, i].sum(), y, create_graph=True)[0][:, i]
                  for i in range(5))
        return (0.5 * (grad**2).sum(1) + lap).mean()

    expected = torch.autograd.grad(loss(*params), params)
    actual = torch.autograd.grad(model.sm_loss(x), [model.V, model.W, model.b, model.c])
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-12)


def test_dem_keeps_its_named_intermediates():
    source = load_class("dem")[1].source
    for name in ("u = x @ self.V.T", "g = torch.sigmoid(u)", "z = "):
        assert name in source


# ---------------------------------------------------------------- masked Gaussian

@pytest.fixture(scope="module")
def masked_class():
    return load_class("masked_gaussian")[0]


def grid_neighbours(height, width, connectivity):
    """Independent mask: pixel pairs at king's-move (8) or rook's-step (4) distance."""
    mask = torch.zeros(height * width, height * width, dtype=torch.bool)
    for r in range(height):
        for c in range(width):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if connectivity == 4 and dr and dc:
                        continue
                    rr, cc = r + dr, c + dc
                    if 0 <= rr < height and 0 <= cc < width:
                        mask[r * width + c, rr * width + cc] = True
    return mask


def dense_raw(stencil, height, width):
    """Independent reading of a stored stencil: entry (3 (dr + 1) + (dc + 1), p) is the raw
    value at [p, pixel p + (dr, dc)]."""
    dense = torch.zeros(height * width, height * width, dtype=stencil.dtype)
    for r in range(height):
        for c in range(width):
            for dr in (-1, 0, 1):
                for dc in (-1, 0, 1):
                    if 0 <= r + dr < height and 0 <= c + dc < width:
                        dense[r * width + c, (r + dr) * width + c + dc] = \
                            stencil[3 * (dr + 1) + dc + 1, r * width + c]
    return dense


@pytest.mark.parametrize("connectivity", [4, 8])
@pytest.mark.parametrize("scale", [0.01, 1.0, 30.0])
def test_precision_is_masked_symmetric_and_positive_definite(masked_class, connectivity, scale):
    model = randomise(masked_class(height=5, width=4, connectivity=connectivity, dtype=F64),
                       scale, connectivity + int(scale))
    precision = model.precision()
    mask = grid_neighbours(5, 4, connectivity)
    assert torch.equal(precision, precision.T)
    assert (precision[~mask] == 0).all()
    assert (precision[mask] != 0).sum() > mask.sum() - 5  # the structure is actually used
    assert torch.linalg.eigvalsh(precision).min() > 0
    interior = 1 * 4 + 1
    assert mask[interior].sum() == (5 if connectivity == 4 else 9)


def test_precision_stays_positive_definite_in_float32(masked_class):
    model = randomise(masked_class(height=6, width=6, dtype=torch.float32), 100.0, 3)
    assert torch.linalg.cholesky_ex(model.precision())[1] == 0


def test_masked_gaussian_log_prob_and_sm_match_closed_forms(masked_class):
    model = randomise(masked_class(height=3, width=4, connectivity=8, dtype=F64), 0.6, 5)
    x = torch.randn(9, 12, dtype=F64)
    precision, mu = model.precision().detach(), model.mu.detach()
    reference = torch.distributions.MultivariateNormal(mu, precision_matrix=precision)
    torch.testing.assert_close(model.log_prob(x), reference.log_prob(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.log_partition(),
                               -reference.log_prob(mu) + 0.0, rtol=1e-12, atol=1e-12)
    seed_sm = (0.5 * ((x - mu) @ precision).square().sum(1)).mean() - torch.trace(precision)
    torch.testing.assert_close(model.sm_loss(x), seed_sm, rtol=1e-12, atol=1e-12)


def test_masked_gaussian_samples_have_its_mean_and_covariance(masked_class):
    model = randomise(masked_class(height=3, width=3, connectivity=4, dtype=F64), 0.5, 2)
    generator = torch.Generator().manual_seed(0)
    draws = model.sample(200_000, generator=generator)
    covariance = torch.linalg.inv(model.precision().detach())
    torch.testing.assert_close(draws.mean(0), model.mu.detach(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(draws.T), covariance, atol=0.02, rtol=0.02)
    again = model.sample(5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(again, model.sample(5, generator=torch.Generator().manual_seed(1)))


def test_masked_gaussian_rejects_bad_connectivity(masked_class):
    with pytest.raises(ValueError, match="connectivity must be 4 or 8, got 6"):
        masked_class(height=3, width=3, connectivity=6)


GRID_SPEC = """model Grid
dim height = 3
dim width = 4
dim D = height * width
const c = {connectivity}
visible x : real[D]
param A[D, D] ~ normal(0.3)  where mask(grid(height, width, c)){constraints}, accessor(coupling)
free energy F(x) = sum(i: x[i]^2) / 2 + sum(i, j: x[i] * A[i, j] * tanh(x[j]))
"""


@pytest.mark.parametrize("constraints", ["", ", symmetric", ", symmetric, diagonally_dominant"])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_grid_masked_parameters_work_through_their_stencil(constraints, connectivity):
    """Products with a grid-masked matrix run as stencils (_grid_apply, its transpose for
    sum_i x_i A_ik, its diagonal from the centre), never the dense matrix: every derived
    quantity agrees with autograd on the spec, and the dense accessor with the mask."""
    compiled = compile_source(GRID_SPEC.format(connectivity=connectivity,
                                               constraints=constraints), "grid.edsl")
    report = check_compiled(compiled)
    assert report.ok, [(row.quantity, row.error) for row in report.rows]
    source = compiled.source
    sm_loss = source[source.index("def sm_loss"):source.index("def reconstruct")]
    assert "_grid_apply(" in sm_loss and "coupling()" not in sm_loss
    assert ("_grid_transpose(" in sm_loss) == ("symmetric" not in constraints)
    model = instantiate(compiled, {"height": 3, "width": 4, "D": 12}, seed=connectivity)
    mask = grid_neighbours(3, 4, connectivity)
    assert model.A.shape == (9, 12)  # stored as its stencil
    value, raw = model.coupling().detach(), dense_raw(model.A.detach(), 3, 4)
    assert (value[~mask] == 0).all()
    if not constraints:
        assert torch.equal(value, torch.where(mask, raw, 0))
    elif "dominant" not in constraints:
        assert torch.equal(value, torch.where(mask, 0.5 * (raw + raw.T), 0))
    else:
        symmetric = torch.where(mask, 0.5 * (raw + raw.T), 0)
        off = symmetric - torch.diag(torch.diagonal(symmetric))
        diagonal = off.abs().sum(1) + torch.nn.functional.softplus(torch.diagonal(raw)) + 1e-6
        torch.testing.assert_close(value, off + torch.diag(diagonal), rtol=1e-15, atol=0)


def test_grid_size_must_match_the_matrix():
    """D declared on its own (not height * width): a grid that does not tile it is refused
    when the model is built, naming both sizes."""
    spec = GRID_SPEC.format(connectivity=8, constraints="").replace("dim D = height * width",
                                                                    "dim D = 12")
    cls = load_module(compile_source(spec, "grid.edsl").source).Grid
    assert cls(height=2, width=6).coupling().shape == (12, 12)
    with pytest.raises(ValueError, match="a 2 x 5 grid has 10 pixels, the matrix is 12 x 12"):
        cls(height=2, width=5)


def test_gaussian_rbm_log_prob_is_the_gaussian_with_precision_i_minus_wwt():
    cls, _ = load_class("gaussian_rbm")
    model = randomise(cls(D=4, K=2, dtype=F64), 0.3, 4)
    W = model.W.detach()
    reference = torch.distributions.MultivariateNormal(
        torch.zeros(4, dtype=F64), precision_matrix=torch.eye(4, dtype=F64) - W @ W.T)
    x = torch.randn(5, 4, dtype=F64)
    torch.testing.assert_close(model.log_prob(x), reference.log_prob(x), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        model.W.mul_(10)
    with pytest.raises(ValueError, match="not positive definite"):
        model.log_prob(x)
