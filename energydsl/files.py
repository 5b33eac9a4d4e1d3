"""Writing files so that no reader ever sees half of one, and nothing is left behind.

Every file energydsl writes (generated modules, checkpoints, histories, reports, tables)
goes through `write_atomically`: the bytes go to a temporary file in the target's own
directory, are flushed and fsynced, then renamed over the target (a rename within one
directory is atomic on POSIX and Windows). The temporary file is removed if writing
fails or is interrupted (SIGINT, and SIGTERM once `exit_on_sigterm` is installed); one
left by a SIGKILL is removed by the next write of the same target. The file gets the
mode a plain `open` would give it (0666 less the umask), not the temporary file's 0600.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], None]
TEMPORARY_SUFFIX = ".tmp"
_UMASK_LOCK = threading.Lock()


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def _umask() -> int:
    """The process umask (reading it means setting it; done under a lock)."""
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporary files a killed writer of `path` left beside it."""
    try:
        leftovers = list(path.parent.glob(f"{_glob_escape(_temporary_prefix(path))}*"
                                          f"{TEMPORARY_SUFFIX}"))
    except OSError:
        return
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in text)


def write_atomically(path: Path, data: str | bytes | Writer) -> None:
    """Write `data` (text as UTF-8 with '\\n' line ends, bytes, or a function writing to
    a binary file) to `path` atomically; create the directory if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, temporary = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=TEMPORARY_SUFFIX,
                                     dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(data, str):
                handle.write(data.encode("utf-8"))
            elif isinstance(data, bytes):
                handle.write(data)
            else:
                data(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit(143) in the main thread, so `finally` blocks and
    write_atomically's clean-up run when a job scheduler or `kill` stops the process."""
    if threading.current_thread() is not threading.main_thread():
        return

    def terminate(signum, frame) -> None:
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
