"""Autoencoders: the linear AE learns the PCA subspace (seed 004); the denoising objective
equals its closed-form expectation for a linear model; the L1 penalty makes codes sparse."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.linalg import subspace_angles
from sklearn.decomposition import PCA
from torch import Tensor

from energydsl.models import MLPAE, ConvAE, DenoisingAE, LinearAE, SparseAE


def test_linear_ae_decoder_spans_the_pca_subspace(digits_all: Tensor) -> None:
    x = digits_all[:600]
    k = 4
    pca = PCA(n_components=k).fit(x.numpy())
    torch.manual_seed(0)
    model = LinearAE(dim=64, code_dim=k).double().eval()
    before = subspace_angles(model.decoder.weight.detach().numpy(), pca.components_.T).max()
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=300, tolerance_grad=1e-12,
        tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure() -> Tensor:
        opt.zero_grad()
        loss = model.loss(x)
        loss.backward()
        return loss

    opt.step(closure)
    w_d = model.decoder.weight.detach().numpy()  # [64, k]: its columns span the code space
    angles = subspace_angles(w_d, pca.components_.T)
    assert before > 0.5  # a random decoder is far from the PCA subspace
    assert angles.max() < 1e-2, angles
    # Eckart-Young: the minimal loss is the sum of the discarded covariance eigenvalues.
    eig = np.linalg.eigvalsh(np.cov(x.numpy().T, bias=True))[::-1]
    with torch.no_grad():
        assert abs(float(model.loss(x)) - eig[k:].sum()) < 1e-3 * eig[k:].sum()
    # Not an orthonormal basis (unlike PCA's): only the subspace is determined.
    assert not np.allclose(w_d.T @ w_d, np.eye(k), atol=1e-2)


def linear_dae(noise: str, level: float) -> DenoisingAE:
    """With no hidden layer the DAE is affine: r = A x~ + c with A = W_d W_e."""
    torch.manual_seed(0)
    return DenoisingAE(dim=64, hidden=(), code_dim=6, noise=noise, noise_level=level).double()


def test_gaussian_denoising_objective_equals_ridge_closed_form(digits: Tensor) -> None:
    """E||x - A(x + e) - c||^2 = ||x - A x - c||^2 + sigma^2 ||A||_F^2 for e ~ N(0, sigma^2 I)."""
    x, sigma = digits[:16].double(), 0.3
    model = linear_dae("gaussian", sigma)
    with torch.no_grad():
        a = model.decoder[0].weight @ model.encoder[0].weight
        clean = (model.reconstruct(x) - x).pow(2).sum(1).mean()
        expected = clean + sigma**2 * a.pow(2).sum()
        g = torch.Generator().manual_seed(0)
        draws = torch.stack([model.loss(x, g) for _ in range(4000)])
    se = draws.std() / math.sqrt(draws.numel())
    assert abs(float(draws.mean() - expected)) < 4 * float(se), (draws.mean(), expected, se)


def test_masking_denoising_objective_equals_closed_form(digits: Tensor) -> None:
    """Drop each pixel with prob p: E = ||x - (1-p) A x - c||^2 + p(1-p) sum_i ||A_:i||^2 x_i^2."""
    x, p = digits[:16].double(), 0.25
    model = linear_dae("mask", p)
    with torch.no_grad():
        a = model.decoder[0].weight @ model.encoder[0].weight
        c = model.decoder[0].weight @ model.encoder[0].bias + model.decoder[0].bias
        mean_term = (x - (1 - p) * x @ a.t() - c).pow(2).sum(1)
        var_term = p * (1 - p) * (x.pow(2) * a.pow(2).sum(0)).sum(1)
        expected = (mean_term + var_term).mean()
        g = torch.Generator().manual_seed(0)
        draws = torch.stack([model.loss(x, g) for _ in range(4000)])
    se = draws.std() / math.sqrt(draws.numel())
    assert abs(float(draws.mean() - expected)) < 4 * float(se), (draws.mean(), expected, se)


def test_sparse_penalty_is_l1_of_the_code_and_sparsifies(digits: Tensor) -> None:
    x = digits
    torch.manual_seed(0)
    model = SparseAE(sparsity=0.1).eval()
    with torch.no_grad():
        h = model.encode(x)
        recon = (model.decoder(h) - x).pow(2).sum(1).mean()
        assert (h >= 0).all()
        torch.testing.assert_close(model.loss(x), recon + 0.1 * h.abs().sum(1).mean())

    def trained_code(sparsity: float) -> Tensor:
        torch.manual_seed(0)
        m = SparseAE(sparsity=sparsity)
        opt = torch.optim.Adam(m.parameters(), lr=3e-3)
        for _ in range(150):
            opt.zero_grad(set_to_none=True)
            m.loss(x).backward()
            opt.step()
        with torch.no_grad():
            return m.encode(x)

    dense, sparse = trained_code(0.0), trained_code(0.5)
    assert sparse.abs().sum(1).mean() < 0.5 * dense.abs().sum(1).mean()
    assert (sparse == 0).float().mean() > (dense == 0).float().mean() + 0.1


def test_samples_decode_codes_with_the_training_code_moments(digits: Tensor) -> None:
    """In training mode the loss tracks the code mean/variance that sample() draws from."""
    torch.manual_seed(0)
    model = MLPAE().train()
    with torch.no_grad():
        for _ in range(200):  # fixed weights: the running averages converge to the batch's
            model.loss(digits)
        h = model.encode(digits)
    torch.testing.assert_close(model.code_mean, h.mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.code_var, h.var(0, unbiased=False), rtol=1e-4, atol=1e-5)
    g = torch.Generator().manual_seed(0)
    z = model.code_mean + model.code_var.sqrt() * torch.randn(5, model.code_dim, generator=g)
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(s, model.decode(z).detach())


def test_conv_ae_accepts_flat_and_image_data(digits: Tensor) -> None:
    torch.manual_seed(0)
    model = ConvAE().eval()
    with torch.no_grad():
        flat = model.loss(digits)
        image = model.loss(digits.reshape(-1, 1, 8, 8))
        assert torch.equal(flat, image)
        assert model.reconstruct(digits).shape == (digits.shape[0], 1, 8, 8)
