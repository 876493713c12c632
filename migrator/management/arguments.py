"""Argument types shared by the commands: argparse turns a bad value into a one-line usage error."""

from __future__ import annotations

import re
from argparse import ArgumentTypeError
from collections.abc import Callable


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if number < minimum:
            raise ArgumentTypeError(f"expected {minimum} or more, got {number}")
        if maximum is not None and number > maximum:
            raise ArgumentTypeError(f"expected at most {maximum}, got {number}")
        return number

    parse.__name__ = "whole number"
    return parse


positive = whole_number(1)
non_negative = whole_number(0)
MAX_BATCH_SIZE = 1_000_000  # one batch is one transaction and one INSERT ... SELECT: larger only holds locks longer
batch_size = whole_number(1, MAX_BATCH_SIZE)


def seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not 0 < number <= 3600:
        raise ArgumentTypeError(f"expected more than 0 and at most 3600 seconds, got {value}")
    return number


_TIME_ZONE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*$")


def time_zone_name(value: str) -> str:
    """A time zone name's shape (Area/Location, UTC, Etc/GMT+5); the server says whether it knows it."""
    if not _TIME_ZONE_NAME.match(value):
        raise ArgumentTypeError(f"expected a time zone name such as America/New_York, got {value!r}")
    return value


def percent(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise ArgumentTypeError(f"expected a percentage, got {value!r}") from None
    if number < 0:
        raise ArgumentTypeError(f"expected 0 or more, got {value}")
    return number
