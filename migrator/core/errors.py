"""Errors of the migrator."""


class MigrationError(Exception):
    """A problem the operator can fix. The message is one line: what is wrong and what to do."""


class LockHeld(MigrationError):
    """Another migrate_phase holds the migrator lock on this database."""


class LockLost(MigrationError):
    """This run no longer holds the migrator lock (its connection ended): it must stop writing."""
