"""The model and its objective for a run: built, sized for the data, and tried once.

The objective is tried on two validation rows before training (`probe`), so a run that
cannot work (2^64 hidden states to enumerate, sizes that do not fit in memory) fails at
once with the reason.
"""

from __future__ import annotations

import difflib
import math

import torch
from torch import Tensor, nn

from energydsl.errors import UsageError
from energydsl.estimators import Objective, default_objective, get, make_objective
from energydsl.estimators.nce import gaussian_noise
from energydsl.train.config import RunConfig
from energydsl.train.prepare import Prepared


def spec_text(config: RunConfig) -> str:
    from energydsl import catalogue
    from energydsl.compiler.sources import read_spec

    return read_spec(catalogue.resolve(config.model))


def _companion(config: RunConfig) -> nn.Module:
    """The companion model with the run's --size arguments (and context_dim = the number
    of classes for a --conditional run)."""
    from energydsl import catalogue
    from energydsl.models import MODELS

    factory = MODELS.get(config.model)
    if factory is None:
        close = difflib.get_close_matches(config.model, [*MODELS, *catalogue.shipped()], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown model {config.model!r}: give a spec (.edsl), a shipped "
                         f"spec (energydsl specs) or one of {', '.join(sorted(MODELS))}{hint}")
    import inspect

    takes = [p for p in inspect.signature(factory).parameters if p != "self"]
    for name in config.sizes:
        if name not in takes:
            close = difflib.get_close_matches(name, takes, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise UsageError(f"{config.model}: error: --size: no argument named {name!r}"
                             f"{hint}; its arguments are {', '.join(takes) or 'none'}")
    extra = {"context_dim": config.classes} if config.conditional else {}
    try:
        return factory(**config.sizes, **extra)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{config.model}: error: cannot build it with --size "
                         f"{', '.join(f'{k}={v}' for k, v in config.sizes.items())}: {exc} "
                         f"(its arguments are {', '.join(takes) or 'none'})") from None


def build_model(config: RunConfig, shape: tuple[int, ...], text: str | None = None
                ) -> nn.Module:
    """The model, sized for the data: a spec's visible dimension (or its height and
    width when the dimension is derived from them) is set from the data's shape."""
    torch.manual_seed(config.seed)
    if not config.is_spec:
        return _companion(config)
    from energydsl.api import checked_spec, spec_class

    text = text if text is not None else spec_text(config)
    checked = checked_spec(text)
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
    try:
        model = spec_class(text, config.model)(**sizes)
    except ValueError as exc:  # a vector constant the spec lists for another size
        raise UsageError(f"{config.model}: error: {exc}") from None
    if model.visible_size != size:
        raise UsageError(f"{config.model}: error: the model's visible size "
                         f"{model.visible_size} does not match the data ({size})")
    return model


def objective_name(config: RunConfig, model: nn.Module) -> str:
    """The estimator a spec's run trains with: the one named, else the default for the
    model's data (sm on real data, pl on binary or spin data)."""
    return config.objective or default_objective(model)


def build_objective(config: RunConfig, model: nn.Module, prepared: Prepared
                    ) -> Objective | None:
    """The estimator for an energy model (None: the companion model's own loss)."""
    if not config.is_spec:
        if config.objective not in (None, "loss") or config.options:
            raise UsageError(f"{config.model} trains with its own loss; --objective and "
                             "--option apply to specs")
        return None
    name = objective_name(config, model)
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


def label_context(model: nn.Module, config: RunConfig, prepared: Prepared, split: int,
                  rows: Tensor | None = None) -> dict[str, Tensor]:
    """The keyword arguments that give a conditional run's model its context: {"context":
    the one-hot labels of `rows` (default all) of split 0 (train), 1 (valid) or 2 (test),
    on the model's device and in its dtype}; {} for any other run."""
    if not config.conditional or prepared.labels is None:
        return {}
    from energydsl.models import one_hot

    labels = prepared.labels[split]
    if rows is not None:
        labels = labels[rows.to(labels.device)]
    return {"context": one_hot(labels, config.classes, model)}


def probe(config: RunConfig, model: nn.Module, prepared: Prepared) -> None:
    """Try the objective once on two validation rows, leaving the model, the RNG and the
    real objective's state untouched: what cannot run fails here, with its reason."""
    with torch.random.fork_rng(devices=[]):
        try:
            objective = build_objective(config, model, prepared)
            loss = model.loss if objective is None else objective.loss
            loss(prepared.valid[:2], **label_context(model, config, prepared, 1,
                                                     torch.arange(2)))
        except UsageError:
            raise
        except (ValueError, TypeError, RuntimeError, MemoryError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "allocate" in detail or isinstance(exc, MemoryError):
                sizes = ", ".join(f"{k}={v}" for k, v in config.sizes.items()) or "defaults"
                detail = f"it does not fit in memory at these sizes ({sizes}): {detail}"
            raise UsageError(f"{config.model}: error: objective "
                             f"{objective_name(config, model)!r} cannot run on this model: "
                             f"{detail}") from None
