"""The Python API: `energydsl.compile(spec)` -> the model class (spec text, a path, or a
shipped spec's name such as "dem"), `energydsl.load_run(directory)` -> (trained model, its
settings), `energydsl.train(...)` -> a run, with the command line's checks.

Compiles in memory, cached by the spec text's SHA-256 (recompiling an unchanged spec is
free; editing it recompiles). Spec errors raise SpecError with the positioned message.

`spec_class` also keeps the generated source on disk (`ENERGYDSL_CACHE_DIR`, by default
$XDG_CACHE_HOME/energydsl or ~/.cache/energydsl; empty to turn it off), keyed by the
spec's text and the compiler's own files, so a command that trains or samples a spec
compiled before skips the SymPy work (about a second of its start-up). The cache holds
code this process executes, like Python's own __pycache__: it must be the user's own.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from energydsl.cache import cache_dir
from energydsl.compiler.driver import compile_source
from energydsl.compiler.ir import CheckedModel, Compiled
from energydsl.compiler.sources import spec_hash

_CACHE: dict[str, Compiled] = {}
_PACKAGE = Path(__file__).resolve().parent


def compile_cached(text: str, path: str = "<spec>") -> Compiled:
    """compile_source, memoised on the spec text."""
    key = spec_hash(text)
    if key not in _CACHE:
        _CACHE[key] = compile_source(text, path)
    return _CACHE[key]


def class_of(compiled: Compiled) -> type:
    from energydsl.compiler.loading import load_module

    module = load_module(compiled.source, compiled.derivation.name.lower())
    return getattr(module, compiled.derivation.name)


@functools.cache
def _compiler_fingerprint() -> str:
    """A digest of every file that decides what the compiler emits (its code, grammar and
    templates, and the estimators' partials): a changed compiler misses the cache."""
    digest = hashlib.sha256()
    for folder in ("compiler", "estimators"):
        for path in sorted((_PACKAGE / folder).rglob("*")):
            if path.suffix in (".py", ".j2", ".lark") and path.is_file():
                digest.update(path.relative_to(_PACKAGE).as_posix().encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def checked_spec(text: str) -> CheckedModel:
    """The spec's checked declarations (parsing and checking only), memoised on its text:
    a training run asks for them from data preparation, model building and spec_class."""
    from energydsl.compiler.driver import check_source

    return check_source(text)


def spec_class(text: str, path: str = "<spec>") -> type:
    """The generated class of a spec, its source from the disk cache when this compiler
    made it before (see the module docstring), else compiled and kept there."""
    from energydsl.compiler.loading import load_module

    name = checked_spec(text).name  # spec errors surface here, as from compile
    folder = cache_dir()
    key = hashlib.sha256(f"{_compiler_fingerprint()}\0{text}".encode()).hexdigest()
    cached = folder / f"{key}.py" if folder is not None else None
    source = None
    if cached is not None and cached.is_file():
        try:
            source = cached.read_text()
        except (OSError, UnicodeDecodeError):
            source = None
    if source is None:
        source = compile_cached(text, path).source
        if cached is not None:
            try:
                from energydsl.files import write_atomically

                cached.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(cached, source)
            except OSError:  # a read-only home: compile every time, as without a cache
                pass
    return getattr(load_module(source, name.lower()), name)


def load(path: str | Path) -> type:
    """Compile the spec at `path` (or the shipped spec of that name: `load("dem")`) in
    memory and return its generated class."""
    from energydsl import catalogue
    from energydsl.compiler.sources import read_spec

    text = read_spec(catalogue.resolve(str(path)))
    return class_of(compile_cached(text, Path(path).as_posix()))


def _looks_like_text(spec: str) -> bool:
    """Spec text rather than a path: it declares a model (paths have no newline)."""
    return "\n" in spec or spec.lstrip().startswith(("model ", "#"))


def compile(spec: str | Path) -> type:  # noqa: A001 - energydsl.compile, as documented
    """The generated class of `spec`: the text of a spec, the path of a .edsl file or a
    shipped spec's name ("dem"; `energydsl specs` lists them).
    Compiled in memory (memoised on the text); a mistake raises SpecError, whose str is
    the positioned message `energydsl compile` prints."""
    if isinstance(spec, str) and _looks_like_text(spec):
        return class_of(compile_cached(spec, "<spec>"))
    return load(spec)


def load_run(directory: str | Path):  # noqa: ANN201 - (torch.nn.Module, RunConfig)
    """The trained model of a run directory (or its checkpoint.pt) and the run's settings
    (a RunConfig: model, data, objective, sizes, options, epochs, lr, seed...). The
    checkpoint is read as plain data, never unpickled code."""
    from energydsl.train.loop import checkpoint_path, load_checkpoint, model_from_checkpoint

    path = checkpoint_path(directory)
    model, config, _ = model_from_checkpoint(load_checkpoint(path), path)
    return model, config


def train(model: str, out: str | Path | None = None, *, resume: bool = False,
          overwrite: bool = False, progress: bool | None = None, **settings):  # noqa: ANN201
    """Train `model` (a spec path or a companion model name) as `energydsl train` does,
    with the same checks (UsageError names a wrong setting), into `out` (default
    runs/<name>). `settings` are RunConfig's fields: data, objective, epochs, batch_size,
    lr, seed, sizes={...}, options={...}, compile, conditional=True (a companion model of
    p(x | label) on the data's class labels, as --conditional). Returns the History
    (per-epoch losses in .epochs, every step's loss in .steps)."""
    import dataclasses

    from energydsl.errors import UsageError
    from energydsl.train.config import RunConfig
    from energydsl.train.loop import resumed_config
    from energydsl.train.loop import train as train_run

    known = {f.name for f in dataclasses.fields(RunConfig)} - {"model"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise UsageError(f"train() got an unknown setting {unknown[0]!r}; the settings are "
                         f"{', '.join(sorted(known))}")
    target = Path(out) if out is not None else Path("runs") / Path(model).stem
    config = resumed_config(target, settings) if resume else None
    config = config or RunConfig(model=model, **settings)
    return train_run(config, target, resume=resume, overwrite=overwrite,
                     log=print if progress is not False else (lambda _: None),
                     progress=progress)
