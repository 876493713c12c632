import pytest
from django.db import connection


@pytest.mark.django_db
def test_service_tables_exist():
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema IN ('auth','contact','activity')")
        assert cur.fetchone()[0] == 8
