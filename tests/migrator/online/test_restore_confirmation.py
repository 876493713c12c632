"""``rollback --restore`` discards every write since phase 1: its confirmation says how many."""

from __future__ import annotations

from migrator.config import get_config
from migrator.core.context import MigrationContext, RunOptions
from migrator.phases.rollback import RollbackPhase
from tests.migrator.helpers import psycopg_connect, wait_for
from tests.migrator.online.support import on_tenant


def test_the_restore_confirmation_counts_the_writes_since_the_backup(prepared_with_backup):
    phase = RollbackPhase()
    ctx = MigrationContext(config=get_config(), options=RunOptions(restore=True))
    steps = phase.plan(ctx)
    with psycopg_connect() as conn:
        conn.execute(on_tenant("UPDATE {} SET phone = 'after the backup' WHERE id <= 7", "contacts"))
        conn.execute(on_tenant("DELETE FROM {} WHERE id = 9", "activities"))

    # a backend publishes its statistics when it goes idle, at most once a second
    def counted() -> str | None:
        question = phase.confirmation_question(ctx, steps)
        return question if "8 row writes" in question else None

    question = wait_for(counted, what="the writes counted")
    assert "8 row writes to the legacy tables since the backup" in question, question
    assert "every write to the new tables" in question
