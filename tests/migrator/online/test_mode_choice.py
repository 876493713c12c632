"""Each scope's mode follows its state: online from ``data --online`` until rollback or finalize, whatever
the options of a later phase."""

from __future__ import annotations

from migrator.modes import OFFLINE, ONLINE, mode_for
from migrator.ops import twoway
from tests.helpers import run
from tests.migrator.online.support import AUTH, OTHER_TENANT, TENANT


def test_a_scope_is_online_while_in_two_way_sync_and_offline_once_rolled_back(synced):
    assert [mode_for(scope) for scope in (AUTH, TENANT, OTHER_TENANT)] == [ONLINE, ONLINE, ONLINE]
    assert mode_for() is OFFLINE  # a whole-run question with no --online

    run("migrate_phase", "rollback", "--tenant", "acme_0001", interactive=False)

    assert not twoway.is_synced(TENANT)
    assert mode_for(TENANT) is OFFLINE
    assert [mode_for(scope) for scope in (AUTH, OTHER_TENANT)] == [ONLINE, ONLINE]
    # data --online copies it online again, before its first capture
    assert mode_for(TENANT, migrating_online=True) is ONLINE
    # read once for many: the same answer
    assert mode_for(TENANT, online_scopes={AUTH, OTHER_TENANT}) is OFFLINE
