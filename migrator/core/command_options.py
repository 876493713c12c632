"""How a run option is given on the ``migrate_phase`` command line, stated once, beside the option.

Each field of ``RunOptions`` carries in its metadata either a ``CommandOption`` (its flags, help and
value type) or a ``NotAnOption`` (where its value comes from instead). The command builds its
arguments from them and reads the parsed values back through ``options_from_arguments``; a run that
starts another run (the rehearsal) turns options back into arguments with ``arguments_of``. Adding an
option is adding one field.

The value types raise ``ArgumentTypeError``: argparse turns a bad value into a one-line usage error.
"""

from __future__ import annotations

import dataclasses
import re
from argparse import ArgumentTypeError
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

OPTION_KEY = "command_option"  # the key of the field metadata


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


def distinct(values: list[str]) -> tuple[str, ...]:
    """A repeatable option's values in the order given, each once."""
    return tuple(dict.fromkeys(values))


@dataclass(frozen=True)
class CommandOption:
    """A field given on the command line. What argparse does with it follows from the field's default:
    a bool is a switch (``--flag`` sets the opposite of the default), a tuple a repeatable option,
    anything else one value of ``type`` (or one of ``choices``)."""

    flags: tuple[str, ...]
    help: str
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    hidden: bool = False  # given by one run to another, not by an operator: left out of --help
    # repeatable: the values given -> the field's value (a malformed one raises MigrationError)
    parse: Callable[[list[str]], tuple[Any, ...]] = distinct
    # repeatable: one item of the field's value -> the argument that gives it back
    format_item: Callable[[Any], str] = str
    # the arguments after the flag that give a value other than the default (the tests parse it back)
    example: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return self.flags[0]


@dataclass(frozen=True)
class NotAnOption:
    """A field no flag sets; ``source`` says what sets it."""

    source: str


def option(*flags: str, help: str, **facts: Any) -> dict[str, CommandOption]:
    """The metadata of a field given on the command line (``facts``: the other ``CommandOption`` fields)."""
    return {OPTION_KEY: CommandOption(flags, help, **facts)}


def not_an_option(source: str) -> dict[str, NotAnOption]:
    return {OPTION_KEY: NotAnOption(source)}


OptionKind = Literal["switch", "repeat", "value"]


@dataclass(frozen=True)
class OptionField:
    name: str
    default: Any
    option: CommandOption

    @property
    def kind(self) -> OptionKind:
        if isinstance(self.default, bool):
            return "switch"
        if isinstance(self.default, tuple):
            return "repeat"
        return "value"


def option_fields(options_class: type) -> list[OptionField]:
    """The fields of the dataclass ``options_class`` given on the command line, in order.

    A field whose metadata says neither how it is given nor what sets it is an error here, at start-up
    of the command, rather than an option the command silently lacks."""
    found: list[OptionField] = []
    for field in dataclasses.fields(options_class):
        described = field.metadata.get(OPTION_KEY)
        if isinstance(described, CommandOption):
            found.append(OptionField(field.name, field.default, described))
        elif not isinstance(described, NotAnOption):
            raise TypeError(
                f"{options_class.__name__}.{field.name} says neither how it is given on the command line "
                "(metadata=option(...)) nor what sets it (metadata=not_an_option(...))"
            )
    return found


def options_from_arguments[Options](options_class: type[Options], values: Mapping[str, Any], **others: Any) -> Options:
    """``options_class`` from the parsed command line (``values`` by field name); ``others`` gives the
    fields no flag sets."""
    given: dict[str, Any] = dict(others)
    for field in option_fields(options_class):
        value = values[field.name]
        given[field.name] = field.option.parse(list(value)) if field.kind == "repeat" else value
    return options_class(**given)


def arguments_of(options: object, names: tuple[str, ...]) -> list[str]:
    """The command-line arguments that give the fields ``names`` of ``options`` (a field at its default
    gives none)."""
    by_name = {field.name: field for field in option_fields(type(options))}
    arguments: list[str] = []
    for name in names:
        field = by_name[name]
        value = getattr(options, name)
        if value == field.default:
            continue
        if field.kind == "switch":
            arguments.append(field.option.flag)
        elif field.kind == "repeat":
            for item in value:
                arguments += [field.option.flag, field.option.format_item(item)]
        else:
            arguments += [field.option.flag, str(value)]
    return arguments
