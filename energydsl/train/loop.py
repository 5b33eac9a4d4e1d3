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
  companion models and specs of binary (or spin) data get the binarised digits (as
  -1/+1 for spin), the others [0, 1] values.
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
import gc
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from energydsl import STARTED, __version__
from energydsl.errors import TrainingError, UsageError
from energydsl.estimators import Objective, default_objective, make_objective
from energydsl.files import write_atomically
from energydsl.train import checkpoints
from energydsl.train.build import build_model, build_objective, label_context, probe, spec_text
from energydsl.train.config import RESUMABLE, RunConfig, flag, resolve_device
from energydsl.train.prepare import DataMap, Prepared, data_kind, on_device, prepare

__all__ = ["CHECKPOINT", "HISTORY", "DataMap", "Prepared", "RunConfig", "TrainingError",
           "UsageError", "data_kind", "load_checkpoint", "model_from_checkpoint", "prepare",
           "resumed_config", "train"]

CHECKPOINT = "checkpoint.pt"
HISTORY = "history.json"
SETTINGS = "run.json"  # the run's settings, readable (the checkpoint holds the same)
DIVERGENCE = 1e6  # |loss| beyond this many times the first step's (at least 1): diverged
PARAMETER_BOUND = 1e6  # |parameter| beyond this: diverged


# ---------------------------------------------------------------- checkpoints


def checkpoint_path(target: str | Path) -> Path:
    """The checkpoint of a run directory, or the checkpoint file itself."""
    target = Path(target)
    return target / CHECKPOINT if target.is_dir() else target


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
    """A resumed run keeps its settings: a field an older checkpoint lacks has its
    default."""
    defaults = {f.name: f.default for f in dataclasses.fields(RunConfig)
                if f.default is not dataclasses.MISSING}
    for name, value in asdict(config).items():
        if name in RESUMABLE or stored.get(name, defaults.get(name)) == value:
            continue
        kept = stored.get(name)
        shown = "the default" if kept is None else repr(kept)
        raise UsageError(f"{path}: error: this run has {name} = {shown}; a resumed run "
                         f"keeps it (--{flag(name)} {value!r} asked for another): start "
                         "a new run with another --out, or drop the flag to keep it")


# ---------------------------------------------------------------- the loop


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)  # per epoch: losses, lr, time, terms
    steps: list[float] = field(default_factory=list)  # every training loss

    def __repr__(self) -> str:
        """The last epoch's losses, not every step's."""
        if not self.epochs:
            return "History(no epochs)"
        last = self.epochs[-1]
        return (f"History({len(self.epochs)} epochs, {len(self.steps)} steps; epoch "
                f"{last['epoch']}: train {last['train_loss']:.5g}, valid "
                f"{last['valid_loss']:.5g})")
    # a GAN's two losses at every step, {"discriminator_loss": [...], "generator_loss":
    # [...]}, whose sum `steps` holds; empty for one-objective models and older runs
    step_parts: dict[str, list[float]] = field(default_factory=dict)


@contextmanager
def _process_group(device: torch.device) -> Iterator[tuple[int, int]]:
    """(rank, world size), initialising the process group under torchrun: nccl for a
    model on CUDA (each rank on its LOCAL_RANK's GPU), gloo for CPU tensors. A group made
    here is destroyed on the way out, after a barrier when the run ended well: a process
    that exits with a live gloo group can abort in its worker threads ("terminate called
    without an active exception"), and a rank must not close the store while another
    still reads from it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        yield 0, 1
        return
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), world
        if owned:
            gc.collect()  # DistributedDataParallel's cycles, holding the group, go first
            dist.barrier()
    finally:
        if owned:
            dist.destroy_process_group()


def _collective_device() -> torch.device:
    """Where tensors for a collective live: nccl takes CUDA tensors, gloo CPU ones."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class _LossModule(nn.Module):
    """The objective as a forward pass, so DistributedDataParallel can average it."""

    def __init__(self, model: nn.Module, loss: Callable[..., Tensor]) -> None:
        """loss(x), or loss(x, context=c) for a conditional companion model."""
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.loss(x) if context is None else self.loss(x, context=context)


