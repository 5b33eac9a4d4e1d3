"""Datasets that work offline, and ZCA whitening.

Every model in the course is trained and compared on the same splits, so the splits are
fixed here: a permutation from a fixed seed (never the global RNG) for the embedded data,
the conventional last 10% of the training files for MNIST. Pixels are scaled to [0, 1];
`center=True` removes the *training* mean from every split (as in the seed's Gaussian
exercise, x - mu), `binarize=True` keeps pixels strictly above 0.5 as 1 for binary models.

- `digits`: scikit-learn's 1,797 real 8x8 handwritten digits (shipped in its wheel).
- `patches`: random grayscale patches of scikit-learn's two sample photographs.
- `mnist`: IDX files the user provides (raw or gzip), validated before anything large
  is allocated, so a corrupt or hostile header gives a `DataError`, not a MemoryError.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import torch

SPLIT_SEED = 20240601
"""Seed of the fixed train/valid/test permutation of the embedded datasets."""
HELD_OUT_FRACTION = 0.15
"""Fraction of the embedded datasets held out for validation, and again for testing."""
LUMINANCE = (0.299, 0.587, 0.114)
"""ITU-R BT.601 weights of R, G, B in the grayscale value."""
MAX_PIXELS = 100_000_000
"""Default budget of values read from IDX files (all of MNIST's images hold 55 million):
a corrupt header, a sparse file or a small gzip that expands to gigabytes is refused
before anything is allocated. Pass `max_pixels=` (`energydsl train --max-pixels`) to read
more."""
MIN_TRAIN_IMAGES = 10
"""Fewest training images accepted: a validation split (the last 10%) must remain."""

CLASSES: dict[str, int] = {"digits": 10, "mnist": 10}
"""The datasets whose examples carry a class label, and how many classes (labels 0 .. n-1):
what `energydsl train --conditional` conditions on."""

IDX_IMAGES = 0x00000803
IDX_LABELS = 0x00000801
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


class DataError(ValueError):
    """Data that cannot be loaded: the message names the file and what is wrong."""


@dataclass(frozen=True, eq=False)
class Codes:
    """A dataset of discrete grey levels as stored: uint8 codes 0 .. levels - 1, [N, D]
    per split, one byte per pixel; pixel values are codes / (levels - 1). Training keeps
    these until it forms each batch (MNIST: 55 MB here, 440 MB as float64)."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    shape: tuple[int, ...]
    levels: int
    name: str
    labels: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def values(self, codes: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Codes as pixel values in [0, 1]."""
        return codes.to(dtype) / (self.levels - 1)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Three splits of flattened examples [N, D] with D = prod(shape).

    `mean` is the training-split mean of the scaled (and binarised) data; it has been
    subtracted from every split exactly when `centered` is true.
    """

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    shape: tuple[int, ...]
    mean: torch.Tensor
    name: str
    centered: bool = False
    train_labels: torch.Tensor | None = None
    valid_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """[N, D] -> [N, *shape], with the mean added back, for plotting samples."""
        return self.uncenter(x).reshape(-1, *self.shape)

    def uncenter(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the centering (if any), so model samples live on the pixel scale."""
        return x + self.mean.to(x) if self.centered else x


def split_indices(
    n: int, n_valid: int, n_test: int, seed: int = SPLIT_SEED
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Disjoint sorted (train, valid, test) indices covering range(n), from a fixed seed."""
    if n_valid < 0 or n_test < 0 or n_valid + n_test >= n:
        raise ValueError(f"cannot hold out {n_valid} + {n_test} of {n} examples")
    perm = np.random.default_rng(seed).permutation(n)
    test, valid, train = np.split(perm, [n_test, n_test + n_valid])
    return np.sort(train), np.sort(valid), np.sort(test)


def _held_out(n: int) -> int:
    return int(round(n * HELD_OUT_FRACTION))


def _finish(
    name: str,
    splits: tuple[np.ndarray, np.ndarray, np.ndarray],
    shape: tuple[int, ...],
    labels: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
    center: bool,
    binarize: bool,
    dtype: torch.dtype,
) -> Dataset:
    """Binarise, center by the train mean (in float64, so it is ~0 exactly), convert."""
    xs = [np.asarray(x, dtype=np.float64).reshape(len(x), -1) for x in splits]
    if binarize:
        xs = [(x > 0.5).astype(np.float64) for x in xs]
    mean = xs[0].mean(axis=0)
    if center:
        xs = [x - mean for x in xs]
    tr, va, te = (torch.from_numpy(x).to(dtype) for x in xs)
    tl = vl = sl = None
    if labels is not None:
        tl, vl, sl = (torch.from_numpy(np.asarray(y, dtype=np.int64)) for y in labels)
    return Dataset(tr, va, te, shape, torch.from_numpy(mean).to(dtype), name, center,
                   tl, vl, sl)


def _from_codes(codes: Codes, center: bool, binarize: bool, dtype: torch.dtype) -> Dataset:
    """The float view of a coded dataset, converted straight to `dtype` (no float64 copy
    of the whole set); the mean accumulates in float64 a block of rows at a time."""
    def convert(split: torch.Tensor) -> torch.Tensor:
        values = codes.values(split, dtype)
        return (values > 0.5).to(dtype) if binarize else values

    splits = [convert(split) for split in (codes.train, codes.valid, codes.test)]
    total = torch.zeros(splits[0].shape[1], dtype=torch.float64)
    for start in range(0, len(splits[0]), 4096):
        total += splits[0][start:start + 4096].to(torch.float64).sum(dim=0)
    mean = total / len(splits[0])
    if center:
        splits = [split - mean.to(dtype) for split in splits]
    return Dataset(*splits, codes.shape, mean.to(dtype), codes.name, center,
                   *(codes.labels or (None, None, None)))


def _digits_table() -> np.ndarray:
    """The 1,797 x 65 table (64 grey levels, then the label) scikit-learn ships as
    datasets/data/digits.csv.gz, read directly: importing scikit-learn to get it takes
    1.5-4 s, more than a short training run."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package, imports nothing
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as handle:
                return np.loadtxt(handle, delimiter=",", dtype=np.int64)
    from sklearn import datasets  # a layout this reader does not know

    digits = datasets.load_digits()
    return np.column_stack([digits.data, digits.target]).astype(np.int64)


def digits_codes() -> Codes:
    """scikit-learn's 1,797 8x8 digits (grey levels 0..16), split 1257/270/270."""
    table = _digits_table()
    x = torch.from_numpy(table[:, :64].astype(np.uint8))
    y = torch.from_numpy(table[:, 64])
    idx = [torch.from_numpy(i) for i in split_indices(len(x), _held_out(len(x)),
                                                      _held_out(len(x)))]
    return Codes(x[idx[0]], x[idx[1]], x[idx[2]], (1, 8, 8), 17, "digits",
                 (y[idx[0]], y[idx[1]], y[idx[2]]))


def load_digits(
    *, center: bool = False, binarize: bool = False, dtype: torch.dtype = torch.float32
) -> Dataset:
    """scikit-learn's 1,797 8x8 digits in [0, 1], split 1257/270/270 (fixed seed)."""
    return _from_codes(digits_codes(), center, binarize, dtype)


def sample_images() -> np.ndarray:
    """scikit-learn's two sample photographs as grayscale [2, 427, 640] in [0, 1]."""
    from sklearn import datasets

    images = np.stack(datasets.load_sample_images().images).astype(np.float64)
    return images @ np.array(LUMINANCE) / 255.0


def sample_patches(
    images: np.ndarray, size: int, n: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """n random size x size crops of grayscale images [M, H, W].

    Returns the patches [n, size, size] and where each came from, rows of
    (image, top, left), so the crops can be checked against the image.
    """
    m, h, w = images.shape
    if not 1 <= size <= min(h, w):
        raise ValueError(f"patch size {size} does not fit in {h}x{w} images")
    rng = np.random.default_rng(seed)
    where = np.stack([rng.integers(0, m, n), rng.integers(0, h - size + 1, n),
                      rng.integers(0, w - size + 1, n)], axis=1)
    offsets = np.arange(size)
    rows = where[:, 1, None, None] + offsets[None, :, None]
    cols = where[:, 2, None, None] + offsets[None, None, :]
    return images[where[:, 0, None, None], rows, cols], where


def load_patches(
    *,
    size: int = 8,
    n_patches: int = 10_000,
    seed: int = 0,
    center: bool = False,
    binarize: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Dataset:
    """Random grayscale patches of natural photographs, split 70/15/15 (fixed seed)."""
    patches, _ = sample_patches(sample_images(), size, n_patches, seed)
    idx = split_indices(n_patches, _held_out(n_patches), _held_out(n_patches))
    return _finish("patches", (patches[idx[0]], patches[idx[1]], patches[idx[2]]),
                   (1, size, size), None, center, binarize, dtype)


def _read_upto(f: BinaryIO, limit: int, chunk: int = 1 << 20) -> bytes:
    """Read at most `limit` bytes in chunks, so memory follows the data actually there."""
    parts: list[bytes] = []
    got = 0
    while got < limit:
        part = f.read(min(chunk, limit - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
    return b"".join(parts)


def _describe(magic: int) -> str:
    kind = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "int16", 0x0C: "int32",
            0x0D: "float32", 0x0E: "float64"}.get((magic >> 8) & 0xFF, "unknown type")
    return f"0x{magic:08X} (IDX {kind}, {magic & 0xFF} dimensions)"


def read_idx(
    path: str | os.PathLike[str], *, magic: int | None = None, max_values: int = MAX_PIXELS
) -> np.ndarray:
    """Parse an IDX file (raw, or gzip detected by its signature) into a numpy array.

    The header is validated against `magic` (if given), against the budget `max_values`,
    and the declared size against the file's length before the payload is read: a bad
    header costs nothing. A gzip payload is read at most to the declared size + 1 byte.
    """
    p = Path(path)
    try:
        with open(p, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        f = cast(BinaryIO, gzip.open(p, "rb") if compressed else open(p, "rb"))
        with f:
            return _parse_idx(p, f, compressed, magic, max_values)
    except FileNotFoundError:
        raise DataError(f"{p}: no such file") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{p}: cannot read: {exc}") from None


def _parse_idx(
    p: Path, f: BinaryIO, compressed: bool, magic: int | None, max_values: int
) -> np.ndarray:
    head = f.read(4)
    if len(head) < 4:
        raise DataError(f"{p}: truncated: {len(head)} bytes, too short for an IDX header")
    (found,) = struct.unpack(">I", head)
    if head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
        raise DataError(f"{p}: not an IDX file: magic number 0x{found:08X}"
                        + (f", expected {_describe(magic)}" if magic is not None else ""))
    if magic is not None and found != magic:
        raise DataError(f"{p}: wrong magic number {_describe(found)}, "
                        f"expected {_describe(magic)}")
    ndim = head[3]
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise DataError(f"{p}: truncated: header declares {ndim} dimensions, "
                        f"file ends inside them")
    dims = struct.unpack(f">{ndim}I", raw_dims)
    dtype = np.dtype(_IDX_TYPES[head[2]])
    nbytes = math.prod(dims) * dtype.itemsize
    shape = " x ".join(map(str, dims))
    if math.prod(dims) > max_values:
        raise DataError(f"{p}: header declares {shape} = {math.prod(dims):,} values, more "
                        f"than the limit of {max_values:,} (the max_pixels budget): a "
                        "corrupt header, or raise the budget (--max-pixels)")
    if compressed:
        data: bytes | None = _read_upto(f, nbytes + 1)
        have = len(data)
        holds = f"decompressed payload has {have if have <= nbytes else 'more'}"
    else:
        data = None
        have = os.fstat(f.fileno()).st_size - 4 - 4 * ndim
        holds = f"file holds {have}"
    if have != nbytes:
        what = "truncated" if have < nbytes else "size mismatch"
        raise DataError(f"{p}: {what}: header declares {shape} values ({nbytes} bytes) "
                        f"but the {holds} bytes of data")
    if data is None:
        data = f.read(nbytes)
        if len(data) != nbytes:
            raise DataError(f"{p}: truncated while reading ({len(data)} of {nbytes} bytes)")
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(dims)


def _find_mnist(directory: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def load_mnist(
    path: str | os.PathLike[str],
    *,
    center: bool = False,
    binarize: bool = False,
    dtype: torch.dtype = torch.float32,
    valid_fraction: float = 0.1,
    max_pixels: int = MAX_PIXELS,
) -> Dataset:
    """MNIST from the user's IDX files in directory `path`; the last 10% of the training
    files is the validation split (the usual 54,000/6,000), t10k is the test split."""
    return _from_codes(mnist_codes(path, valid_fraction=valid_fraction,
                                   max_pixels=max_pixels), center, binarize, dtype)


def mnist_codes(
    path: str | os.PathLike[str], *, valid_fraction: float = 0.1, max_pixels: int = MAX_PIXELS
) -> Codes:
    """MNIST's grey levels (0..255, uint8) from the IDX files in directory `path`, at
    most `max_pixels` image values in all, split as `load_mnist` splits them."""
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory; expected one holding "
                        + ", ".join(MNIST_FILES) + " (optionally .gz)")
    found = {stem: _find_mnist(directory, stem) for stem in MNIST_FILES}
    missing = [stem for stem, p in found.items() if p is None]
    if missing:
        raise DataError(f"{directory}: missing MNIST file(s) {', '.join(missing)}; the "
                        "directory must hold " + ", ".join(MNIST_FILES) + " (optionally .gz)")
    files = [p for p in found.values() if p is not None]
    x_train = read_idx(files[0], magic=IDX_IMAGES, max_values=max_pixels)
    x_test = read_idx(files[2], magic=IDX_IMAGES, max_values=max(max_pixels - x_train.size, 0))
    y_train, y_test = (read_idx(files[i], magic=IDX_LABELS) for i in (1, 3))
    for x, y, fx, fy in ((x_train, y_train, files[0], files[1]),
                         (x_test, y_test, files[2], files[3])):
        if len(x) != len(y):
            raise DataError(f"{fx}: {len(x)} images but {fy} has {len(y)} labels")
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise DataError(f"{fx}: images of {x.shape[1]} x {x.shape[2]} pixels")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{files[2]}: images are {x_test.shape[1:]}, "
                        f"but {x_train.shape[1:]} in {files[0]}")
    if len(x_train) < MIN_TRAIN_IMAGES or len(x_test) == 0:
        which, count = (files[0], len(x_train)) if len(x_test) else (files[2], 0)
        raise DataError(f"{which}: {count} images; need at least {MIN_TRAIN_IMAGES} "
                        "training images (10% of them validate) and 1 test image")
    n_valid = int(round(len(x_train) * valid_fraction))
    if not 1 <= n_valid < len(x_train):
        raise DataError(f"valid_fraction {valid_fraction} leaves no training or no "
                        f"validation images of {len(x_train)}")
    cut = len(x_train) - n_valid
    flat = torch.from_numpy(np.ascontiguousarray(x_train)).reshape(len(x_train), -1)
    test = torch.from_numpy(np.ascontiguousarray(x_test)).reshape(len(x_test), -1)
    labels = [torch.from_numpy(y.astype(np.int64)) for y in (y_train[:cut], y_train[cut:],
                                                             y_test)]
    return Codes(flat[:cut], flat[cut:], test, (1, *x_train.shape[1:]), 256, "mnist",
                 (labels[0], labels[1], labels[2]))


LOADERS: dict[str, Callable[..., Dataset]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "patches": load_patches,
}


CODES: dict[str, Callable[..., Codes]] = {"digits": digits_codes, "mnist": mnist_codes}
"""The datasets of discrete grey levels, as `Codes`."""


def load(name: str, **options: Any) -> Dataset:
    """Load a dataset by name: `load("digits", center=True)`, `load("mnist", path=...)`."""
    loader = LOADERS.get(name.strip().lower())
    if loader is None:
        raise DataError(f"unknown dataset {name!r}; known datasets: {', '.join(LOADERS)}")
    return loader(**options)


def _sym(vectors: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return (vectors * values) @ vectors.T


class ZCA:
    """Zero-phase whitening z = (x - mean) W with W = C^{-1/2} symmetric.

    Of all whitening matrices the symmetric one changes the data least (it rotates back
    to pixel space after scaling), so whitened images still look like images. W comes
    from one `torch.linalg.eigh` of the covariance C or the precision P = C^{-1} (then
    W = P^{1/2}); nothing is inverted and no determinant is formed.
    """

    def __init__(self, mean: torch.Tensor, matrix: torch.Tensor, inverse: torch.Tensor):
        self.mean = mean
        self.matrix = matrix
        self.inverse = inverse

    @classmethod
    def fit(cls, x: torch.Tensor, eps: float = 0.0) -> ZCA:
        """Whitening of data x [N, D] by its sample covariance (divisor N - 1).

        `eps` is a ridge added to every eigenvalue: W = (C + eps I)^{-1/2}, so the whitened
        covariance has eigenvalues l / (l + eps) and low-variance directions (noise,
        constant pixels) are not blown up. eps = 0 gives exact identity covariance and
        needs full-rank data.
        """
        if x.ndim != 2 or len(x) < 2:
            raise DataError(f"ZCA.fit needs data [N, D] with N >= 2, got {tuple(x.shape)}")
        x64 = x.to(torch.float64)
        mean = x64.mean(dim=0)
        cov = torch.cov(x64.T).reshape(x.shape[1], x.shape[1])
        return cls.from_covariance(cov, mean, eps=eps).to(x.dtype)

    @classmethod
    def from_covariance(
        cls, covariance: torch.Tensor, mean: torch.Tensor | None = None, eps: float = 0.0
    ) -> ZCA:
        """Whitening for a given covariance C (e.g. a model's), W = (C + eps I)^{-1/2}."""
        values, vectors = cls._eigh(covariance, "covariance")
        values = values.clamp(min=0.0) + eps if eps > 0 else values
        cls._check_positive(values, "covariance", eps == 0)
        return cls._make(covariance, mean, vectors, values.rsqrt(), values.sqrt())

    @classmethod
    def from_precision(cls, precision: torch.Tensor, mean: torch.Tensor | None = None) -> ZCA:
        """Whitening for a given precision P = C^{-1}, such as the masked Gaussian's
        learned one: W = P^{1/2}, which whitens samples of N(mean, P^{-1})."""
        values, vectors = cls._eigh(precision, "precision")
        cls._check_positive(values, "precision", True)
        return cls._make(precision, mean, vectors, values.sqrt(), values.rsqrt())

    @staticmethod
    def _eigh(matrix: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise DataError(f"ZCA: the {what} must be a square matrix, got {tuple(matrix.shape)}")
        m = matrix.to(torch.float64)
        if not torch.allclose(m, m.T, rtol=1e-5, atol=1e-8 * float(m.abs().max())):
            raise DataError(f"ZCA: the {what} matrix is not symmetric")
        return torch.linalg.eigh((m + m.T) / 2)

    @staticmethod
    def _check_positive(values: torch.Tensor, what: str, exact: bool) -> None:
        floor = values.abs().max() * len(values) * torch.finfo(values.dtype).eps
        if bool((values <= floor).any()):
            hint = "; use eps > 0 to regularise" if what == "covariance" and exact else ""
            raise DataError(f"ZCA: the {what} is singular or not positive definite "
                            f"(smallest eigenvalue {float(values.min()):.3g}){hint}")

    @classmethod
    def _make(cls, like: torch.Tensor, mean: torch.Tensor | None, vectors: torch.Tensor,
              forward: torch.Tensor, backward: torch.Tensor) -> ZCA:
        m = torch.zeros(len(vectors), dtype=torch.float64) if mean is None else mean
        if m.numel() != len(vectors):
            raise DataError(f"mean has {m.numel()} entries, the matrix is {len(vectors)}^2")
        zca = cls(m.to(torch.float64).reshape(-1), _sym(vectors, forward),
                  _sym(vectors, backward))
        return zca.to(like.dtype)

    def to(self, dtype: torch.dtype) -> ZCA:
        """The same whitening with its tensors in another dtype."""
        return ZCA(self.mean.to(dtype), self.matrix.to(dtype), self.inverse.to(dtype))

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Whiten x [N, D]: (x - mean) W."""
        return (x - self.mean.to(x)) @ self.matrix.to(x)

    def inverse_transform(self, z: torch.Tensor) -> torch.Tensor:
        """Map whitened z [N, D] back to data space: z W^{-1} + mean."""
        return z @ self.inverse.to(z) + self.mean.to(z)
