"""The two RBMs of Swersky et al. (seed 002): generated code against independent
references in float64 — brute-force enumeration and quadrature over the hidden units,
autograd on the energy, and the seed's closed forms."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from support import load_class

SIZES = [(3, 1), (4, 2), (6, 3), (5, 5), (2, 7)]


@pytest.fixture(autouse=True)
def float64_by_default():
    """These tests prove mathematics in float64; restore the default afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def gbrbm_class():
    return load_class("gbrbm")[0]


@pytest.fixture(scope="module")
def gaussian_class():
    return load_class("gaussian_rbm")[0]


def _model(cls, D, K, scale, seed):
    torch.manual_seed(seed)
    model = cls(D=D, K=K, dtype=torch.float64)
    with torch.no_grad():
        model.W.normal_(0.0, scale)
    return model


def _hessian_trace(f, v):
    """sum_i d^2 f / dv_i^2 per sample, one backward pass per dimension."""
    v = v.detach().requires_grad_(True)
    grad = torch.autograd.grad(f(v).sum(), v, create_graph=True)[0]
    return torch.stack([torch.autograd.grad(grad[:, i].sum(), v, retain_graph=True)[0][:, i]
                        for i in range(v.shape[1])], dim=1).sum(dim=1)


def _grad(f, v):
    v = v.detach().requires_grad_(True)
    return torch.autograd.grad(f(v).sum(), v)[0]


# ---------------------------------------------------------------- Gaussian-Bernoulli RBM

def gbrbm_energy(v, h, W):
    """E(v, h) = 1/2 v^T v - v^T W h for every (sample, hidden state) pair."""
    return 0.5 * (v**2).sum(1)[:, None] - torch.einsum("ni,ij,cj->nc", v, W, h)


def gbrbm_free_energy_enumerated(v, W):
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=W.shape[1])))
    return -torch.logsumexp(-gbrbm_energy(v, states, W), dim=1)


def gbrbm_free_energy_seed(v, W):
    """Seed 002: F(v) = 1/2 v^T v - sum_j log(1 + exp(v^T W_j))."""
    return 0.5 * (v**2).sum(1) - torch.log1p(torch.exp(v @ W)).sum(1)


def gbrbm_sm_seed(v, W):
    """Seed 002: J = const + sum_i [1/2 (v_i - v^_i)^2 + sum_j W_ij^2 h^_j (1 - h^_j)],
    with h^ = sigmoid(W^T v), v^ = W h^; the constant is -D (from d^2/dv_i^2 of -v^2/2)."""
    h = torch.sigmoid(v @ W)
    v_hat = h @ W.T
    per_sample = 0.5 * ((v - v_hat) ** 2).sum(1) + ((W**2) @ (h * (1 - h)).T).sum(0)
    return (per_sample - v.shape[1]).mean()


