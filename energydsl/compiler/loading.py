"""Generated source -> a live module, importable as `energydsl.compiled.<name>_<digest>`
(api, check, tests).

The source is written once, atomically, to the cache's modules folder and imported from
there, so the module (and pickles of its models) can be imported again by name in another
process, and torch.compile finds it in sys.modules. With the cache turned off or not
writable, the module is executed in memory under the same name: pickles then load only in
this process, and unpickling elsewhere says so.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
import types

PACKAGE = "energydsl.compiled"


def load_module(source: str, name: str = "energydsl_generated") -> types.ModuleType:
    """The module of generated `source`, named `energydsl.compiled.<name>_<digest>` after
    the source's SHA-256 (the same source is loaded once per process)."""
    import energydsl.compiled as package
    from energydsl.cache import modules_dir

    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    leaf = f"{name}_{digest}"
    qualified = f"{PACKAGE}.{leaf}"
    folder = modules_dir()
    if folder is not None:
        try:
            from energydsl.files import write_atomically

            # on disk even when loaded already (in memory, or from another cache folder):
            # a process started from here finds it by name
            path = folder / f"{leaf}.py"
            if not (path.is_file() and path.read_text() == source):
                folder.mkdir(parents=True, exist_ok=True)
                write_atomically(path, source)
            if qualified in sys.modules:
                return sys.modules[qualified]
            if str(folder) not in package.__path__:  # the cache moved since import
                package.__path__.insert(0, str(folder))
            importlib.invalidate_caches()
            return importlib.import_module(qualified)
        except (OSError, UnicodeDecodeError, ImportError):
            sys.modules.pop(qualified, None)  # a read-only home: run it in memory
    if qualified in sys.modules:
        return sys.modules[qualified]
    module = types.ModuleType(qualified)
    module.__file__ = f"<generated {name}>"
    exec(compile(source, f"<generated {name}>", "exec"), module.__dict__)  # noqa: S102
    sys.modules[qualified] = module
    setattr(package, leaf, module)
    return module
