"""The data as a model sees it, and the map back to data space.

Grey-level datasets (digits, MNIST) stay uint8 codes until each batch is formed. Energy
models see dequantised values y = (k + u) / levels, the noise u fixed per pixel and seed
(drawn from the row's own generator, so a row gets the same noise in any batch, on any
rank, after any resume), standardised as z = (y - mean) / scale; the affine map is kept
(`DataMap`), so likelihoods and samples are reported in data space. Binary companion
models and specs of binary data get the binarised digits (pixels above 1/2 are 1), specs
of spin data the same as -1/+1; the other companion models [0, 1] values. Natural-image
patches for energy models are ZCA-whitened (fitted on the training split, ridge
ZCA_EPSILON, applied to every split), the whitening kept in the DataMap.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from energydsl.errors import TrainingError, UsageError
from energydsl.train import data as datasets
from energydsl.train.config import RunConfig


@dataclass(frozen=True)
class DataMap:
    """How model space maps to data space: data = (model @ matrix) * scale + mean, and
    log p_data = log p_model - log|det matrix| - D log(scale) - log_jacobian (the
    dequantisation). `matrix` is None (the identity) except for ZCA-whitened data, where
    it is the inverse whitening W^{-1} (symmetric), so model = (data - mean) W."""

    shape: tuple[int, ...]
    mean: Tensor | None = None
    scale: float = 1.0
    log_jacobian: float = 0.0
    matrix: Tensor | None = None

    def to_data(self, x: Tensor) -> Tensor:
        if self.matrix is not None:
            x = x @ self.matrix.to(x)
        return x * self.scale + (0 if self.mean is None else self.mean.to(x))

    def log_volume(self) -> float:
        """log|det d data / d model| = D log(scale) + log|det matrix|: subtract it (and
        log_jacobian) from a model-space log-density to get the data-space one."""
        volume = math.prod(self.shape) * math.log(self.scale)
        if self.matrix is not None:
            volume += float(torch.linalg.slogdet(self.matrix.double())[1])
        return volume

    @property
    def whitening(self) -> Tensor | None:
        """W, the map from centred data to model space (None: no whitening)."""
        return None if self.matrix is None else torch.linalg.inv(self.matrix.double())

    def state(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "mean": self.mean, "scale": self.scale,
                "log_jacobian": self.log_jacobian, "matrix": self.matrix}

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path | str) -> DataMap:
        try:
            shape = tuple(int(s) for s in state["shape"])
            mean, scale = state["mean"], float(state["scale"])
            log_jacobian = float(state["log_jacobian"])
            matrix = state.get("matrix")  # absent in checkpoints before ZCA whitening
        except (KeyError, TypeError, ValueError, AttributeError):
            raise TrainingError(f"{path}: error: the checkpoint's data map is malformed"
                                ) from None
        size = math.prod(shape) if shape else 0
        if not shape or min(shape) < 1 or not (0 < scale < math.inf) or (
                mean is not None and (not isinstance(mean, Tensor)
                                      or mean.numel() != size)) or (
                matrix is not None and (not isinstance(matrix, Tensor)
                                        or tuple(matrix.shape) != (size, size))):
            raise TrainingError(f"{path}: error: the checkpoint's data map is inconsistent")
        return cls(shape, mean, scale, log_jacobian, matrix)


@dataclass
class Prepared:
    """The splits as the model sees them. `train` holds the rows as stored (uint8 codes
    for grey-level data, floats otherwise); `encode(rows, indices)` turns a batch of them
    into model space. `valid` and `test` are in model space already. `labels` are the
    splits' integer class labels (train, valid, test), None for a dataset without them;
    the training labels stay on the CPU with the stored rows."""

    train: Tensor
    valid: Tensor
    test: Tensor
    map: DataMap
    encode: Callable[[Tensor, Tensor], Tensor]
    labels: tuple[Tensor, Tensor, Tensor] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.map.shape

    def train_values(self, chunk: int = 4096) -> Tensor:
        """The whole training split in model space (float32), built a block at a time."""
        rows = torch.arange(len(self.train))
        return torch.cat([self.encode(self.train[s:s + chunk], rows[s:s + chunk])
                          for s in range(0, len(self.train), chunk)])


def _uniform_rows(rows: Tensor, dim: int, seed: int, split: int) -> Tensor:
    """Dequantisation noise u ~ U(0, 1)^dim for each row, fixed by (seed, split, row)."""
    generator = torch.Generator()
    base = ((seed * 4 + split) % 2**30) << 32
    out = torch.empty(len(rows), dim, dtype=torch.float64)
    for k, row in enumerate(rows.tolist()):
        generator.manual_seed(base + row)
        out[k] = torch.rand(dim, generator=generator, dtype=torch.float64)
    return out


def _column_moments(codes: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
    """Mean and (population) variance of each column of uint8 codes, in float64."""
    total = torch.zeros(codes.shape[1], dtype=torch.float64)
    squares = torch.zeros(codes.shape[1], dtype=torch.float64)
    for start in range(0, len(codes), chunk):
        block = codes[start:start + chunk].to(torch.float64)
        total += block.sum(dim=0)
        squares += block.square().sum(dim=0)
    mean = total / len(codes)
    return mean, (squares / len(codes) - mean.square()).clamp_min(0)


ZCA_EPSILON = 1e-3
"""Ridge of the patches' ZCA whitening, relative to the mean pixel variance of the training
split: W = (C + eps I)^{-1/2} with eps = ZCA_EPSILON * tr(C) / D, so directions of variance
far below eps (quantisation noise) are not blown up while the rest come out at unit variance.
"""

DISCRETE_KINDS = ("binary", "spin")
"""Data kinds of two-valued entries, named as the domains whose values they take."""


def _two_valued(kind: str) -> tuple[int, int]:
    from energydsl.compiler.domains import DOMAINS

    return DOMAINS[kind].low_high


def _relabel(bits: Tensor, kind: str) -> Tensor:
    """Binarised pixels (0/1) as the values of `kind`: 0/1 as they are, or -1/+1."""
    low, high = _two_valued(kind)
    return low + (high - low) * bits


def _discrete_map(shape: tuple[int, ...], kind: str) -> DataMap:
    """Values back to 0/1 pixels, data = (v - low) / (high - low). Relabelling discrete
    values leaves their probabilities as they are: log_jacobian cancels the -D log(scale)
    a density would get."""
    low, high = _two_valued(kind)
    if (low, high) == (0, 1):
        return DataMap(shape)
    scale = 1 / (high - low)
    return DataMap(shape, torch.full((math.prod(shape),), -low * scale), scale,
                   -math.prod(shape) * math.log(scale))


def _prepare_codes(codes: datasets.Codes, kind: str, seed: int) -> Prepared:
    levels = codes.levels
    if kind in DISCRETE_KINDS:
        def encode(stored: Tensor, rows: Tensor, split: int = 0) -> Tensor:
            return _relabel((codes.values(stored) > 0.5).float(), kind)
        data_map = _discrete_map(codes.shape, kind)
    elif kind == "continuous":
        def encode(stored: Tensor, rows: Tensor, split: int = 0) -> Tensor:
            return codes.values(stored)
        data_map = DataMap(codes.shape)
    else:  # dequantised and standardised: E[u] = 1/2, Var[u] = 1/12
        mean_codes, variance = _column_moments(codes.train)
        mean = (mean_codes + 0.5) / levels
        scale = float(((variance + 1 / 12).mean()).sqrt()) / levels

        def encode(stored: Tensor, rows: Tensor, split: int = 0) -> Tensor:
            noise = _uniform_rows(rows, stored.shape[1], seed, split)
            values = (stored.to(torch.float64) + noise) / levels
            return ((values - mean) / scale).float()
        dim = codes.train.shape[1]
        data_map = DataMap(codes.shape, mean.float(), scale, dim * math.log(levels))
    valid, test = (encode(split, torch.arange(len(split)), number)
                   for number, split in ((1, codes.valid), (2, codes.test)))
    return Prepared(codes.train, valid, test, data_map, encode, codes.labels)


def prepare(config: RunConfig, kind: str) -> Prepared:
    """Load the data for a model of `kind` ('energy', 'binary', 'spin' or
    'continuous'); a conditional run's labels are checked against its classes."""
    prepared = _prepare(config, kind)
    if config.conditional:
        classes = config.classes
        if prepared.labels is None:
            raise UsageError(f"--conditional: error: dataset {config.data} has no labels")
        for split, labels in zip(("training", "validation", "test"), prepared.labels,
                                 strict=True):
            if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < classes):
                raise TrainingError(f"error: the {config.data} {split} labels run from "
                                    f"{int(labels.min())} to {int(labels.max())}, not "
                                    f"within 0..{classes - 1}")
    return prepared


