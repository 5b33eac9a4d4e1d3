"""Datasets and ZCA: checked against independent computations, not just shapes."""

from __future__ import annotations

import gzip
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from sklearn import datasets

from energydsl.train import data
from energydsl.train.data import IDX_IMAGES, IDX_LABELS, ZCA, DataError

# ---------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load("digits", dtype=torch.float64)


def test_digits_split_is_fixed_disjoint_and_covers_everything(digits: data.Dataset) -> None:
    raw = datasets.load_digits()
    x, y = raw.data / 16.0, raw.target
    assert (len(digits.train), len(digits.valid), len(digits.test)) == (1257, 270, 270)
    train, valid, test = data.split_indices(1797, 270, 270)
    everything = np.concatenate([train, valid, test])
    assert np.array_equal(np.sort(everything), np.arange(1797))  # disjoint and complete
    for split, labels, idx in ((digits.train, digits.train_labels, train),
                               (digits.valid, digits.valid_labels, valid),
                               (digits.test, digits.test_labels, test)):
        assert torch.equal(split, torch.from_numpy(x[idx]))
        assert labels is not None and np.array_equal(labels.numpy(), y[idx])
    assert float(digits.train.min()) == 0.0 and float(digits.train.max()) == 1.0
    assert digits.shape == (1, 8, 8) and digits.dim == 64 and digits.name == "digits"


def test_the_digits_read_directly_are_scikit_learns() -> None:
    """The shipped csv read without importing scikit-learn (start-up time) gives exactly
    load_digits' images and labels, in its order."""
    reference = datasets.load_digits()
    table = data._digits_table()
    assert np.array_equal(table[:, :64], reference.data.astype(np.int64))
    assert np.array_equal(table[:, 64], reference.target)


def test_split_ignores_the_global_rng(digits: data.Dataset) -> None:
    torch.manual_seed(123)
    np.random.seed(456)
    again = data.load_digits(dtype=torch.float64)
    assert torch.equal(again.train, digits.train) and torch.equal(again.test, digits.test)
    assert again.train.dtype == torch.float64
    assert data.load_digits().train.dtype == torch.float32


def test_centering_uses_the_train_mean_only(digits: data.Dataset) -> None:
    centered = data.load("digits", center=True, dtype=torch.float64)
    mu = digits.train.mean(dim=0)
    assert centered.centered and torch.allclose(centered.mean, mu, rtol=0, atol=1e-15)
    assert centered.train.mean(dim=0).abs().max() < 1e-12
    assert torch.allclose(centered.valid, digits.valid - mu, rtol=0, atol=1e-15)
    assert torch.allclose(centered.test, digits.test - mu, rtol=0, atol=1e-15)
    assert centered.valid.mean(dim=0).abs().max() > 1e-3  # not re-centered per split
    assert torch.allclose(centered.uncenter(centered.test), digits.test, atol=1e-15)
    assert torch.equal(centered.images(centered.test[:3]), digits.test[:3].reshape(3, 1, 8, 8))
    single = data.load("digits", center=True)
    assert single.train.mean(dim=0).abs().max() < 1e-6


