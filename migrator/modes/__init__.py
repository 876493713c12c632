"""Migration modes: offline, or online with change capture and two-way sync (docs/online.md).

Between the phases and the SQL operations: phases ask :func:`mode_for` for a scope's
:class:`MigrationMode` and call it where the modes differ; ``online.py`` holds the online work.
"""

from migrator.modes.online import online_scopes
from migrator.modes.strategy import (
    OFFLINE,
    ONLINE,
    MigrationMode,
    OnlineMode,
    beside_synced_writers,
    mode_for,
    remove_online_leftovers,
)

__all__ = [
    "OFFLINE",
    "ONLINE",
    "MigrationMode",
    "OnlineMode",
    "beside_synced_writers",
    "mode_for",
    "online_scopes",
    "remove_online_leftovers",
]
