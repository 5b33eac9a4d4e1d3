"""Training any model (a spec or a companion model) on a dataset, never losing work.

- Data: the dataset's splits, prepared for the model's kind. Energy models train on
  dequantised digits y = (k + u) / 17 (u fixed per pixel and seed) standardised as
  z = (y - mean) / scale; the affine map is kept so that likelihoods and samples can be
  reported in data space. Binary companion models get the binarised digits, the others
  [0, 1] values (flows dequantise themselves).
- Determinism: a fixed seed fixes the initialisation, the batch order (a
  DistributedSampler seeded per epoch) and the estimator's noise.
- Checkpoints after every epoch, written atomically (temporary file, fsync, rename) with
  the spec's hash and text; `resume` continues from the last one; a checkpoint of
  another spec is refused. A non-finite loss stops the run naming the step, keeping the
  last good checkpoint.
- Distributed: under `torchrun --nproc_per_node=N` the loss is wrapped in
  DistributedDataParallel (gloo on CPU, nccl on GPU) and each rank takes its shard of
  every global batch, so N processes follow the single-process run with the same global
  batch size.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from . import data as datasets
from .estimators import OBJECTIVES, Objective, gaussian_noise, make_objective

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
# Grey levels of the discrete datasets (dequantised for continuous densities); image
# patches are already continuous (a weighted sum of colour channels).
LEVELS = {"digits": 17, "mnist": 256}


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, wrong checkpoint): the CLI prints it."""


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

    @property
    def is_spec(self) -> bool:
        return self.model.endswith(".edsl")


@dataclass
class Prepared:
    """The splits as the model sees them, and the affine map back to data space."""

    train: Tensor
    valid: Tensor
    test: Tensor
    shape: tuple[int, ...]
    mean: Tensor | None = None  # data = model_space * scale + mean
    scale: float = 1.0
    log_jacobian: float = 0.0  # log p_data = log p_model - D log(scale) - this

    def to_data(self, x: Tensor) -> Tensor:
        return x * self.scale + (0 if self.mean is None else self.mean)


def prepare(config: RunConfig, kind: str) -> Prepared:
    """Load the data for a model of `kind` ('energy', 'binary' or 'continuous')."""
    name, _, path = config.data.partition(":")
    options: dict[str, object] = {"path": path} if path else {}
    if name == "mnist" and not path:
        raise TrainingError("--data mnist needs the directory of the IDX files: "
                            "--data mnist:DIR")
    try:
        raw = datasets.load(name, binarize=(kind == "binary"), dtype=torch.float64, **options)
    except datasets.DataError as exc:
        raise TrainingError(str(exc)) from None
    if kind != "energy":
        return Prepared(raw.train.float(), raw.valid.float(), raw.test.float(), raw.shape)
    generator = torch.Generator().manual_seed(config.seed + 7919)
    levels = LEVELS.get(name)
    splits = []
    for split in (raw.train, raw.valid, raw.test):
        if levels is None:
            splits.append(split)
            continue
        noise = torch.rand(split.shape, generator=generator, dtype=torch.float64)
        splits.append((torch.round(split * (levels - 1)) + noise) / levels)
    mean = splits[0].mean(dim=0)
    scale = float((splits[0] - mean).std())
    train, valid, test = ((s - mean) / scale for s in splits)
    dim = train.shape[1]
    return Prepared(train.float(), valid.float(), test.float(), raw.shape, mean.float(), scale,
                    0.0 if levels is None else dim * math.log(levels))


# ---------------------------------------------------------------- models


def spec_text(config: RunConfig) -> str:
    try:
        return Path(config.model).read_text(encoding="utf-8")
    except OSError as exc:
        raise TrainingError(f"{config.model}: error: cannot read the spec: {exc.strerror}"
                            ) from None


def build_model(config: RunConfig, shape: tuple[int, ...], text: str | None = None
                ) -> nn.Module:
    """The model, sized for the data: a spec's visible dimension (or its height and
    width when the dimension is derived from them) is set from the data's shape."""
    torch.manual_seed(config.seed)
    if not config.is_spec:
        from .models import MODELS

        if config.model not in MODELS:
            raise TrainingError(f"unknown model {config.model!r}: give a spec (.edsl) or one "
                                f"of {', '.join(sorted(MODELS))}")
        return MODELS[config.model](**config.sizes)
    from .api import class_of, compile_cached

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
    unknown = [name for name in config.sizes if name not in dims]
    if unknown:
        raise TrainingError(f"{config.model}: error: no dimension named '{unknown[0]}'")
    sizes.update(config.sizes)
    sizes = {k: v for k, v in sizes.items() if dims[k].derived_from is None}
    model = class_of(compiled)(**sizes)
    if model.visible_size != size:
        raise TrainingError(f"{config.model}: error: the model's visible size "
                            f"{model.visible_size} does not match the data ({size})")
    return model


def build_objective(config: RunConfig, model: nn.Module, train: Tensor) -> Objective | None:
    """The estimator for an energy model (None: the companion model's own loss)."""
    if not config.is_spec:
        if config.objective not in (None, "loss"):
            raise TrainingError(f"{config.model} trains with its own loss; "
                                f"--objective {config.objective} applies to specs")
        return None
    name = config.objective or "sm"
    if name not in OBJECTIVES:
        raise TrainingError(f"unknown objective {name!r}; choose one of {', '.join(OBJECTIVES)}")
    options: dict[str, object] = dict(config.options)
    if name == "nce" and "noise" not in options:
        options["noise"] = gaussian_noise(train.double())
        noise = options["noise"]
        options["noise"] = torch.distributions.MultivariateNormal(
            noise.mean.float(), noise.covariance_matrix.float())
    for key in ("k", "n_projections", "n_chains"):
        if key in options:
            options[key] = int(options[key])
    try:
        return make_objective(model, name, **options)
    except (TypeError, ValueError) as exc:
        raise TrainingError(f"{config.model}: error: {exc}") from None


