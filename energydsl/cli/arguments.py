"""Types of the command line's arguments: a wrong value is a usage error (exit 2) that
argparse prints with the command's usage."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

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


def model_value(text: str) -> int | float | bool | str | list[int]:
    """A companion model's constructor argument from NAME=VALUE: an integer, a finite
    number, true/false, a list of positive integers (128,128), or a word (spline)."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if kind is float and not math.isfinite(value):
            break
        return value
    parts = text.split(",")
    if len(parts) > 1 and all(part.strip().isdigit() and int(part) > 0 for part in parts):
        return [int(part) for part in parts]
    if text.replace("-", "_").isidentifier():
        return text
    raise argparse.ArgumentTypeError(f"expected a number, true/false, a list such as 128,128 "
                                     f"or a word, got {text!r}")


def seed(text: str) -> int:
    return int(number(text, int, 0, 2**31 - 1, "an integer in [0, 2^31)"))


def positive_float(text: str) -> float:
    return float(number(text, float, sys.float_info.min, math.inf, "a positive number"))


def time_limit(text: str) -> float:
    return float(number(text, float, 0, MAX_TIME_LIMIT,
                         f"seconds between 0 (no limit) and {MAX_TIME_LIMIT:g}"))


def finite(text: str) -> float:
    return float(number(text, float, -math.inf, math.inf, "a finite number"))


EXPECTED: dict[Callable[[str], Any], str] = {positive_int: "POSITIVE_INTEGER", finite: "NUMBER",
            model_value: "VALUE (a number, true/false, a list such as 128,128, or a word)"}


def parse_assignments(items: list[str], flag: str, convert: Callable[[str], Any]) -> dict:
    """NAME=VALUE pairs of --size (positive_int: a spec's dimensions; model_value: train's,
    which also sets a companion model's arguments) or --option (finite numbers)."""
    found = {}
    for item in items:
        name, _, text = item.partition("=")
        try:
            if not name.isidentifier():
                raise argparse.ArgumentTypeError
            found[name] = convert(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{flag} expects NAME={EXPECTED[convert]}, got "
                                             f"{item!r}") from None
    return found
