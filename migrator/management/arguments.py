"""Argument types shared by the commands: argparse turns a bad value into a one-line usage error."""

from __future__ import annotations

from collections.abc import Callable

from argparse import ArgumentTypeError


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