def test_binarize_thresholds_at_one_half(digits: data.Dataset) -> None:
    binary = data.load("digits", binarize=True)
    for split, ref in ((binary.train, digits.train), (binary.test, digits.test)):
        assert set(split.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(split, (ref > 0.5).float())


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'cifar'.*digits, mnist, patches"):
        data.load("cifar")


# ---------------------------------------------------------------- patches


@pytest.fixture(scope="module")
def gray() -> np.ndarray:
    """The photographs' luminance, computed here without energydsl."""
    images = datasets.load_sample_images().images
    return np.stack([(0.299 * im[..., 0] + 0.587 * im[..., 1] + 0.114 * im[..., 2]) / 255.0
                     for im in images])


def test_patches_are_crops_of_the_grayscale_photos(gray: np.ndarray) -> None:
    assert np.allclose(data.sample_images(), gray, atol=1e-12)
    patches, where = data.sample_patches(gray, 8, 200, seed=3)
    assert len(set(where[:, 0].tolist())) == 2  # both photos are used
    for patch, (i, r, c) in zip(patches, where, strict=True):
        assert np.array_equal(patch, gray[i, r:r + 8, c:c + 8])
    again, _ = data.sample_patches(gray, 8, 200, seed=3)
    other, _ = data.sample_patches(gray, 8, 200, seed=4)
    assert np.array_equal(again, patches) and not np.array_equal(other, patches)


def test_loaded_patches_occur_in_the_photos(gray: np.ndarray) -> None:
    ds = data.load("patches", size=6, n_patches=400, seed=1, dtype=torch.float64)
    assert (len(ds.train), len(ds.valid), len(ds.test)) == (280, 60, 60)
    assert ds.shape == (1, 6, 6) and 0.0 <= float(ds.train.min()) <= float(ds.train.max()) <= 1
    windows = sliding_window_view(gray, (6, 6), axis=(1, 2))  # every crop of both photos
    for patch in (ds.train[0], ds.valid[0], ds.test[-1]):
        error = np.abs(windows - patch.reshape(6, 6).numpy()).max(axis=(3, 4))
        assert error.min() < 1e-12


# ---------------------------------------------------------------- ZCA


def correlated(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix + 3.0


def test_zca_fit_whitens_exactly_and_inverts() -> None:
    x = correlated(500, 6, 0)
    zca = ZCA.fit(x)
    z = zca.transform(x)
    assert torch.allclose(z.mean(dim=0), torch.zeros(6, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.cov(z.T), torch.eye(6, dtype=torch.float64), rtol=0, atol=1e-8)
    assert torch.allclose(zca.matrix, zca.matrix.T, atol=1e-12)  # ZCA, not PCA
    assert bool((torch.linalg.eigvalsh(zca.matrix) > 0).all())
    assert torch.allclose(zca.matrix @ zca.inverse, torch.eye(6, dtype=torch.float64),
                          atol=1e-10)
    assert torch.allclose(zca.inverse_transform(z), x, rtol=0, atol=1e-10)


def test_zca_eps_is_a_ridge_on_the_eigenvalues() -> None:
    x = correlated(400, 5, 1)
    eps = 0.5
    values = torch.linalg.eigvalsh(torch.cov(x.T))
    z = ZCA.fit(x, eps=eps).transform(x)
    assert torch.allclose(torch.linalg.eigvalsh(torch.cov(z.T)), values / (values + eps),
                          atol=1e-10)


def test_zca_on_singular_data_needs_eps(digits: data.Dataset) -> None:
    with pytest.raises(DataError, match="eps > 0"):
        ZCA.fit(digits.train)  # some border pixels are always 0
    single = digits.train.float()
    z = ZCA.fit(single, eps=1e-2).transform(single)
    assert z.dtype == torch.float32 and bool(torch.isfinite(z).all())
    assert float(torch.cov(z.T).diagonal().max()) <= 1.0 + 1e-4


def test_zca_from_precision_whitens_gaussian_samples() -> None:
    d, n = 4, 200_000
    g = torch.Generator().manual_seed(7)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    precision = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    chol = torch.linalg.cholesky(precision)  # P = L L^T, so x = mu + L^{-T} e ~ N(mu, P^{-1})
    e = torch.randn(d, n, generator=g, dtype=torch.float64)
    x = mean + torch.linalg.solve_triangular(chol.T, e, upper=True).T
    zca = ZCA.from_precision(precision, mean)
    assert torch.allclose(zca.matrix @ zca.matrix, precision, atol=1e-10)  # W = P^{1/2}
    z = zca.transform(x)
    tolerance = 6.0 / n**0.5  # sampling error of a covariance entry is ~ 1/sqrt(n)
    assert float((torch.cov(z.T) - torch.eye(d, dtype=torch.float64)).abs().max()) < tolerance
    assert float(z.mean(dim=0).abs().max()) < tolerance
    by_cov = ZCA.from_covariance(torch.cholesky_inverse(chol), mean)
    assert torch.allclose(by_cov.matrix, zca.matrix, atol=1e-8)


def test_zca_rejects_bad_matrices() -> None:
    with pytest.raises(DataError, match="not symmetric"):
        ZCA.from_precision(torch.tensor([[2.0, 1.0], [0.0, 2.0]]))
    with pytest.raises(DataError, match="not positive definite"):
        ZCA.from_precision(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
    with pytest.raises(DataError, match="square"):
        ZCA.from_covariance(torch.ones(2, 3))


# ---------------------------------------------------------------- IDX and MNIST


def idx_bytes(array: np.ndarray, magic: int, dims: tuple[int, ...] | None = None) -> bytes:
    """An IDX file written independently of the reader (optionally lying about dims)."""
    dims = array.shape if dims is None else dims
    big = array.astype(array.dtype.newbyteorder(">"))
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + big.tobytes()


def write(path: Path, content: bytes, gz: bool = False) -> Path:
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


IMAGES = np.arange(3 * 5 * 4, dtype=np.uint8).reshape(3, 5, 4) * 4


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = data.read_idx(write(tmp_path / "im", idx_bytes(IMAGES, IDX_IMAGES), gz),
                           magic=IDX_IMAGES)
    assert images.dtype == np.uint8 and np.array_equal(images, IMAGES)
    labels = np.array([3, 1, 4], dtype=np.uint8)
    assert np.array_equal(data.read_idx(write(tmp_path / "lb", idx_bytes(labels, IDX_LABELS),
                                              gz)), labels)
    floats = np.linspace(-1, 1, 6).reshape(2, 3)
    got = data.read_idx(write(tmp_path / "f", idx_bytes(floats, 0x0E02), gz))
    assert got.dtype == np.float64 and np.array_equal(got, floats)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (idx_bytes(IMAGES, IDX_IMAGES)[:-5], "truncated: header declares 3 x 5 x 4 values"),
        (idx_bytes(IMAGES, IDX_IMAGES) + b"\0", "size mismatch"),
        (idx_bytes(IMAGES, IDX_IMAGES)[:10], "truncated: header declares 3 dimensions"),
        (b"\0\0", "too short"),
        (idx_bytes(IMAGES[0, 0], IDX_LABELS), "wrong magic number 0x00000801 .*expected "
                                             r"0x00000803 \(IDX unsigned bytes, 3 dim"),
        (b"GIF89a" + bytes(40), "not an IDX file"),
        (idx_bytes(IMAGES, IDX_IMAGES, dims=(1000, 28, 28)), "truncated.*784000 bytes"),
    ],
)
def test_idx_errors_name_the_file(tmp_path: Path, gz: bool, content: bytes,
                                  message: str) -> None:
    path = write(tmp_path / "bad-images", content, gz)
    with pytest.raises(DataError, match=message) as info:
        data.read_idx(path, magic=IDX_IMAGES)
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize("gz", [False, True])
def test_absurd_header_fails_fast_without_allocating(tmp_path: Path, gz: bool) -> None:
    content = idx_bytes(IMAGES, IDX_IMAGES, dims=(2**31, 28, 28))[:100]
    path = write(tmp_path / "huge", content, gz)
    start = time.perf_counter()
    with pytest.raises(DataError, match="limit"):
        data.read_idx(path, magic=IDX_IMAGES)
    assert time.perf_counter() - start < 0.5
    # under the limit but far beyond the gzip's content: read in chunks, capped
    path = write(tmp_path / "big.gz", idx_bytes(IMAGES, IDX_IMAGES, dims=(100_000, 28, 28)), True)
    tracemalloc.start()
    with pytest.raises(DataError, match="truncated"):
        data.read_idx(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20  # the header declares 78 MB


def test_corrupt_gzip_and_missing_file(tmp_path: Path) -> None:
    packed = gzip.compress(idx_bytes(IMAGES, IDX_IMAGES))
    with pytest.raises(DataError, match="cannot read"):
        data.read_idx(write(tmp_path / "cut.gz", packed[:-12]))
    with pytest.raises(DataError, match="no such file"):
        data.read_idx(tmp_path / "absent")


def mnist_dir(root: Path, n_train: int = 20, n_test: int = 6, gz: bool = False) -> Path:
    rng = np.random.default_rng(0)
    parts = {"train": n_train, "t10k": n_test}
    for part, n in parts.items():
        write(root / f"{part}-images-idx3-ubyte{'.gz' if gz else ''}",
              idx_bytes(rng.integers(0, 256, (n, 5, 4), dtype=np.uint8), IDX_IMAGES), gz)
        write(root / f"{part}-labels-idx1-ubyte",
              idx_bytes(rng.integers(0, 10, n, dtype=np.uint8), IDX_LABELS))
    return root


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_splits_follow_the_files(tmp_path: Path, gz: bool) -> None:
    root = mnist_dir(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = gzip.decompress((root / name).read_bytes()) if gz else (root / name).read_bytes()
    train = np.frombuffer(raw[16:], dtype=np.uint8).reshape(20, 20) / 255.0
    labels = np.frombuffer((root / "t10k-labels-idx1-ubyte").read_bytes()[8:], dtype=np.uint8)
    ds = data.load("mnist", path=root, dtype=torch.float64)
    assert ds.shape == (1, 5, 4) and (len(ds.train), len(ds.valid), len(ds.test)) == (18, 2, 6)
    assert np.array_equal(ds.train.numpy(), train[:18])
    assert np.array_equal(ds.valid.numpy(), train[18:])  # the last 10% validates
    assert ds.test_labels is not None and np.array_equal(ds.test_labels.numpy(), labels)
    binary = data.load_mnist(root, binarize=True, center=True)
    assert torch.allclose(binary.valid + binary.mean, (ds.valid > 0.5).float(), atol=1e-6)


def test_mnist_missing_and_inconsistent_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing MNIST file.*t10k-labels-idx1-ubyte"):
        data.load_mnist(tmp_path)
    with pytest.raises(DataError, match="not a directory"):
        data.load_mnist(tmp_path / "nowhere")
    root = mnist_dir(tmp_path)
    write(root / "t10k-labels-idx1-ubyte", idx_bytes(np.zeros(5, np.uint8), IDX_LABELS))
    with pytest.raises(DataError, match="6 images but .*t10k-labels-idx1-ubyte has 5 labels"):
        data.load_mnist(root)
