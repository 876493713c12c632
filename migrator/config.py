"""The migrator's configuration, read from ``settings.SALESFLOW`` in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from salesflow.layout import SERVICES


@dataclass(frozen=True)
class MigratorConfig:
    legacy_auth_schema: str
    archive_schema: str
    role_prefix: str
    backup_dir: Path
    bin_dirs: tuple[str, ...]
    backup_part_tables: int | None = None  # phase 1: most tables one pg_dump locks (default: the lock table's room)
    # phase 3: a tenant table of more rows than this is copied and validated in key ranges of about this
    # many rows, spread over the --jobs connections (docs/reliability.md, "Large tables in ranges")
    range_rows: int = 100_000
    # phase 5: the site's defaults of --load-seconds and --load-queries (None: the option's own default)
    load_seconds: float | None = None
    load_queries: int | None = None

    def option_defaults(self) -> dict[str, Any]:
        """Run options whose default this site sets (by ``RunOptions`` field name)."""
        site = {"load_seconds": self.load_seconds, "load_queries": self.load_queries}
        return {name: value for name, value in site.items() if value is not None}

    def service_role(self, service: str) -> str:
        return f"{self.role_prefix}_{service}"

    @property
    def service_roles(self) -> dict[str, str]:
        return {service: self.service_role(service) for service in SERVICES}


def get_config() -> MigratorConfig:
    conf = settings.SALESFLOW
    return MigratorConfig(
        legacy_auth_schema=conf["LEGACY_AUTH_SCHEMA"],
        archive_schema=conf["ARCHIVE_SCHEMA"],
        role_prefix=conf["ROLE_PREFIX"],
        backup_dir=Path(conf["BACKUP_DIR"]),
        bin_dirs=tuple(conf.get("BIN_DIRS", ())),
        backup_part_tables=int(conf["BACKUP_PART_TABLES"]) if conf.get("BACKUP_PART_TABLES") else None,
        range_rows=int(conf.get("RANGE_ROWS") or 100_000),
        load_seconds=conf.get("LOAD_SECONDS"),
        load_queries=conf.get("LOAD_QUERIES"),
    )
