"""Every run option is one field of RunOptions: the command's arguments come from the fields' metadata."""

from __future__ import annotations

import dataclasses

import pytest

from migrator.core.command_options import (
    OPTION_KEY,
    CommandOption,
    NotAnOption,
    arguments_of,
    not_an_option,
    option,
    option_fields,
    options_from_arguments,
)
from migrator.core.context import RunOptions
from migrator.management.commands.migrate_phase import Command

FIELDS = dataclasses.fields(RunOptions)
OPTIONS = {field.name: field for field in option_fields(RunOptions)}


def migrate_phase_parser():
    return Command().create_parser("manage.py", "migrate_phase")


def parsed(*arguments: str) -> RunOptions:
    values = vars(migrate_phase_parser().parse_args(["data", *arguments]))
    return options_from_arguments(RunOptions, values, render_sql=False)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("field", FIELDS, ids=[field.name for field in FIELDS])
def test_every_field_says_how_it_is_given_or_what_sets_it(field):
    assert isinstance(field.metadata.get(OPTION_KEY), CommandOption | NotAnOption), (
        f"RunOptions.{field.name}: add metadata=option(...) or metadata=not_an_option(...)"
    )


def test_a_field_that_says_nothing_stops_the_command_from_building_its_arguments():
    @dataclasses.dataclass(frozen=True)
    class Options:
        given: bool = dataclasses.field(default=False, metadata=option("--given", help="a switch"))
        derived: bool = dataclasses.field(default=False, metadata=not_an_option("computed"))
        forgotten: int = 3

    with pytest.raises(TypeError, match=r"Options\.forgotten says neither"):
        option_fields(Options)


@pytest.mark.parametrize("name", OPTIONS)
def test_every_option_is_in_help_and_parses_back_to_its_field(name):
    field = OPTIONS[name]
    flags, help_text = field.option.flags, flat(migrate_phase_parser().format_help())
    if field.option.hidden:
        assert all(flag not in help_text for flag in flags)
    else:
        assert all(flag in help_text for flag in flags)
        assert flat(field.option.help) in help_text
    if field.kind != "switch":
        assert field.option.example, f"RunOptions.{name}: give an example value (example=(...))"

    for flag in flags:
        options = parsed(flag, *field.option.example)

        assert getattr(options, name) != field.default
        assert arguments_of(options, (name,)) == [field.option.flag, *field.option.example]
        # the other fields keep their defaults
        assert dataclasses.replace(options, **{name: field.default}) == RunOptions()


def test_no_arguments_are_the_defaults_and_give_back_no_arguments():
    options = parsed()

    assert options == RunOptions()
    assert arguments_of(options, tuple(OPTIONS)) == []


def test_repeated_options_keep_each_value_once_in_the_order_given():
    options = parsed(
        "--skip-schema",
        "tenant_b",
        "--skip-schema",
        "tenant_a",
        "--skip-schema",
        "tenant_b",
        "--rename-schema",
        "tenant_X=x",
        "--leave-constraint",
        "tenant_*.contacts.email_has_at",
    )

    assert options.skip_schemas == ("tenant_b", "tenant_a")
    assert options.rename_schemas == (("tenant_X", "x"),)
    assert options.leave_constraints == (("tenant_*", "contacts", "email_has_at"),)
    assert arguments_of(options, ("skip_schemas", "rename_schemas")) == [
        "--skip-schema",
        "tenant_b",
        "--skip-schema",
        "tenant_a",
        "--rename-schema",
        "tenant_X=x",
    ]
