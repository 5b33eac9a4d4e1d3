"""Training any model (a spec or a companion model) on a dataset, never losing work.

- Arguments are checked before any work (learning rate, epochs, batch size against the
  data, the estimator's options and their ranges) and the objective is tried once on two
  validation rows, so an infeasible run (2^64 hidden states to enumerate, sizes that do
  not fit in memory) fails at once with a message, not at its first step.
- Data: grey-level datasets (digits, MNIST) stay uint8 codes until each batch is formed.
  Energy models see dequantised values y = (k + u) / levels, the noise u fixed per pixel
  and seed (drawn from the row's own generator, so a row gets the same noise in any batch,
  on any rank, after any resume), standardised as z = (y - mean) / scale; the affine map
  is kept (`DataMap`), so likelihoods and samples are reported in data space. Binary
  companion models get the binarised digits, the others [0, 1] values.
- Determinism: a fixed seed fixes the initialisation, the batch order (a
  DistributedSampler seeded per epoch) and the estimator's noise.
- Checkpoints after every epoch (energydsl.train.checkpoints: plain data, read without running
  anything). `resume` continues from the last one; it may change the learning rate (applied
  to the optimiser and recorded per epoch) and the number of epochs, nothing else.
- Guards: a non-finite loss, a loss grown a million-fold past the first step's, a
  parameter beyond 1e6 in size, or a model that fails mid-run (a precision no longer
  positive definite) stop the run naming the epoch and step, keeping the last good
  checkpoint: the initial model is checkpointed before the first step, so there is one
  even when the first epoch fails.
- Distributed: under `torchrun --nproc_per_node=N` the loss is wrapped in
  DistributedDataParallel (gloo on CPU, nccl on GPU) and each rank takes its shard of
  every global batch, so N processes follow the single-process run with the same global
  batch size.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from energydsl.errors import TrainingError, UsageError
from energydsl.estimators import NAMES as OBJECTIVES
from energydsl.estimators import Objective, get, make_objective
from energydsl.estimators.nce import gaussian_noise
from energydsl.files import write_atomically
from energydsl.train import checkpoints
from energydsl.train import data as datasets

__all__ = ["TrainingError", "UsageError", "RunConfig", "DataMap", "Prepared", "train",
           "load_checkpoint", "model_from_checkpoint", "CHECKPOINT", "HISTORY"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
DIVERGENCE = 1e6  # |loss| beyond this many times the first step's (at least 1): diverged
PARAMETER_BOUND = 1e6  # |parameter| beyond this: diverged
RESUMABLE = ("epochs", "lr", "detect_anomaly")  # what a resumed run may change


@dataclass
class RunConfig:
    model: str  # a spec path (.edsl) or a companion model name (energydsl.models.MODELS)
    data: str = "digits"
    objective: str | None = None  # energy models: one of OBJECTIVES (default sm)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # spec dims / model arguments
    options: dict[str, float] = field(default_factory=dict)  # the objective's options
    detect_anomaly: bool = False
    max_pixels: int = datasets.MAX_PIXELS  # budget of IDX values read

    @property
    def is_spec(self) -> bool:
        return self.model.endswith(".edsl")

    def check(self) -> None:
        """Refuse values no run can use (UsageError naming the flag)."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "max_pixels": self.max_pixels}
        for name, value in positive.items():
            if not (isinstance(value, int) and value >= 1):
                raise UsageError(f"--{_flag(name)} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise UsageError(f"--lr must be a positive finite number, got {self.lr!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            raise UsageError(f"--seed must be an integer in [0, 2^31), got {self.seed!r}")
        if self.objective is not None and self.objective not in OBJECTIVES + ("loss",):
            raise UsageError(f"unknown objective {self.objective!r}; choose one of "
                             f"{', '.join(OBJECTIVES)}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | str) -> RunConfig:
        """A config stored in a checkpoint, its fields and types checked."""
        kinds = {"model": str, "data": str, "objective": (str, type(None)), "epochs": int,
                 "batch_size": int, "lr": (int, float), "seed": int, "sizes": dict,
                 "options": dict, "detect_anomaly": bool, "max_pixels": int}
        unknown = set(raw) - set(kinds)
        if unknown or "model" not in raw:
            what = f"unknown field '{sorted(unknown)[0]}'" if unknown else "no model"
            raise TrainingError(f"{path}: error: the checkpoint's config is not energydsl's "
                                f"({what})")
        for name, value in raw.items():
            if not isinstance(value, kinds[name]) or (isinstance(value, bool)
                                                      and kinds[name] is not bool):
                raise TrainingError(f"{path}: error: the checkpoint's config has "
                                    f"{name} = {value!r}")
        config = cls(**raw)
        try:
            config.check()
        except UsageError as exc:
            raise TrainingError(f"{path}: error: the checkpoint's config is invalid: "
                                f"{exc}") from None
        return config


def _flag(name: str) -> str:
    return name.replace("_", "-")


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class DataMap:
    """How model space maps to data space: data = model * scale + mean, and
    log p_data = log p_model - D log(scale) - log_jacobian (the dequantisation)."""

    shape: tuple[int, ...]
    mean: Tensor | None = None
    scale: float = 1.0
    log_jacobian: float = 0.0

    def to_data(self, x: Tensor) -> Tensor:
        return x * self.scale + (0 if self.mean is None else self.mean.to(x))

    def state(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "mean": self.mean, "scale": self.scale,
                "log_jacobian": self.log_jacobian}

    @classmethod
    def from_state(cls, state: dict[str, Any], path: Path | str) -> DataMap:
        try:
            shape = tuple(int(s) for s in state["shape"])
            mean, scale = state["mean"], float(state["scale"])
            log_jacobian = float(state["log_jacobian"])
        except (KeyError, TypeError, ValueError):
            raise TrainingError(f"{path}: error: the checkpoint's data map is malformed"
                                ) from None
        if not shape or min(shape) < 1 or not (0 < scale < math.inf) or (
                mean is not None and (not isinstance(mean, Tensor)
                                      or mean.numel() != math.prod(shape))):
            raise TrainingError(f"{path}: error: the checkpoint's data map is inconsistent")
        return cls(shape, mean, scale, log_jacobian)


@dataclass
class Prepared:
    """The splits as the model sees them. `train` holds the rows as stored (uint8 codes
    for grey-level data, floats otherwise); `encode(rows, indices)` turns a batch of them
    into model space. `valid` and `test` are in model space already."""

    train: Tensor
    valid: Tensor
    test: Tensor
    map: DataMap
    encode: Callable[[Tensor, Tensor], Tensor]

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


def _prepare_codes(codes: datasets.Codes, kind: str, seed: int) -> Prepared:
    levels = codes.levels
    if kind == "binary":
        def encode(stored: Tensor, rows: Tensor, split: int = 0) -> Tensor:
            return (codes.values(stored) > 0.5).float()
        data_map = DataMap(codes.shape)
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
    return Prepared(codes.train, valid, test, data_map, encode)


def prepare(config: RunConfig, kind: str) -> Prepared:
    """Load the data for a model of `kind` ('energy', 'binary' or 'continuous')."""
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
        raw = datasets.load(name, binarize=(kind == "binary"), dtype=torch.float64, **options)
    except datasets.DataError as exc:
        raise TrainingError(f"error: {exc}") from None
    if kind != "energy":
        return Prepared(raw.train.float(), raw.valid.float(), raw.test.float(),
                        DataMap(raw.shape), lambda stored, rows: stored)
    mean = raw.train.mean(dim=0)
    scale = float((raw.train - mean).std())
    train, valid, test = ((s - mean).div(scale).float() for s in (raw.train, raw.valid,
                                                                    raw.test))
    return Prepared(train, valid, test, DataMap(raw.shape, mean.float(), scale),
                    lambda stored, rows: stored)


def data_kind(config: RunConfig) -> str:
    if config.is_spec:
        return "energy"
    from energydsl.models import DATA_KINDS

    return DATA_KINDS.get(config.model, "continuous")


# ---------------------------------------------------------------- models


def spec_text(config: RunConfig) -> str:
    from energydsl.compiler.sources import read_spec

    return read_spec(config.model)


def _companion(config: RunConfig) -> nn.Module:
    from energydsl.models import MODELS

    factory = MODELS.get(config.model)
    if factory is None:
        close = difflib.get_close_matches(config.model, list(MODELS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown model {config.model!r}: give a spec (.edsl) or one of "
                         f"{', '.join(sorted(MODELS))}{hint}")
    try:
        return factory(**config.sizes)
    except (TypeError, ValueError) as exc:
        import inspect

        takes = ", ".join(p for p in inspect.signature(factory).parameters if p != "self")
        raise UsageError(f"{config.model}: cannot build it with --size "
                         f"{', '.join(f'{k}={v}' for k, v in config.sizes.items())}: {exc} "
                         f"(it takes {takes or 'no arguments'})") from None


def build_model(config: RunConfig, shape: tuple[int, ...], text: str | None = None
                ) -> nn.Module:
    """The model, sized for the data: a spec's visible dimension (or its height and
    width when the dimension is derived from them) is set from the data's shape."""
    torch.manual_seed(config.seed)
    if not config.is_spec:
        return _companion(config)
    from energydsl.api import class_of, compile_cached

    compiled = compile_cached(text if text is not None else spec_text(config), config.model)
    checked = compiled.derivation.model.symbolic.checked
    dims = checked.dims
    visible = dims[checked.visible.shape[0]]
    sizes: dict[str, int] = {}
    size = math.prod(shape)
    if visible.derived_from is None:
        sizes[visible.name] = size
    elif {"height", "width"} <= set(dims):
        sizes["height"], sizes["width"] = shape[-2], shape[-1]
    problem = checked.size_error(config.sizes)
    if problem:
        raise UsageError(f"{config.model}: error: --size: {problem}")
    sizes.update(config.sizes)
    model = class_of(compiled)(**sizes)
    if model.visible_size != size:
        raise UsageError(f"{config.model}: error: the model's visible size "
                         f"{model.visible_size} does not match the data ({size})")
    return model


def build_objective(config: RunConfig, model: nn.Module, prepared: Prepared
                    ) -> Objective | None:
    """The estimator for an energy model (None: the companion model's own loss)."""
    if not config.is_spec:
        if config.objective not in (None, "loss") or config.options:
            raise UsageError(f"{config.model} trains with its own loss; --objective and "
                             "--option apply to specs")
        return None
    name = config.objective or "sm"
    allowed = get(name).options()
    options: dict[str, object] = {}
    for key, value in config.options.items():
        if key not in allowed:
            takes = ", ".join(allowed) or "no options"
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"objective {name!r} has no option {key!r}{hint}; it takes "
                             f"{takes}")
        options[key] = _option_value(name, key, value, allowed[key])
    if name == "nce":
        noise = gaussian_noise(prepared.train_values().double())
        options["noise"] = torch.distributions.MultivariateNormal(
            noise.mean.float(), noise.covariance_matrix.float())
    try:
        return make_objective(model, name, **options)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{config.model}: error: {exc}") from None


def _option_value(objective: str, key: str, value: float, kind: type) -> int | float:
    """An option's value checked: finite, positive (fast_decay in [0, 1)), an integer
    where the estimator counts."""
    if key == "fast_decay":
        valid = 0 <= value < 1
        what = "in [0, 1)"
    else:
        valid = 0 < value < math.inf
        what = "a positive integer" if kind is int else "a positive number"
    if kind is int:
        valid = valid and float(value).is_integer()
    if not valid:
        raise UsageError(f"--option {key} of objective {objective!r} must be {what}, "
                         f"got {value!r}")
    return int(value) if kind is int else float(value)


def _probe(config: RunConfig, model: nn.Module, prepared: Prepared) -> None:
    """Try the objective once on two validation rows, leaving the model, the RNG and the
    real objective's state untouched: what cannot run fails here, with its reason."""
    with torch.random.fork_rng(devices=[]):
        try:
            objective = build_objective(config, model, prepared)
            loss = model.loss if objective is None else objective.loss
            loss(prepared.valid[:2])
        except UsageError:
            raise
        except (ValueError, TypeError, RuntimeError, MemoryError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "allocate" in detail or isinstance(exc, MemoryError):
                sizes = ", ".join(f"{k}={v}" for k, v in config.sizes.items()) or "defaults"
                detail = f"it does not fit in memory at these sizes ({sizes}): {detail}"
            raise UsageError(f"{config.model}: error: objective "
                             f"{config.objective or 'sm'!r} cannot run on this model: "
                             f"{detail}") from None


# ---------------------------------------------------------------- checkpoints


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint read safely and validated (energydsl.train.checkpoints)."""
    return checkpoints.load(path)


def _load_weights(model: nn.Module, state: dict, path: Path | str = "checkpoint") -> None:
    """load_state_dict, with a clear error for weights this module cannot hold (another
    model's checkpoint, or one from a version that stored a parameter differently)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise TrainingError(f"{path}: error: the checkpoint's weights do not fit this model "
                            f"({detail}); it was made for another model or by another "
                            "version of energydsl") from None


def model_from_checkpoint(checkpoint: dict, path: Path | str = "checkpoint"
                          ) -> tuple[nn.Module, RunConfig, DataMap]:
    """Rebuild the trained model from a validated checkpoint (its spec text, whose hash
    was checked on loading, not the file on disk)."""
    config = RunConfig.from_dict(checkpoint["config"], path)
    data_map = DataMap.from_state(checkpoint["data"], path)
    text = checkpoint.get("spec_text")
    if config.is_spec != (text is not None):
        raise TrainingError(f"{path}: error: the checkpoint's config and spec text disagree")
    try:
        model = build_model(config, data_map.shape, text)
    except UsageError as exc:
        raise TrainingError(f"{path}: error: the checkpoint's model cannot be built: "
                            f"{exc}") from None
    _load_weights(model, checkpoint["model"], path)
    return model, config, data_map


def resumed_config(out: Path, overrides: dict[str, Any]) -> RunConfig | None:
    """The config of the run in `out` with the given fields replaced, or None when there
    is no checkpoint to resume (train() then refuses the changes it cannot make)."""
    path = out / CHECKPOINT
    if not path.exists():
        return None
    stored = RunConfig.from_dict(load_checkpoint(path)["config"], path)
    return dataclasses.replace(stored, **overrides)


def _refuse_changes(config: RunConfig, stored: dict[str, Any], path: Path) -> None:
    for name, value in asdict(config).items():
        if name in RESUMABLE or stored.get(name) == value:
            continue
        raise UsageError(f"{path}: error: this run has {name} = {stored.get(name)!r}; a "
                         f"resumed run keeps it (--{_flag(name)} {value!r} asked for "
                         "another): start a new run with another --out")


# ---------------------------------------------------------------- the loop


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # per epoch: losses, lr, time, terms
    steps: list[float] = field(default_factory=list)  # every training loss


def _distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


class _LossModule(nn.Module):
    """The objective as a forward pass, so DistributedDataParallel can average it."""

    def __init__(self, model: nn.Module, loss: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: Tensor) -> Tensor:
        return self.loss(x)


def validation_loss(model: nn.Module, objective: Objective | None, x: Tensor,
                    seed: int) -> float:
    """The held-out criterion, with the estimator's noise fixed by `seed`: the objective
    itself, except for the CD family (whose chains it must not move), measured by the
    exact sm_loss."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if objective is None:
            with torch.no_grad():
                return float(model.loss(x))
        if objective.name in ("cd", "pcd", "fpcd"):
            return float(model.sm_loss(x).detach())
        return float(objective.loss(x).detach())


class _Guards:
    """Stops a run going wrong: a non-finite loss, a loss grown DIVERGENCE-fold past the
    run's first (at least 1 in size), a parameter beyond PARAMETER_BOUND."""

    def __init__(self, history: History, path: Path) -> None:
        self.history, self.path = history, path

    def _stop(self, what: str, epoch: int) -> TrainingError:
        return TrainingError(f"{what} at epoch {epoch + 1}, step {len(self.history.steps) + 1}"
                             f"; the last good checkpoint is {self.path} (try a smaller --lr, "
                             "or --detect-anomaly to find the operation)")

    def failed(self, exc: Exception, epoch: int) -> TrainingError:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return self._stop(f"the model failed ({message})", epoch)

    def check_loss(self, loss: float, epoch: int) -> None:
        if not math.isfinite(loss):
            raise self._stop(f"non-finite loss ({loss})", epoch)
        scale = max(abs(self.history.steps[0]), 1.0) if self.history.steps else math.inf
        if abs(loss) > DIVERGENCE * scale:
            raise self._stop(f"diverged: loss {loss:.4g} is more than {DIVERGENCE:.0e} times "
                             f"the first step's ({scale:.4g})", epoch)

    def check_parameters(self, model: nn.Module, epoch: int) -> None:
        largest = max((float(p.detach().abs().max()) for p in model.parameters()
                       if p.numel()), default=0.0)
        if not largest <= PARAMETER_BOUND:
            name = next(n for n, p in model.named_parameters() if p.numel() and not
                        float(p.detach().abs().max()) <= PARAMETER_BOUND)
            raise self._stop(f"diverged: parameter {name} reached {largest:.7g} in size "
                             f"(the bound is {PARAMETER_BOUND:.0e})", epoch)


def _prepare_out(out: Path, resume: bool, overwrite: bool) -> None:
    """The run directory exists and is writable; another run in it is not replaced
    unless asked."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: error: is a file, not a run directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {out}: error: cannot create the run directory: "
                         f"{exc.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: error: the run directory is not writable")
    if (out / CHECKPOINT).exists() and not (resume or overwrite):
        raise UsageError(f"--out {out}: error: already holds a run ({CHECKPOINT}); continue "
                         "it with --resume, replace it with --overwrite, or choose another "
                         "--out")


def train(config: RunConfig, out: Path, resume: bool = False,
          log: Callable[[str], None] = print, progress: bool | None = None,
          overwrite: bool = False) -> History:
    """Train `config` into the directory `out` (checkpoint.pt, history.json)."""
    config.check()
    out = Path(out)
    _prepare_out(out, resume, overwrite)
    rank, world = _distributed()
    text = spec_text(config) if config.is_spec else None
    prepared = prepare(config, data_kind(config))
    if config.batch_size > len(prepared.train):
        raise UsageError(f"--batch-size {config.batch_size} is larger than the "
                         f"{len(prepared.train)} training examples")
    model = build_model(config, prepared.shape, text)
    if config.is_spec and not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"{config.model}: error: the model has no parameters to train")
    _probe(config, model, prepared)
    objective = build_objective(config, model, prepared)
    is_gan = hasattr(model, "train_step")
    if is_gan:
        optimisers = [torch.optim.Adam(model.discriminator_net.parameters(), lr=config.lr,
                                       betas=(0.5, 0.999)),
                      torch.optim.Adam(model.generator_net.parameters(), lr=config.lr,
                                       betas=(0.5, 0.999))]
    else:
        optimisers = [torch.optim.Adam(model.parameters(), lr=config.lr)]
    history, start = History(), 0
    path = out / CHECKPOINT
    digest = None if text is None else checkpoints.spec_hash(text)
    if resume and path.exists():
        checkpoint = load_checkpoint(path)
        if checkpoint["spec_hash"] != digest or checkpoint["config"].get("model") != config.model:
            raise UsageError(f"{path}: error: the checkpoint was made from a different "
                             f"model or spec (hash {str(checkpoint['spec_hash'])[:12]}, this "
                             f"spec {str(digest)[:12]}); use another --out")
        _refuse_changes(config, checkpoint["config"], path)
        _load_weights(model, checkpoint["model"], path)
        try:
            for optimiser, state in zip(optimisers, checkpoint["optimisers"], strict=True):
                optimiser.load_state_dict(state)
                for group in optimiser.param_groups:  # the lr asked for now, not the saved one
                    group["lr"] = config.lr
            if objective is not None:
                objective.load_state_dict(checkpoint["objective"])
            torch.set_rng_state(checkpoint["rng"])
        except (ValueError, RuntimeError, TypeError) as exc:
            raise TrainingError(f"{path}: error: the checkpoint's training state does not "
                                f"fit this run ({exc})") from None
        history = History(checkpoint["history"]["epochs"], checkpoint["history"]["steps"])
        start = checkpoint["epoch"] + 1
        if start >= config.epochs:
            log(f"{config.model}: the run already has {start} epochs; nothing to do (pass "
                f"--epochs N with N > {start} to continue)")
            return history
        log(f"resuming {config.model} from epoch {start + 1} ({path})")
    elif resume:
        log(f"no checkpoint in {out}: starting afresh")

    loss_fn = model.loss if objective is None else objective.loss
    wrapped: nn.Module = _LossModule(model, loss_fn)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=True)
    dataset = torch.utils.data.TensorDataset(prepared.train, torch.arange(len(prepared.train)))
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=config.seed,
                                                  drop_last=True)
    per_rank = max(1, config.batch_size // world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler,
                                         drop_last=True)
    guards = _Guards(history, path)

    def save(epoch: int) -> None:
        """Checkpoint the state after `epoch` (-1: the initial model) and the history."""
        if rank != 0:
            return
        checkpoints.save({
            "config": asdict(config), "spec_hash": digest, "spec_text": text,
            "epoch": epoch, "model": model.state_dict(),
            "optimisers": [o.state_dict() for o in optimisers],
            "objective": {} if objective is None else objective.state_dict(),
            "history": asdict(history), "rng": torch.get_rng_state(),
            "data": prepared.map.state(),
        }, path)
        write_atomically(out / HISTORY, json.dumps(asdict(history), indent=1))

    if start == 0:
        save(-1)
    from tqdm import tqdm

    for epoch in range(start, config.epochs):
        sampler.set_epoch(epoch)
        began, losses = time.perf_counter(), []
        quiet = rank != 0 or progress is False
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=True if quiet else None)  # None: a bar only on a terminal
        for stored, rows in bar:
            x = prepared.encode(stored, rows)
            try:
                with torch.autograd.set_detect_anomaly(config.detect_anomaly):
                    if is_gan:
                        parts = model.train_step(x, *optimisers)
                        loss = torch.tensor(sum(parts.values()))
                    else:
                        for optimiser in optimisers:
                            optimiser.zero_grad(set_to_none=True)
                        loss = wrapped(x)
                        if torch.isfinite(loss):
                            loss.backward()
            except (ValueError, torch.linalg.LinAlgError) as exc:
                raise guards.failed(exc, epoch) from None
            value = float(loss.detach())
            guards.check_loss(value, epoch)
            if not is_gan:
                for optimiser in optimisers:
                    optimiser.step()
                if objective is not None:
                    objective.after_step()
            guards.check_parameters(model, epoch)
            history.steps.append(value)
            losses.append(value)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4g}")
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1),
                  "valid_loss": validation_loss(model, objective, prepared.valid,
                                                config.seed),
                  "lr": config.lr, "seconds": time.perf_counter() - began}
        if hasattr(model, "sm_terms"):
            record["sm_terms"] = {k: float(v.detach())
                                 for k, v in model.sm_terms(prepared.valid).items()}
        history.epochs.append(record)
        if rank == 0:
            log(f"epoch {epoch + 1}/{config.epochs}: train {record['train_loss']:.5g}, "
                f"valid {record['valid_loss']:.5g} ({record['seconds']:.1f} s)")
        save(epoch)
    return history