def _prepare(config: RunConfig, kind: str) -> Prepared:
    """prepare()'s work: the splits as a model of `kind` sees them, with any labels."""
    name, _, path = config.data.partition(":")
    if name not in datasets.LOADERS:
        raise UsageError(f"unknown dataset {config.data!r}; use digits, patches or "
                         "mnist:DIR")
    if name == "mnist" and not path:
        raise UsageError("--data mnist needs the directory of the IDX files: --data mnist:DIR")
    options: dict[str, object] = {"path": path, "max_pixels": config.max_pixels} if path else {}
    try:
        if name in datasets.CODES:
            return _prepare_codes(datasets.CODES[name](**options), kind, config.seed)
        raw = datasets.load(name, binarize=kind in DISCRETE_KINDS, dtype=torch.float64,
                            **options)
    except datasets.DataError as exc:
        raise TrainingError(f"error: {exc}") from None
    labels = None
    if raw.train_labels is not None and raw.valid_labels is not None \
            and raw.test_labels is not None:
        labels = (raw.train_labels, raw.valid_labels, raw.test_labels)
    if kind in DISCRETE_KINDS:
        train, valid, test = (_relabel(s.float(), kind) for s in (raw.train, raw.valid,
                                                                    raw.test))
        return Prepared(train, valid, test, _discrete_map(raw.shape, kind),
                        lambda stored, rows: stored, labels)
    if kind != "energy":
        return Prepared(raw.train.float(), raw.valid.float(), raw.test.float(),
                        DataMap(raw.shape), lambda stored, rows: stored, labels)
    if name == "patches":  # ZCA-whitened, fitted on the training split
        zca = datasets.ZCA.fit(raw.train, eps=ZCA_EPSILON * float(raw.train.var(dim=0).mean()))
        train, valid, test = (zca.transform(s).float() for s in (raw.train, raw.valid,
                                                                  raw.test))
        return Prepared(train, valid, test,
                        DataMap(raw.shape, zca.mean.float(), 1.0, 0.0, zca.inverse.float()),
                        lambda stored, rows: stored)
    mean = raw.train.mean(dim=0)
    scale = float((raw.train - mean).std())
    train, valid, test = ((s - mean).div(scale).float() for s in (raw.train, raw.valid,
                                                                    raw.test))
    return Prepared(train, valid, test, DataMap(raw.shape, mean.float(), scale),
                    lambda stored, rows: stored)


