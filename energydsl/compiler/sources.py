"""Reading a spec file: every way a file can be unreadable becomes a SpecError.

The message formats as `path: error: ...` (no position: there is no text to point into).
At most MAX_SPEC_CHARS + 1 characters are read, so a huge file costs nothing: the driver
then refuses the text with a positioned error at the limit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from energydsl.errors import MAX_SPEC_CHARS, SpecError, error


def read_spec(path: str | Path) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(MAX_SPEC_CHARS + 1)
    except FileNotFoundError:
        raise error("no such file") from None
    except IsADirectoryError:
        raise error("is a directory, not a spec file") from None
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise error(f"cannot read: {exc.strerror or exc}") from None


def read_spec_or_none(path: str | Path) -> str | None:
    """The text for showing a diagnostic's source line, or None if it cannot be read."""
    try:
        return read_spec(path)
    except SpecError:
        return None


def spec_hash(text: str) -> str:
    """The SHA-256 of a spec's text: what caches and checkpoints know a spec by."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
