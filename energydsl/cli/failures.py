"""How the command line reports: every message goes to stderr; a failure already
reported ends the command with status 1."""

from __future__ import annotations

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3


class Failure(Exception):
    """A reported failure (already printed): exit with status 1."""


def err(message: str) -> None:
    from energydsl.cli.progress import write_error

    write_error(message)
