"""The commands as an operator meets them: --help, and bad input ending in one line and a non-zero exit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core.management import CommandError, call_command, get_commands
from django.db import DEFAULT_DB_ALIAS

from migrator.models import MigrationRecord
from tests.helpers import run
from tests.migrator.helpers import manage, manage_env, manage_here, one_line
from tests.stages import point_django_at

PROJECT_APPS = ("migrator", "tenants", "salesflow")
PROJECT_COMMANDS = sorted(name for name, app in get_commands().items() if app.split(".")[0] in PROJECT_APPS)
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nope"


def assert_one_line_failure(child, *fragments: str) -> None:
    assert child.returncode == 1, child.stderr
    assert "Traceback" not in child.stderr
    lines = child.stderr.splitlines()
    assert len(lines) == 1, child.stderr
    assert lines[0].startswith("CommandError: "), child.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_the_project_commands_are_found():
    assert {"migrate_phase", "seed_legacy"} <= set(PROJECT_COMMANDS)


@pytest.mark.parametrize("command", PROJECT_COMMANDS)
def test_every_project_command_has_help(command):
    # no django_db mark: a query would fail the test (help needs no database)
    child = manage_here(command, "--help")

    assert child.returncode == 0, child.stderr
    assert child.stdout.startswith(f"usage: manage.py {command}")
    assert child.stderr == ""


@pytest.mark.django_db
def test_migrate_phase_help_lists_the_phases_and_options(capsys):
    with pytest.raises(SystemExit) as exit_info:
        call_command("migrate_phase", "--help")
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for fragment in (
        "1 prepare",
        "2 schemas",
        "3 data",
        "status",
        "--plan",
        "--check",
        "--jobs",
        "--batch-size",
        "--format",
        "--noinput",
        "--tenant",
        "--validate-only",
        "--reference-conflicts",
        "--leave-constraint",
    ):
        assert fragment in text


def test_an_unknown_phase_is_one_line(clean_db):
    expected = r"^unknown phase 'bogus'; choose one of: 1 prepare, 2 schemas, 3 data, "
    with pytest.raises(CommandError, match=expected) as exc:
        run("migrate_phase", "bogus")
    assert one_line(str(exc.value))

    child = manage_here("migrate_phase", "9")
    assert_one_line_failure(child, "unknown phase '9'; choose one of: 1 prepare")
    assert not MigrationRecord.objects.exists()


def test_an_unknown_tenant_is_one_line(seeded):
    with pytest.raises(
        CommandError,
        match=r"^unknown tenant 'nope': there is no legacy schema tenant_nope in this "
        r"database$",
    ):
        run("migrate_phase", "prepare", interactive=False, tenant=["nope"])

    child = manage_here("migrate_phase", "schemas", "--tenant", "nope", "--noinput")
    assert_one_line_failure(child, "unknown tenant 'nope': not in public.tenants")
    assert not MigrationRecord.objects.exists()


def test_an_invalid_tenant_id_is_one_line(clean_db):
    child = manage_here("migrate_phase", "prepare", "--tenant", "Bad-Name", "--noinput")

    assert_one_line_failure(child, "invalid tenant id 'Bad-Name': tenant ids match ^[a-z][a-z0-9_]{0,55}$")
    assert not MigrationRecord.objects.exists()


@pytest.fixture
def unreachable_database(django_db_blocker: Any) -> Iterator[None]:
    """Django pointed at a server that is not there, as an ``UNREACHABLE`` DATABASE_URL points it (the
    process-level path, the URL read at start-up, is tested by the seed_legacy test below)."""
    default = settings.DATABASES[DEFAULT_DB_ALIAS]
    saved = {key: default[key] for key in ("NAME", "HOST", "PORT")}
    with django_db_blocker.unblock():
        point_django_at({"NAME": "nope", "HOST": "127.0.0.1", "PORT": "1"})
        try:
            yield
        finally:
            point_django_at(saved)


@pytest.mark.parametrize("args", [("prepare",), ("data", "--plan"), ("status", "--check")])
def test_an_unreachable_database_is_one_line(args, unreachable_database):
    child = manage_here("migrate_phase", *args)

    assert_one_line_failure(child, "cannot connect to the database 'nope'", "check DATABASE_URL")


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--jobs", "0"], r"expected 1 or more, got 0"),
        (["--batch-size", "lots"], r"expected a whole number, got 'lots'"),
    ],
)
def test_bad_numbers_are_refused_in_process(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("migrate_phase", "data", *args)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("migrate_phase", "data", "--jobs", "0"), "argument --jobs: expected 1 or more, got 0"),
        (("migrate_phase", "data", "--batch-size", "1e3"), "argument --batch-size: expected a whole number, got '1e3'"),
        (("seed_legacy", "--tenants", "x"), "argument --tenants: expected a whole number, got 'x'"),
    ],
)
def test_bad_numbers_on_the_command_line_are_usage_errors(args, error):
    child = manage_here(*args)  # no django_db mark: refused before any query

    assert child.returncode == 2
    assert "Traceback" not in child.stderr
    assert child.stderr.splitlines()[-1] == f"manage.py {args[0]}: error: {error}"


def test_seed_legacy_with_an_unreachable_database_is_one_line():
    child = manage("seed_legacy", "--tenants", "1", env=manage_env(UNREACHABLE))
    assert_one_line_failure(child, "cannot connect")
