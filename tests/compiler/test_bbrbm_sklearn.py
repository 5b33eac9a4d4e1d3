"""The compiled BB-RBM (specs/bbrbm.edsl) against scikit-learn's BernoulliRBM, an
independent implementation of the same model, fitted briefly on the binarised digits.

scikit-learn's conventions: components_ is W^T [K, D], intercept_visible_ is a,
intercept_hidden_ is c; _free_energy(v) = -v a - sum_k logaddexp(0, v W + c)_k; transform
is E[h | v]; score_samples(v) = D log sigmoid(F(v with one random bit flipped) - F(v)), the
pseudo-likelihood estimated from one bit per sample. Its expectation over that bit is
sum_i log sigmoid(flip_gain_i): minus the module's per-sample pl objective.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.neural_network import BernoulliRBM

from energydsl.train.data import load_digits

from support import load_class

F64 = torch.float64


@pytest.fixture(scope="module")
def fitted():
    """(scikit-learn's fitted RBM, our BBRBM holding its weights, 40 held-out digits)."""
    digits = load_digits(binarize=True, dtype=F64)
    reference = BernoulliRBM(n_components=8, learning_rate=0.05, batch_size=20, n_iter=5,
                             random_state=0).fit(digits.train.numpy())
    model = load_class("bbrbm")[0](D=64, K=8, dtype=F64)
    with torch.no_grad():
        model.W.copy_(torch.from_numpy(reference.components_.T))
        model.a.copy_(torch.from_numpy(reference.intercept_visible_))
        model.c.copy_(torch.from_numpy(reference.intercept_hidden_))
    return reference, model, digits.valid[:40]


def test_the_free_energy_and_the_hidden_means_are_scikit_learns(fitted):
    reference, model, v = fitted
    assert np.abs(reference.components_).max() > 0.1  # trained, not the tiny initial W
    with torch.no_grad():
        np.testing.assert_allclose(model.free_energy(v).numpy(),
                                   reference._free_energy(v.numpy()), rtol=1e-12)
        np.testing.assert_allclose(model.mean_h(v).numpy(), reference.transform(v.numpy()),
                                   rtol=1e-12)


def test_pl_is_minus_the_expected_score_samples_over_the_flipped_bit(fitted):
    """scikit-learn's _free_energy at each of the D one-bit flips gives the exact average
    of score_samples over its random bit, which must be minus our per-sample pl
    objective; and every value score_samples returns is one of those D terms."""
    reference, model, v = fitted
    data = v.numpy()
    base = reference._free_energy(data)
    terms = np.empty(data.shape)  # terms[n, i] = D log sigmoid(F(v_n flipped at i) - F(v_n))
    for i in range(data.shape[1]):
        flipped = data.copy()
        flipped[:, i] = 1 - flipped[:, i]
        terms[:, i] = -data.shape[1] * np.logaddexp(0, -(reference._free_energy(flipped) - base))
    with torch.no_grad():
        ours = np.array([model.pl_loss(v[n:n + 1]).item() for n in range(len(v))])
        np.testing.assert_allclose(terms.mean(axis=1), -ours, rtol=1e-10)
        assert model.pl_loss(v).item() == pytest.approx(-terms.mean(axis=1).mean(), rel=1e-10)
    for seed in range(3):
        reference.random_state = seed
        scores = reference.score_samples(data)
        assert (np.abs(terms - scores[:, None]).min(axis=1) < 1e-9).all()
