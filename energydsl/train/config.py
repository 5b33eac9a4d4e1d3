"""A training run's settings, checked before any work (see energydsl.train.loop)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from energydsl.errors import TrainingError, UsageError
from energydsl.estimators import NAMES as OBJECTIVES
from energydsl.train import data as datasets

if TYPE_CHECKING:
    import torch

RESUMABLE = ("epochs", "lr", "detect_anomaly", "compile", "device")  # may change on resume


@dataclass
class RunConfig:
    # a spec path (.edsl), a shipped spec's name (energydsl.catalogue) or a companion
    # model's name (energydsl.models.MODELS)
    model: str
    data: str = "digits"
    objective: str | None = None  # specs: one of OBJECTIVES (default sm, pl for binary data)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    sizes: dict[str, Any] = field(default_factory=dict)  # spec dims / model arguments
    options: dict[str, float] = field(default_factory=dict)  # the objective's options
    detect_anomaly: bool = False
    max_pixels: int = datasets.MAX_PIXELS  # budget of IDX values read
    compile: bool = False  # the training step through torch.compile
    device: str = "auto"  # cpu, cuda, cuda:N, mps or auto (resolve_device)
    # a companion model of p(x | label): context_dim = the dataset's number of classes,
    # one-hot labels as the context in training and evaluation
    conditional: bool = False

    @property
    def classes(self) -> int:
        """The number of classes a conditional run conditions on (0: not conditional)."""
        return datasets.CLASSES.get(self.data.partition(":")[0], 0) if self.conditional else 0

    @property
    def is_spec(self) -> bool:
        from energydsl import catalogue

        return self.model.endswith(".edsl") or catalogue.is_name(self.model)

    def check(self) -> None:
        """Refuse values no run can use (UsageError naming the flag)."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size,
                    "max_pixels": self.max_pixels}
        for name, value in positive.items():
            if not (isinstance(value, int) and value >= 1):
                raise UsageError(f"--{flag(name)} must be a positive integer, got {value!r}")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < math.inf):
            raise UsageError(f"--lr must be a positive finite number, got {self.lr!r}")
        if not (isinstance(self.seed, int) and 0 <= self.seed < 2**31):
            raise UsageError(f"--seed must be an integer in [0, 2^31), got {self.seed!r}")
        if self.is_spec:
            for name, value in self.sizes.items():
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise UsageError(f"--size {name}={value}: error: a spec's dimensions are "
                                     "positive integers")
        if self.objective is not None and self.objective not in OBJECTIVES + ("loss",):
            raise UsageError(f"unknown objective {self.objective!r}; choose one of "
                             f"{', '.join(OBJECTIVES)}")
        self._check_conditional()

    def _check_conditional(self) -> None:
        """--conditional needs a companion model that takes context_dim and a dataset with
        labels; context_dim itself is not a --size (it is the number of classes)."""
        from energydsl.models import CONDITIONAL, MODELS

        if self.model in MODELS and "context_dim" in self.sizes:
            raise UsageError(f"--size context_dim: error: {self.model}'s context is the class "
                             "label here; use --conditional (context_dim = the number of "
                             "classes)")
        if not self.conditional:
            return
        if self.is_spec:
            raise UsageError(f"--conditional: error: {self.model} is an energy model (a "
                             "spec), which takes no class label; the conditional models are "
                             f"the companion models {', '.join(CONDITIONAL)}")
        if self.model in MODELS and self.model not in CONDITIONAL:
            raise UsageError(f"--conditional: error: {self.model} takes no context; the "
                             f"conditional models are {', '.join(CONDITIONAL)}")
        name = self.data.partition(":")[0]
        if name not in datasets.CLASSES and name in datasets.LOADERS:
            raise UsageError(f"--conditional: error: dataset {name} has no labels; use "
                             "--data digits or --data mnist:DIR")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], path: Path | str) -> RunConfig:
        """A config stored in a checkpoint, its fields and types checked."""
        kinds = {"model": str, "data": str, "objective": (str, type(None)), "epochs": int,
                 "batch_size": int, "lr": (int, float), "seed": int, "sizes": dict,
                 "options": dict, "detect_anomaly": bool, "max_pixels": int,
                 "compile": bool, "device": str, "conditional": bool}
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


def flag(name: str) -> str:
    return name.replace("_", "-")


DEVICES = "cpu, cuda, cuda:N, mps or auto"


def resolve_device(text: str) -> torch.device:
    """--device: auto is CUDA when present, else Apple's MPS, else the CPU; a device
    this machine does not have is a UsageError naming it."""
    import torch

    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"--device {text}: error: not a device; use {DEVICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {text}: error: CUDA is not available here "
                             "(torch.cuda.is_available() is False); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {text}: error: this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"--device {text}: error: MPS is not available here")
    elif device.type != "cpu":
        raise UsageError(f"--device {text}: error: unsupported device; use {DEVICES}")
    return device
