"""Settings for the SalesFlow migrator.

Configuration comes from the environment only (nothing of a developer's machine lives here):

- ``DATABASE_URL``: PostgreSQL >= 15 to migrate. Unset: an embedded PostgreSQL is started under
  ``SALESFLOW_DATA_DIR`` (default ``.salesflow/`` in the project) and stopped at exit.
- ``SALESFLOW_BACKUP_DIR``: where phase 1 writes its ``pg_dump`` (default ``<data dir>/backups``).
- ``SALESFLOW_LEGACY_AUTH_SCHEMA``, ``SALESFLOW_ARCHIVE_SCHEMA``, ``SALESFLOW_ROLE_PREFIX``.
- ``SALESFLOW_BACKUP_PART_TABLES``: most tables one ``pg_dump`` of phase 1 locks (default: what the
  server's lock table has room for; past it the dump is split in parts that read one snapshot).
- ``SALESFLOW_DEPLOY_LOCK_TIMEOUT``: seconds a deploy (``migrate_schemas``) waits for a phase or another
  deploy that changes the schemas before it is refused (default 60; 0: refuse at once).
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS`` for the admin site.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from salesflow.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent
# An empty variable counts as unset: Path("") is the current folder, never what was meant.
DATA_DIR = Path(os.environ.get("SALESFLOW_DATA_DIR") or BASE_DIR / ".salesflow")

# A fixed key is fine for a local operator tool; deployments set DJANGO_SECRET_KEY.
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "salesflow-migrator-local-only-key")
DEBUG = os.environ.get("DJANGO_DEBUG", "") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h]

SHARED_APPS = [
    "django_tenants",
    "tenants",
    "migrator",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    # Service apps: their models live in the auth / contact / activity schemas (see salesflow.layout).
    "salesflow.accounts",
    "salesflow.contact",
    "salesflow.activity",
]
TENANT_APPS = [
    "salesflow.contact_data",
    "salesflow.activity_data",
]
INSTALLED_APPS = SHARED_APPS + [app for app in TENANT_APPS if app not in SHARED_APPS]

TENANT_MODEL = "tenants.Tenant"
TENANT_DOMAIN_MODEL = "tenants.Domain"
PUBLIC_SCHEMA_NAME = "public"
DATABASE_ROUTERS = ["django_tenants.routers.TenantSyncRouter"]
# Set search_path once per connection and schema change, not before every cursor: fewer round trips,
# and a SET LOCAL inside a transaction (migrator.db.local_settings) is not undone by the next cursor.
TENANT_LIMIT_SET_CALLS = True

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "salesflow.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]
WSGI_APPLICATION = "salesflow.wsgi.application"

DATABASES = {
    "default": {
        # django-tenants' backend plus the fixes for service tables in their own schemas.
        "ENGINE": "salesflow.db_backend",
        **database_settings(BASE_DIR),
        "CONN_MAX_AGE": 0,
        "TEST": {"NAME": os.environ.get("SALESFLOW_TEST_DATABASE") or None},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS: list[dict[str, str]] = []
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
LOGIN_URL = "admin:login"

SALESFLOW: dict[str, Any] = {
    "LEGACY_AUTH_SCHEMA": os.environ.get("SALESFLOW_LEGACY_AUTH_SCHEMA", "salesflow_auth"),
    "ARCHIVE_SCHEMA": os.environ.get("SALESFLOW_ARCHIVE_SCHEMA", "salesflow_archive"),
    "ROLE_PREFIX": os.environ.get("SALESFLOW_ROLE_PREFIX", "salesflow"),
    "BACKUP_DIR": Path(os.environ.get("SALESFLOW_BACKUP_DIR") or DATA_DIR / "backups"),
    "BIN_DIRS": [p for p in os.environ.get("SALESFLOW_PG_BIN_DIRS", "").split(os.pathsep) if p],
    # Phase 1 dumps in parts of at most this many tables (default: what the server's lock table has room for).
    "BACKUP_PART_TABLES": os.environ.get("SALESFLOW_BACKUP_PART_TABLES") or None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"migrator": {"handlers": ["console"], "level": os.environ.get("SALESFLOW_LOG_LEVEL", "WARNING")}},
}

# migrate_schemas (deploys): only the tenant schemas that are behind, in parallel; a failed schema does not
# stop the others (tenants/migration_executor.py). --executor standard is the one-schema-at-a-time way.
TENANT_MIGRATION_EXECUTOR = "behind-only"
TENANT_MULTIPROCESSING_MAX_PROCESSES = 2
# django-tenants reads --executor and EXECUTOR only; this falls back to TENANT_MIGRATION_EXECUTOR.
GET_EXECUTOR_FUNCTION = "tenants.migration_executor.get_executor"
# Longest wait of a deploy for a migrate_phase phase (or another deploy) changing the schemas, in seconds
# (tenants/schema_lock.py); 0: refuse at once.
TENANT_DEPLOY_LOCK_TIMEOUT = float(os.environ.get("SALESFLOW_DEPLOY_LOCK_TIMEOUT") or 60)
