"""The command-line arguments of run options, built from the facts each option states about itself
(migrator/core/command_options.py)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from migrator.core.command_options import option_fields


def add_options(parser: argparse.ArgumentParser, options_class: type, defaults: Mapping[str, Any] = {}) -> None:
    """One argument for each field of ``options_class`` given on the command line; its value is kept
    under the field's name. ``defaults``: values (by field name) that replace a field's own default."""
    for field in option_fields(options_class):
        option = field.option
        common: dict[str, Any] = {"dest": field.name, "help": argparse.SUPPRESS if option.hidden else option.help}
        if field.kind == "switch":
            parser.add_argument(*option.flags, action="store_false" if field.default else "store_true", **common)
        elif field.kind == "repeat":
            parser.add_argument(*option.flags, action="append", default=[], metavar=option.metavar, **common)
        else:
            value: dict[str, Any] = {"type": option.type, "choices": option.choices, "metavar": option.metavar}
            parser.add_argument(*option.flags, default=defaults.get(field.name, field.default), **value, **common)
