import pytest

from migrator.models import MigrationRecord, Status
from tests.conftest import run


@pytest.mark.django_db(transaction=True)
def test_phases_one_to_three_on_seeded_data(seeded):
    run("migrate_phase", "prepare", interactive=False)
    run("migrate_phase", "schemas", interactive=False, jobs=2)
    run("migrate_phase", "data", interactive=False, batch_size=50)
    from migrator import db

    assert db.fetchvalue("SELECT count(*) FROM tenant_acme_0001.contact_data_contacts") == 120
    assert db.fetchvalue("SELECT count(*) FROM tenant_globex_0002.activity_data_activities") == 240
    assert not MigrationRecord.objects.filter(status=Status.FAILED).exists()
