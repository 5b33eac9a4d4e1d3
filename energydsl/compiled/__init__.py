"""The generated modules of compiled specs, importable by name: a model class compiled in
one process, `energydsl.compiled.dem_<digest>.DEM`, is found again in another, so models
and whole runs pickle (`torch.save(model)`, multiprocessing) like any installed class.

Each module is a file `<name>_<digest>.py` in the cache's `modules` folder
(energydsl.cache.modules_dir), written atomically by energydsl.compiler.loading and named
after the SHA-256 of its source, so a name always means the same code. This package's
__path__ is that folder."""

from __future__ import annotations

from energydsl.cache import modules_dir

_folder = modules_dir()
__path__ = [str(_folder)] if _folder is not None else []  # noqa: F811 - a namespace of files
