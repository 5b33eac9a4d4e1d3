"""Checkpoints that hold data, never code.

People download and share checkpoints, so reading one must never run anything in it. A
checkpoint is therefore plain data (tensors, numbers, strings, lists and dicts) read by
`torch.load(weights_only=True)`, whose unpickler refuses every other object before it is
built: a pickle that would call a function fails to load, and nothing in it runs. The
structure is then checked field by field, and the spec text against its SHA-256, before
anything is built from it.

Format (version 2), one dict:

    format       "energydsl.checkpoint"
    version      2
    config       the run's settings (RunConfig as a dict of plain values)
    spec_text    the spec, or None for a companion model; spec_hash its SHA-256
    epoch        the last completed epoch, counted from 0 (-1: the initial model)
    model        the model's state_dict
    optimisers   their state_dicts
    objective    the estimator's state (persistent chains, fast weights), tensors only
    history      {"epochs": [per-epoch records], "steps": [every training loss],
                  "step_parts": {a GAN's two losses at every step} (may be absent)}
    rng          torch's CPU generator state
    data         how model space maps to data space: shape, mean, scale, log_jacobian,
                 matrix (the inverse ZCA whitening, or None; absent in older files)

Version 1 (energydsl 0.1 before this format) pickled Python objects; such files are
refused with a message, not loaded.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from energydsl.compiler.sources import spec_hash
from energydsl.errors import TrainingError
from energydsl.files import write_atomically

FORMAT = "energydsl.checkpoint"
VERSION = 2


def save(payload: dict[str, Any], path: Path) -> None:
    """Write a checkpoint atomically (see energydsl.files)."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    write_atomically(path, lambda handle: torch.save(payload, handle))


def load(path: Path) -> dict[str, Any]:
    """Read and validate a checkpoint; TrainingError for anything that is not one."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: error: no checkpoint here") from None
    except IsADirectoryError:
        raise TrainingError(f"{path}: error: is a directory, not a checkpoint") from None
    except pickle.UnpicklingError as exc:
        raise TrainingError(_refused(path, str(exc))) from None
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's problem
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"{path}: error: not a readable checkpoint ({detail})") from None
    return validate(raw, path)


def _refused(path: Path, message: str) -> str:
    """The message for a file whose unpickling needed objects beyond plain data."""
    found = next((line.split("GLOBAL", 1)[1].split()[0] for line in message.splitlines()
                  if "GLOBAL" in line), "an object")
    if found.startswith("energydsl."):
        return (f"{path}: error: a checkpoint of an older energydsl (format 1, which stored "
                f"Python objects such as {found}); it cannot be read safely: retrain, or "
                "load it with that version")
    return (f"{path}: error: not an energydsl checkpoint: it holds Python code or objects "
            f"({found}) that loading would have to run; refused, nothing in it was run")


def _fail(path: Path, what: str) -> TrainingError:
    return TrainingError(f"{path}: error: not a valid energydsl checkpoint: {what}")


_KINDS = {dict: "a dict", list: "a list", int: "an integer", str: "a string",
          torch.Tensor: "a tensor", type(None): "None"}


def _expect(path: Path, value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        kinds = kind if isinstance(kind, tuple) else (kind,)
        names = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        raise _fail(path, f"{what} should be {names}, found {type(value).__name__}")
    return value


def validate(raw: Any, path: Path) -> dict[str, Any]:
    """Check every field's type (and the spec text against its hash)."""
    _expect(path, raw, dict, "the file")
    if raw.get("format") != FORMAT:
        raise _fail(path, "no 'format' marker (it was not written by energydsl)")
    version = raw.get("version")
    if version != VERSION:
        newer = isinstance(version, int) and version > VERSION
        raise TrainingError(f"{path}: error: checkpoint format version {version!r}; this "
                            f"energydsl reads version {VERSION}"
                            + ("; upgrade energydsl" if newer else ""))
    fields = {"config": dict, "epoch": int, "model": dict, "optimisers": list,
              "objective": dict, "history": dict, "rng": torch.Tensor, "data": dict}
    for name, kind in fields.items():
        if name not in raw:
            raise _fail(path, f"the field '{name}' is missing")
        _expect(path, raw[name], kind, f"'{name}'")
    if raw["epoch"] < -1:
        raise _fail(path, f"epoch {raw['epoch']} is below -1 (the initial model)")
    for name, value in raw["model"].items():
        _expect(path, name, str, "a weight's name")
        _expect(path, value, torch.Tensor, f"the weight '{name}'")
    for state in raw["optimisers"]:
        _expect(path, state, dict, "an optimiser's state")
    history = raw["history"]
    _expect(path, history.get("epochs"), list, "history['epochs']")
    _expect(path, history.get("steps"), list, "history['steps']")
    for record in history["epochs"]:
        _expect(path, record, dict, "a history record")
    if raw["rng"].dtype != torch.uint8 or raw["rng"].ndim != 1:
        raise _fail(path, "'rng' is not a generator state (a 1-D uint8 tensor)")
    text, digest = raw.get("spec_text"), raw.get("spec_hash")
    _expect(path, text, (str, type(None)), "'spec_text'")
    _expect(path, digest, (str, type(None)), "'spec_hash'")
    if (text is None) != (digest is None) or text is not None and spec_hash(text) != digest:
        raise TrainingError(f"{path}: error: the checkpoint's spec text does not match its "
                            "SHA-256: the file was modified or is corrupt; refused")
    return raw
