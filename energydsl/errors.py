"""One error hierarchy and one diagnostic format for every stage.

Stages raise `SpecError` carrying positioned `Diagnostic`s; only the CLI prints them.
The format is GCC's (`path:line:col: error: message`), followed by the source line and
a caret, so editors and users find the spot at once.
"""

from __future__ import annotations

from dataclasses import dataclass

# Source lines longer than this are shown as a window around the caret.
_MAX_SHOWN = 160

# Seconds a compile may take before it is an error (the driver enforces it; here so the
# CLI can show it without importing the compiler). The checker's limits bound what a spec
# can ask for, but some shapes within them (products nested 15 deep through lets) still
# make derivatives that take minutes; every shipped spec compiles in under a second.
DEFAULT_TIME_LIMIT = 60.0

# The largest spec accepted, in characters (the shipped specs are under 2,000): parsing is
# linear but slow in Python (about 10 s per MiB), so the limit bounds it before it starts.
MAX_SPEC_CHARS = 1 << 20


def shorten(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters with '...', for quoting formulas in messages."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def printable(text: str) -> str:
    """`text` with every unprintable character (escape sequences, stray carriage returns)
    shown as '?', one for one so a caret under it stays in its column."""
    return "".join(c if c.isprintable() else "?" for c in text)


@dataclass(frozen=True)
class Span:
    """A position in a spec: 1-based line and column, and the length to underline."""

    line: int
    column: int
    length: int = 1


@dataclass(frozen=True)
class Diagnostic:
    message: str
    span: Span | None = None
    severity: str = "error"

    def format(self, path: str, source: str | None) -> str:
        """Render as `path:line:col: error: message`, the source line and a caret."""
        path = printable(path)
        if self.span is None:
            return f"{path}: {self.severity}: {self.message}"
        head = f"{path}:{self.span.line}:{self.span.column}: {self.severity}: {self.message}"
        # Lines as the parser counts them: split at newlines only (str.splitlines would
        # also split at form feeds and Unicode separators and shift every later line).
        lines = source.split("\n") if source is not None else []
        if not 1 <= self.span.line <= len(lines):
            return head
        text = printable(lines[self.span.line - 1].removesuffix("\r").expandtabs(1))
        start = max(self.span.column - 1, 0)
        if len(text) > _MAX_SHOWN:  # a window around the caret, not a megabyte of line
            left = max(0, min(start - _MAX_SHOWN // 2, len(text) - _MAX_SHOWN))
            shown = text[left:left + _MAX_SHOWN]
            prefix = "..." if left > 0 else ""
            suffix = "..." if left + _MAX_SHOWN < len(text) else ""
            text, start = prefix + shown + suffix, start - left + len(prefix)
        length = max(1, min(self.span.length, max(len(text) - start, 1)))
        caret = " " * start + "^" + "~" * (length - 1)
        return f"{head}\n    {text}\n    {caret}"


class SpecError(Exception):
    """A mistake in the user's spec: reported with positions, never with a traceback."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic):
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__("; ".join(d.message for d in self.diagnostics))

    def format(self, path: str, source: str | None) -> str:
        return "\n".join(d.format(path, source) for d in self.diagnostics)


def error(message: str, span: Span | None = None) -> SpecError:
    """Shorthand for a single-diagnostic SpecError."""
    return SpecError(Diagnostic(message, span))


class TrainingError(RuntimeError):
    """A run that cannot go on, or a file that is not what it should be (a checkpoint, a
    dataset): the CLI prints the message, exit status 1."""


class UsageError(TrainingError):
    """A wrong argument (a learning rate that is not a positive number, an unknown
    option, a batch larger than the data): the CLI prints it, exit status 2."""
