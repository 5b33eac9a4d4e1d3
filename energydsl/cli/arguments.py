"""Types of the command line's arguments: a wrong value is a usage error (exit 2) that
argparse prints with the command's usage."""

from __future__ import annotations

import argparse
import math
import sys

MAX_TIME_LIMIT = 1e6  # seconds (the timer takes no more)


def number(text: str, kind: type, low: float, high: float, what: str) -> int | float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not (low <= value <= high) or (kind is float and not math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    return int(number(text, int, 1, 2**63 - 1, "a positive integer"))


def seed(text: str) -> int:
    return int(number(text, int, 0, 2**31 - 1, "an integer in [0, 2^31)"))


def positive_float(text: str) -> float:
    return float(number(text, float, sys.float_info.min, math.inf, "a positive number"))


def time_limit(text: str) -> float:
    return float(number(text, float, 0, MAX_TIME_LIMIT,
                         f"seconds between 0 (no limit) and {MAX_TIME_LIMIT:g}"))


def parse_assignments(items: list[str], flag: str, kind: type) -> dict:
    """NAME=VALUE pairs of --size (positive integers) or --option (finite numbers)."""
    found = {}
    expected = "POSITIVE_INTEGER" if kind is int else "NUMBER"
    for item in items:
        name, _, text = item.partition("=")
        try:
            if not name.isidentifier():
                raise argparse.ArgumentTypeError
            found[name] = positive_int(text) if kind is int else number(
                text, float, -math.inf, math.inf, "a finite number")
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{flag} expects NAME={expected}, got "
                                             f"{item!r}") from None
    return found