# ---------------------------------------------------------------- checkpoints


def save_atomically(obj: object, path: Path) -> None:
    """torch.save to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise TrainingError(f"{path}: error: no checkpoint here") from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem
        raise TrainingError(f"{path}: error: not a readable checkpoint ({exc})") from None


def _load_weights(model: nn.Module, state: dict, path: Path | str = "checkpoint") -> None:
    """load_state_dict, with a clear error for weights this module cannot hold (a
    checkpoint from an energydsl version that stored a parameter in another shape)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = str(exc).strip().splitlines()[-1].strip()
        raise TrainingError(f"{path}: error: the checkpoint's weights do not fit this model "
                            f"({detail}); "
                            "it was probably made by another version of energydsl: retrain "
                            "with another --out") from None


def model_from_checkpoint(checkpoint: dict, path: Path | str = "checkpoint"
                          ) -> tuple[nn.Module, RunConfig, Prepared]:
    """Rebuild the trained model (from the spec text stored in the checkpoint at `path`)."""
    config = RunConfig(**checkpoint["config"])
    prepared = checkpoint["prepared"]
    model = build_model(config, prepared.shape, checkpoint.get("spec_text"))
    _load_weights(model, checkpoint["model"], path)
    return model, config, prepared


# ---------------------------------------------------------------- the loop


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # per epoch: losses, time, terms
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


def train(config: RunConfig, out: Path, resume: bool = False,
          log: Callable[[str], None] = print, progress: bool | None = None) -> History:
    """Train `config` into the directory `out` (checkpoint.pt, history.json)."""
    rank, world = _distributed()
    text = spec_text(config) if config.is_spec else None
    kind = "energy" if config.is_spec else None
    if kind is None:
        from .models import DATA_KINDS

        kind = DATA_KINDS.get(config.model, "continuous")
    prepared = prepare(config, kind)
    model = build_model(config, prepared.shape, text)
    objective = build_objective(config, model, prepared.train)
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
    digest = None if text is None else _hash(text)
    if resume and path.exists():
        checkpoint = load_checkpoint(path)
        if checkpoint.get("spec_hash") != digest or checkpoint["config"]["model"] != config.model:
            raise TrainingError(f"{path}: error: the checkpoint was made from a different "
                                f"model or spec (hash {str(checkpoint.get('spec_hash'))[:12]}, "
                                f"this spec {str(digest)[:12]}); use another --out")
        _load_weights(model, checkpoint["model"], path)
        for optimiser, state in zip(optimisers, checkpoint["optimisers"], strict=True):
            optimiser.load_state_dict(state)
        if objective is not None:
            objective.load_state_dict(checkpoint["objective"])
        history = History(**checkpoint["history"])
        start = checkpoint["epoch"] + 1
        torch.set_rng_state(checkpoint["rng"])
        log(f"resuming {config.model} from epoch {start} ({path})")
    elif resume:
        log(f"no checkpoint in {out}: starting afresh")

    loss_fn = model.loss if objective is None else objective.loss
    wrapped: nn.Module = _LossModule(model, loss_fn)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped, find_unused_parameters=True)
    dataset = torch.utils.data.TensorDataset(prepared.train)
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                  shuffle=True, seed=config.seed,
                                                  drop_last=True)
    per_rank = max(1, config.batch_size // world)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler,
                                         drop_last=True)
    from tqdm import tqdm

    for epoch in range(start, config.epochs):
        sampler.set_epoch(epoch)
        began, losses = time.perf_counter(), []
        quiet = rank != 0 or progress is False
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=True if quiet else None)  # None: a bar only on a terminal
        for (x,) in bar:
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
            step = len(history.steps) + 1
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"non-finite loss ({float(loss.detach())}) at epoch {epoch + 1}, step {step}; "
                    f"the last good checkpoint is {path if path.exists() else 'none yet'}"
                    " (try a smaller --lr, or --detect-anomaly to find the operation)")
            if not is_gan:
                for optimiser in optimisers:
                    optimiser.step()
                if objective is not None:
                    objective.after_step()
            value = float(loss.detach())
            history.steps.append(value)
            losses.append(value)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4g}")
        record = {"epoch": epoch + 1, "train_loss": sum(losses) / max(len(losses), 1),
                  "valid_loss": validation_loss(model, objective, prepared.valid,
                                                config.seed),
                  "seconds": time.perf_counter() - began}
        if hasattr(model, "sm_terms"):
            record["sm_terms"] = {k: float(v.detach())
                                 for k, v in model.sm_terms(prepared.valid).items()}
        history.epochs.append(record)
        if rank == 0:
            log(f"epoch {epoch + 1}/{config.epochs}: train {record['train_loss']:.5g}, "
                f"valid {record['valid_loss']:.5g} ({record['seconds']:.1f} s)")
            save_atomically({
                "format": 1, "config": asdict(config), "spec_hash": digest, "spec_text": text,
                "epoch": epoch, "model": model.state_dict(),
                "optimisers": [o.state_dict() for o in optimisers],
                "objective": {} if objective is None else objective.state_dict(),
                "history": asdict(history), "rng": torch.get_rng_state(),
                "prepared": prepared,
            }, path)
            _write_text(out / HISTORY, json.dumps(asdict(history), indent=1))
    return history


def _write_text(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def _hash(text: str) -> str:
    from .api import spec_hash

    return spec_hash(text)