def validation_loss(model: nn.Module, objective: Objective | None, x: Tensor,
                    seed: int, context: dict[str, Tensor] | None = None) -> float:
    """The held-out criterion, with the estimator's noise fixed by `seed`: the objective
    itself, except for the CD family (whose chains it must not move), measured by the
    default objective for the model's data, which is exact and needs no sampler: sm_loss
    on real data, pl_loss on binary or spin data. `context`: a conditional model's
    {"context": one-hot labels of x}."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if objective is None:
            with torch.no_grad():
                return float(model.loss(x, **(context or {})))
        if objective.name in ("cd", "pcd", "fpcd"):
            objective = make_objective(model, default_objective(model))
        return float(objective.loss(x).detach())


def _gan_parts(model: nn.Module, x: Tensor, seed: int,
               context: dict[str, Tensor] | None = None) -> dict[str, float]:
    """A GAN's discriminator and generator losses on held-out rows (given their labels,
    for a conditional GAN), noise fixed by seed; the BatchNorm statistics are left as
    training made them."""
    buffers = {name: value.clone() for name, value in model.named_buffers()}
    context = context or {}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        parts = {"discriminator_loss": float(model.discriminator_loss(x, **context)),
                 "generator_loss": float(model.generator_loss(len(x), **context))}
        for name, value in model.named_buffers():
            value.copy_(buffers[name])
    return parts


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
    from energydsl.memory import keep_freed_memory

    config.check()
    keep_freed_memory()  # steps reuse freed blocks instead of page-faulting them back
    device = resolve_device(config.device)  # before the run directory is touched
    out = Path(out)
    created = not out.exists()
    _prepare_out(out, resume, overwrite)
    try:
        with _process_group(device) as (rank, world):
            return _run(config, out, device, resume, log, progress, rank, world)
    except BaseException:  # a mistake found later (or Ctrl-C) leaves no empty run behind
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _run(config: RunConfig, out: Path, device: torch.device, resume: bool,
         log: Callable[[str], None], progress: bool | None, rank: int,
         world: int) -> History:
    """train()'s work, in a run directory that exists, as process `rank` of `world`."""
    text = spec_text(config) if config.is_spec else None
    prepared = on_device(prepare(config, data_kind(config, text)), device)
    if config.batch_size > len(prepared.train):
        raise UsageError(f"--batch-size {config.batch_size} is larger than the "
                         f"{len(prepared.train)} training examples")
    model = build_model(config, prepared.shape, text).to(device)
    if config.is_spec and not any(p.requires_grad for p in model.parameters()):
        raise UsageError(f"{config.model}: error: the model has no parameters to train")
    probe(config, model, prepared)
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
        history = History(checkpoint["history"]["epochs"], checkpoint["history"]["steps"],
                          dict(checkpoint["history"].get("step_parts") or {}))
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
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[torch.cuda.current_device()] if device.type == "cuda" else None,
            find_unused_parameters=True)
    if config.compile:  # same values; faster steps after a first call of seconds to minutes
        log(f"{config.model}: compiling the training step with torch.compile (the first "
            "step takes seconds to minutes; history.json records when it ended)")
        import warnings

        # torch's own code warns of its deprecated internals while it compiles
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch._inductor")
        wrapped = torch.compile(wrapped)  # type: ignore[assignment]
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
        write_atomically(out / SETTINGS, json.dumps({
            "note": "this run's settings (read-only: `energydsl train --resume` restores "
                    "them from checkpoint.pt; only epochs, lr, device, compile and "
                    "detect_anomaly may change)",
            "config": asdict(config), "epochs_done": epoch + 1, "spec_hash": digest,
            "spec_text": text, "energydsl": __version__, "torch": torch.__version__,
            "optimiser": {"name": "Adam", "lr": config.lr,
                          "betas": list(optimisers[0].param_groups[0]["betas"])},
            "world_size": world,
            **({"classes": config.classes, "context": "one-hot class labels"}
               if config.conditional else {}),
        }, indent=1))

    if start == 0:
        save(-1)
    from tqdm import tqdm

    first_step: float | None = None  # seconds from the start of the command
    first_in_epoch = -1
    for epoch in range(start, config.epochs):
        sampler.set_epoch(epoch)
        began, losses = time.perf_counter(), []
        epoch_parts: dict[str, list[float]] = {}
        quiet = rank != 0 or progress is False
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
                   disable=True if quiet else None)  # None: a bar only on a terminal
        for stored, rows in bar:
            x = prepared.encode(stored, rows)
            context = label_context(model, config, prepared, 0, rows)
            try:
                with torch.autograd.set_detect_anomaly(config.detect_anomaly):
                    if is_gan:
                        parts = model.train_step(x, *optimisers, **context)
                        loss = torch.tensor(sum(parts.values()))
                        for key, part in parts.items():
                            epoch_parts.setdefault(key, []).append(float(part))
                    else:
                        for optimiser in optimisers:
                            optimiser.zero_grad(set_to_none=True)
                        loss = wrapped(x, **context)
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
                elif hasattr(model, "after_step"):  # a companion model's own schedule
                    model.after_step()
            guards.check_parameters(model, epoch)
            if first_step is None:
                first_step = time.perf_counter() - STARTED
                first_in_epoch = epoch
            history.steps.append(value)
            losses.append(value)
            bar.set_postfix(loss=f"{sum(losses) / len(losses):.4g}")
        total, count = sum(losses), len(losses)
        if world > 1:  # every rank's share: the loss of the whole epoch, on every rank
            import torch.distributed as dist

            summed = torch.tensor([total, float(count)], dtype=torch.float64,
                                  device=_collective_device())
            dist.all_reduce(summed)
            total, count = float(summed[0]), int(summed[1])
        valid_context = label_context(model, config, prepared, 1)
        record = {"epoch": epoch + 1, "train_loss": total / max(count, 1),
                  "valid_loss": validation_loss(model, objective, prepared.valid,
                                                config.seed, valid_context),
                  "lr": config.lr, "seconds": time.perf_counter() - began}
        if first_step is not None and first_in_epoch == epoch:
            record["first_step_seconds"] = first_step  # start-up included
        if epoch_parts:  # a GAN: each player's mean loss, on the training and held-out data
            for key, values in epoch_parts.items():
                history.step_parts.setdefault(key, []).extend(values)
            record["train_parts"] = {k: sum(v) / len(v) for k, v in epoch_parts.items()}
            record["valid_parts"] = _gan_parts(model, prepared.valid, config.seed,
                                               valid_context)
        if hasattr(model, "sm_terms"):
            record["sm_terms"] = {k: float(v.detach())
                                 for k, v in model.sm_terms(prepared.valid).items()}
        history.epochs.append(record)
        if rank == 0:
            log(f"epoch {epoch + 1}/{config.epochs}: train {record['train_loss']:.5g}, "
                f"valid {record['valid_loss']:.5g} ({record['seconds']:.1f} s)")
        save(epoch)
    return history