@pytest.mark.parametrize("D,K", SIZES)
def test_gbrbm_free_energy_matches_enumeration_and_seed(gbrbm_class, D, K):
    model = _model(gbrbm_class, D, K, scale=0.8, seed=D * 10 + K)
    v = 1.5 * torch.randn(7, D)
    W = model.W.detach()
    F = model.free_energy(v)
    torch.testing.assert_close(F, gbrbm_free_energy_enumerated(v, W), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(F, gbrbm_free_energy_seed(v, W), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("D,K", SIZES)
def test_gbrbm_score_laplacian_sm_match_autograd(gbrbm_class, D, K):
    model = _model(gbrbm_class, D, K, scale=0.8, seed=D + K)
    v = torch.randn(6, D)
    W = model.W.detach()

    def log_density(x):
        return -gbrbm_free_energy_enumerated(x, W)

    score = _grad(log_density, v)
    laplacian = _hessian_trace(log_density, v)
    torch.testing.assert_close(model.score(v), score, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.laplacian(v), laplacian, rtol=1e-10, atol=1e-12)
    sm = (0.5 * (score**2).sum(1) + laplacian).mean()
    torch.testing.assert_close(model.sm_loss(v), sm, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("D,K", SIZES)
def test_gbrbm_sm_is_the_seeds_regularised_autoencoder(gbrbm_class, D, K):
    model = _model(gbrbm_class, D, K, scale=0.8, seed=3 * D + K)
    v = torch.randn(9, D)
    torch.testing.assert_close(model.sm_loss(v), gbrbm_sm_seed(v, model.W.detach()),
                               rtol=1e-12, atol=1e-12)


def test_gbrbm_sm_parameter_gradient_matches_seed_form(gbrbm_class):
    model = _model(gbrbm_class, 6, 4, scale=0.8, seed=11)
    v = torch.randn(8, 6)
    W = model.W.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(gbrbm_sm_seed(v, W), W)
    (actual,) = torch.autograd.grad(model.sm_loss(v), model.W)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_gbrbm_float32_stays_finite_for_large_inputs(gbrbm_class):
    torch.manual_seed(0)
    model = gbrbm_class(D=20, K=8, dtype=torch.float32)
    with torch.no_grad():
        model.W.normal_(0.0, 1.0)
    v = 1e3 * torch.randn(5, 20, dtype=torch.float32)
    for value in (model.free_energy(v), model.score(v), model.laplacian(v), model.sm_loss(v)):
        assert torch.isfinite(value).all()
    # and the free energy is right there: softplus(x) = x for large x
    expected = 0.5 * (v.double() ** 2).sum(1) - torch.nn.functional.softplus(
        v.double() @ model.W.detach().double()).sum(1)
    torch.testing.assert_close(model.free_energy(v).double(), expected, rtol=1e-5, atol=0)


# ---------------------------------------------------------------- all-Gaussian RBM

def gaussian_free_energy_quadrature(v, W, nodes=801, half_width=20.0):
    """-log of the integral of exp(-E(v, h)) over h in R^K by the trapezoidal rule."""
    K = W.shape[1]
    t = torch.linspace(-half_width, half_width, nodes)
    step = t[1] - t[0]
    grid = torch.stack(torch.meshgrid(*([t] * K), indexing="ij"), dim=-1).reshape(-1, K)
    E = (0.5 * (v**2).sum(1)[:, None] + 0.5 * (grid**2).sum(1)[None, :]
         - torch.einsum("ni,ij,cj->nc", v, W, grid))
    return -(torch.logsumexp(-E, dim=1) + K * torch.log(step))


def gaussian_free_energy_seed(v, W):
    """Seed 002: F(v) = 1/2 v^T (I - W W^T) v, plus the constant -K/2 log(2 pi)."""
    D, K = W.shape
    return 0.5 * torch.einsum("ni,ij,nj->n", v, torch.eye(D) - W @ W.T, v) \
        - 0.5 * K * math.log(2 * math.pi)


def gaussian_sm_seed(v, W):
    """Seed 002: J = sum_i [1/2 (v_i - sum_j W_ij (W_j^T v))^2 + sum_j W_ij^2], plus the
    constant -D the seed leaves out."""
    residual = v - (v @ W) @ W.T
    return (0.5 * (residual**2).sum(1)).mean() + (W**2).sum() - v.shape[1]


@pytest.mark.parametrize("D,K", [(3, 1), (4, 2), (2, 2)])
def test_gaussian_rbm_free_energy_matches_quadrature(gaussian_class, D, K):
    model = _model(gaussian_class, D, K, scale=0.4, seed=D * K)
    v = torch.randn(5, D)
    torch.testing.assert_close(model.free_energy(v),
                               gaussian_free_energy_quadrature(v, model.W.detach()),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("D,K", SIZES)
def test_gaussian_rbm_matches_seed_closed_forms(gaussian_class, D, K):
    model = _model(gaussian_class, D, K, scale=0.3, seed=7 * D + K)
    v = torch.randn(6, D)
    W = model.W.detach()
    torch.testing.assert_close(model.free_energy(v), gaussian_free_energy_seed(v, W),
                               rtol=1e-12, atol=1e-12)

    def log_density(x):
        return -gaussian_free_energy_seed(x, W)

    torch.testing.assert_close(model.score(v), _grad(log_density, v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.laplacian(v), _hessian_trace(log_density, v),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.sm_loss(v), gaussian_sm_seed(v, W), rtol=1e-12,
                               atol=1e-12)


def test_gaussian_rbm_sm_parameter_gradient(gaussian_class):
    model = _model(gaussian_class, 5, 3, scale=0.3, seed=5)
    v = torch.randn(8, 5)
    W = model.W.detach().clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(gaussian_sm_seed(v, W), W)
    (actual,) = torch.autograd.grad(model.sm_loss(v), model.W)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------- the module contract

@pytest.mark.parametrize("spec,cls_name", [("gbrbm", "GBRBM"), ("gaussian_rbm", "GaussianRBM")])
def test_contract(spec, cls_name):
    cls, _ = load_class(spec)
    assert cls.__name__ == cls_name
    model = cls()
    assert (model.D, model.K) == (784, 64)
    # W, and for the RBM without a closed-form normaliser the log Z that NCE learns
    assert dict(model.named_parameters()).keys() == ({"W", "log_z"} if spec == "gbrbm"
                                                     else {"W"})
    assert model.W.shape == (784, 64)
    v = torch.randn(3, 784, dtype=torch.float32)
    model32 = cls(D=784, K=64, dtype=torch.float32)
    assert model32.free_energy(v).shape == (3,)
    assert model32.score(v).shape == (3, 784)
    assert model32.laplacian(v).shape == (3,)
    assert model32.sm_loss(v).shape == ()
    with pytest.raises(ValueError, match=r"expected v of shape \[N, 784\], got \[3, 5\]"):
        model32.score(torch.randn(3, 5, dtype=torch.float32))
    with pytest.raises(ValueError, match="dtype"):
        model32.score(torch.randn(3, 784, dtype=torch.float64))
    with pytest.raises(ValueError, match="K must be a positive integer"):
        cls(K=0)


def test_torch_compile_gives_the_same_values():
    cls, _ = load_class("gbrbm")
    torch.manual_seed(0)
    model = cls(D=12, K=5, dtype=torch.float32)
    v = torch.randn(16, 12, dtype=torch.float32)
    compiled = torch.compile(model.sm_loss, dynamic=False)
    torch.testing.assert_close(compiled(v), model.sm_loss(v), rtol=1e-5, atol=1e-6)
