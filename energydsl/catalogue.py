"""The specs shipped inside the package (energydsl/specs/*.edsl), known by name.

A spec argument is a path or a shipped spec's name: `energydsl compile dem` compiles the
packaged dem.edsl from any directory. A path always wins: an argument ending in .edsl or
holding a '/', or naming a file that exists, is read as it is; only a bare name that is no
file (a directory of that name, such as a run called dem, does not count) is looked up
here. The repository's top-level specs/ is a symbolic link to energydsl/specs, so the
files the wheel ships are the only copy (see docs/architecture.md).
"""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from pathlib import Path

SUFFIX = ".edsl"


@functools.cache
def directory() -> Path:
    """Where the shipped specs are (a real directory: the wheel installs them as files)."""
    return Path(str(resources.files("energydsl").joinpath("specs")))


def shipped() -> dict[str, Path]:
    """Every shipped spec, name -> path, in name order."""
    folder = directory()
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob(f"*{SUFFIX}")) if p.is_file()}


def is_name(text: str) -> bool:
    """Whether `text` names a shipped spec (and is not a path to something else)."""
    return _is_bare(text) and not Path(text).is_file() and text in shipped()


def _is_bare(text: str) -> bool:
    return bool(text) and not text.endswith(SUFFIX) and "/" not in text and "\\" not in text


def resolve(text: str) -> str:
    """The file to read for a spec argument: the shipped spec it names, else `text`."""
    return str(shipped()[text]) if is_name(text) else text


def hint(text: str) -> str:
    """For an argument that is no file: the shipped names it may have meant ('' if none)."""
    if not _is_bare(text):
        return ""
    close = difflib.get_close_matches(text, list(shipped()), n=1)
    return (f" (did you mean the shipped spec {close[0]!r}? `energydsl specs` lists them)"
            if close else " (`energydsl specs` lists the shipped specs)")


def description(path: Path, width: int = 100) -> str:
    """A spec's one-line description: the first sentence of its leading comment (to the
    first ':' or '. ' outside parentheses), shortened to `width` characters."""
    lines = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    comment = " ".join(part for part in lines if part)
    depth = 0
    for i, char in enumerate(comment):
        depth += (char == "(") - (char == ")")
        after = comment[i + 1:i + 2]
        if depth == 0 and char in ":." and after in ("", " "):
            comment = comment[:i]
            break
    return comment if len(comment) <= width else comment[:width - 3].rstrip() + "..."
