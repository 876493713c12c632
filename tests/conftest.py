"""Shared fixtures: the stages of a migration as cloned databases, and the migrator's settings.

Phase tests cannot run inside one transaction: the migrator commits batch by batch and runs tenants on
several connections. A test that starts from a stage (``clean_db``, ``seeded``, and ``prepared``,
``schemas_ready``, ``migrated`` in tests/migrator/conftest.py) runs on a fresh copy of that stage's
template database (see tests/stages.py) and carries no ``django_db`` mark: the test database itself is
never written, so it needs neither a transaction to roll back nor a flush afterwards. The service roles
the test made are dropped afterwards (roles are cluster-wide). Helpers live in tests/helpers.py.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import DEFAULT_DB_ALIAS, connection

from tests.stages import StageDatabases, drop_templates, make_tablespace, seeded_data


def pytest_configure(config: pytest.Config) -> None:
    """Passwords of the tests' users hashed in microseconds: the default hasher's second per user is
    its protection against offline guessing, which test users do not need."""
    from django.conf import settings

    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def drop_run_templates(config: pytest.Config, then_make_tablespace: bool = False) -> None:
    """Drop the stage templates and the tablespace of runs on this test database (and make this run's): by the
    process that starts and ends the run (xdist's controller, or the only process), when no worker uses them."""
    if hasattr(config, "workerinput"):
        return
    from django.conf import settings
    from django.db import connections

    if "default" not in settings.DATABASES:
        return
    default = connections[DEFAULT_DB_ALIAS]
    conf, test_database = dict(default.settings_dict), default.creation._get_test_db_name()
    drop_templates(conf, test_database)
    if then_make_tablespace:
        make_tablespace(conf, test_database)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``long`` first (in their order): the workers share the rest out as they go, and a long test
    that one worker starts near the end would keep the whole run waiting while the other worker idles."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the run keeps to its end (Django, the modules, the collected tests) moved out of the garbage
    collector's sight: its full collections no longer walk them again and again."""
    gc.collect()
    gc.freeze()


def pytest_sessionstart(session: pytest.Session) -> None:
    drop_run_templates(session.config, then_make_tablespace=True)  # a killed run's; before the workers start


def pytest_sessionfinish(session: pytest.Session) -> None:
    drop_run_templates(session.config)  # this run's


@pytest.fixture(autouse=True)
def migrator_settings(settings: Any, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Backups in a temporary folder; service roles with a prefix of this test run (roles are cluster-wide)."""
    settings.SALESFLOW = {
        **settings.SALESFLOW,
        "BACKUP_DIR": tmp_path_factory.mktemp("backups"),
        "ROLE_PREFIX": f"sftest{os.getpid()}",
    }


@pytest.fixture(scope="session")
def django_db_setup(
    request: pytest.FixtureRequest,
    django_test_environment: None,
    django_db_blocker: Any,
    django_db_keepdb: bool,
    django_db_createdb: bool,
    django_db_modify_db_settings: None,
) -> Iterator[None]:
    """pytest-django's test database setup, for the default database whatever the tests' marks say.

    pytest-django creates only the databases that marked tests ask for; stage tests carry no mark.
    """
    from django.test.utils import setup_databases, teardown_databases

    keepdb = django_db_keepdb and not django_db_createdb
    with django_db_blocker.unblock():
        config = setup_databases(
            verbosity=request.config.option.verbose,
            interactive=False,
            aliases={DEFAULT_DB_ALIAS},
            serialized_aliases=set(),
            keepdb=keepdb,
        )
    yield
    if not keepdb:
        with django_db_blocker.unblock():
            teardown_databases(config, verbosity=request.config.option.verbose)


@pytest.fixture(scope="session")
def stage_databases(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StageDatabases]:
    """The stage templates of this run (built on first use); this worker's working copies are dropped at the
    end, and leftovers of a killed run at the start."""
    stages = StageDatabases(connection.settings_dict["NAME"], tmp_path_factory.mktemp("stage-backups"))
    with django_db_blocker.unblock():
        stages.drop_working_copies()
    yield stages
    with django_db_blocker.unblock():
        stages.drop_working_copies()


@pytest.fixture
def stage_db(stage_databases: StageDatabases, django_db_blocker: Any) -> Iterator[StageDatabases]:
    """For a test that starts from a stage: the database is a copy of it until the test ends.

    The fixture opens database access itself, and such a test carries no ``django_db`` mark: the
    test database is never written (the copy is dropped instead), so pytest-django's flush after a
    transactional test would only cost time (more than the copy itself).
    """
    with django_db_blocker.unblock():
        try:
            yield stage_databases
        finally:
            stage_databases.release()


@pytest.fixture(autouse=True)
def stage_tests_carry_no_django_db_mark(request: pytest.FixtureRequest) -> None:
    """A stage test with a ``django_db`` mark would flush the untouched test database afterwards."""
    names = request.fixturenames
    if "stage_db" in names and "live_server" not in names and request.node.get_closest_marker("django_db"):
        # live_server: its server thread needs pytest-django's own setup
        pytest.fail(f"{request.node.nodeid} starts from a stage (a database copy of its own): drop its django_db mark")


@pytest.fixture
def clean_db(stage_db: StageDatabases) -> None:
    """The database as migrations left it: no legacy data, no migrator state."""
    stage_db.use("clean")


@pytest.fixture
def seeded(stage_db: StageDatabases) -> dict[str, Any]:
    """Three tenants (2 with data, 1 empty) of legacy data."""
    stage_db.use("seeded")
    return seeded_data()
