"""Generated source -> a live module, without writing a file (api, check, tests).

The module is registered in sys.modules under a name unique to its source, because
torch.compile looks functions' modules up there.
"""

from __future__ import annotations

import hashlib
import sys
import types


def load_module(source: str, name: str = "energydsl_generated") -> types.ModuleType:
    """Execute generated source as a fresh module, registered in sys.modules under a
    name unique to the source (torch.compile looks modules up there)."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    qualified = f"_energydsl_generated.{name}_{digest}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    module = types.ModuleType(qualified)
    exec(compile(source, f"<generated {name}>", "exec"), module.__dict__)  # noqa: S102
    sys.modules[qualified] = module
    return module