def data_kind(config: RunConfig, text: str | None = None) -> str:
    """How the model sees the data: a spec of real data 'energy' (dequantised and
    standardised), a spec of binary or spin data its domain's name (the binarised data
    as 0/1 or -1/+1), read from the compiled class; a companion model its own kind.
    `text` is the spec's text (default: read from config.model)."""
    if config.is_spec:
        from energydsl import catalogue
        from energydsl.api import checked_spec
        from energydsl.compiler.domains import DOMAINS
        from energydsl.compiler.sources import read_spec

        spec = text if text is not None else read_spec(catalogue.resolve(config.model))
        domain = DOMAINS[checked_spec(spec).visible.domain]
        return domain.name if domain.discrete else "energy"
    from energydsl.models import DATA_KINDS, create

    try:  # the instance's kind: arguments may change it (gated_pixelcnn's levels=17)
        return str(getattr(create(config.model, **config.sizes), "data_kind", "continuous"))
    except (KeyError, TypeError, ValueError):  # a wrong size: building the model says so
        return DATA_KINDS.get(config.model, "continuous")


def on_device(prepared: Prepared, device: torch.device) -> Prepared:
    """The splits for a model on `device`: valid and test moved there, training batches
    encoded on the CPU (where the stored rows stay) and then moved."""
    if device.type == "cpu":
        return prepared
    encode = prepared.encode

    def encode_there(stored: Tensor, rows: Tensor, *rest) -> Tensor:  # noqa: ANN002
        return encode(stored, rows, *rest).to(device)

    labels = prepared.labels
    if labels is not None:
        labels = (labels[0], labels[1].to(device), labels[2].to(device))
    return Prepared(prepared.train, prepared.valid.to(device), prepared.test.to(device),
                    prepared.map, encode_there, labels)
