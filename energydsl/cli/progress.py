"""Progress bars for the commands that take a while (`check` over several specs, `compare`).

Bars are tqdm's, on stderr, and only on a terminal (tqdm's disable=None): piped or
redirected output, logs and tests see none of them and the same text as without bars.
While bars show, what the command prints to stdout goes out a whole line at a time with
the bars cleared and then redrawn (tqdm's external_write_mode), so it lands above them
instead of through them; `err` does the same for stderr.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def bar(items: Iterable[T], **options: Any) -> Iterable[T]:
    """`items` with a tqdm bar on stderr when it is a terminal (leave=False: it goes
    when done); options are tqdm's (desc, total, unit, ...)."""
    from tqdm import tqdm

    options.setdefault("leave", False)
    options.setdefault("disable", None)
    return tqdm(items, file=sys.stderr, **options)


def counter(**options: Any) -> Any:
    """A tqdm counter with no total (update it, set_postfix_str what it is doing)."""
    from tqdm import tqdm

    options.setdefault("leave", False)
    options.setdefault("disable", None)
    return tqdm(file=sys.stderr, **options)


class _AboveBars(io.TextIOBase):
    """A text stream that writes whole lines to `stream` with the bars on `bars` cleared
    and then redrawn; a partial line waits for its end."""

    def __init__(self, stream: Any, bars: Any) -> None:
        self.stream = stream
        self.bars = bars
        self.pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        from tqdm import tqdm

        self.pending += text
        if "\n" in self.pending:
            lines, _, self.pending = self.pending.rpartition("\n")
            with tqdm.external_write_mode(file=self.bars):
                self.stream.write(lines + "\n")
                self.stream.flush()
        return len(text)

    def flush(self) -> None:
        if self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()


@contextlib.contextmanager
def above_bars() -> Iterator[None]:
    """Print above the bars while inside (only when stderr is a terminal, where bars
    show; otherwise nothing changes)."""
    if not _is_terminal(sys.stderr):
        yield
        return
    out = _AboveBars(sys.stdout, sys.stderr)
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        out.flush()


def write_error(message: str) -> None:
    """A line on stderr, above any bars there."""
    if "tqdm" not in sys.modules:  # no bars without tqdm
        print(message, file=sys.stderr)
        return
    from tqdm import tqdm

    with tqdm.external_write_mode(file=sys.stderr):
        print(message, file=sys.stderr)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
