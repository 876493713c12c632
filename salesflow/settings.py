"""Settings for the SalesFlow migrator.

Configuration comes from the environment only (nothing of a developer's machine lives here):

- ``DATABASE_URL``: PostgreSQL >= 15 to migrate. Unset: an embedded PostgreSQL is started under
  ``SALESFLOW_DATA_DIR`` (default ``.salesflow/`` in the project) and stopped at exit.
- ``SALESFLOW_BACKUP_DIR``: where phase 1 writes its ``pg_dump`` (default ``<data dir>/backups``).
- ``SALESFLOW_LEGACY_AUTH_SCHEMA``, ``SALESFLOW_ARCHIVE_SCHEMA``, ``SALESFLOW_ROLE_PREFIX``.
- ``SALESFLOW_BACKUP_PART_TABLES``: most tables one ``pg_dump`` of phase 1 locks (default: what the
  server's lock table has room for; past it the dump is split in parts that read one snapshot).
- ``SALESFLOW_RANGE_ROWS``: phase 3 copies and validates a tenant table of more rows in key ranges of
  about this many rows, spread over the ``--jobs`` connections (default 100,000).
- ``SALESFLOW_DEPLOY_LOCK_TIMEOUT``: seconds a deploy (``migrate_schemas``) waits for a phase or another
  deploy that changes the schemas before it is refused (default 60; 0: refuse at once).
- ``DJANGO_SECRET_KEY``, ``DJANGO_DEBUG``, ``DJANGO_ALLOWED_HOSTS`` for the admin site.
- ``DJANGO_ENV=production``: the admin served by gunicorn (docs/admin.md). ``DJANGO_SECRET_KEY`` and
  ``DJANGO_ALLOWED_HOSTS`` are then required, ``DEBUG`` is off, cookies are secure, static files come from
  ``collectstatic`` (``SALESFLOW_STATIC_ROOT``, default ``<data dir>/static``) through WhiteNoise;
  ``SALESFLOW_SSL_REDIRECT``, ``SALESFLOW_HSTS_SECONDS`` and ``SALESFLOW_PROXY_SSL_HEADER`` fit it to a
  TLS-terminating proxy.
- ``SALESFLOW_LOGIN_FAILURE_LIMIT``, ``SALESFLOW_LOGIN_COOLOFF_MINUTES``: failed admin logins before a lock.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.utils.csp import CSP

from salesflow import environment
from salesflow.database import database_settings

BASE_DIR = Path(__file__).resolve().parent.parent
# An empty variable counts as unset: Path("") is the current folder, never what was meant.
DATA_DIR = Path(os.environ.get("SALESFLOW_DATA_DIR") or BASE_DIR / ".salesflow")

DJANGO_ENV = os.environ.get("DJANGO_ENV", "").strip().lower() or "local"
if DJANGO_ENV not in {"local", "production"}:
    raise environment.SettingsError(f"DJANGO_ENV={DJANGO_ENV!r} is not a profile: use production, or leave it unset")
PRODUCTION = DJANGO_ENV == "production"

# A fixed key is fine for a local operator tool; the production profile refuses it.
LOCAL_SECRET_KEY = "salesflow-migrator-local-only-key"
if PRODUCTION:
    SECRET_KEY = environment.production_secret_key(LOCAL_SECRET_KEY)
    ALLOWED_HOSTS = environment.production_allowed_hosts()
    if environment.flag("DJANGO_DEBUG", False):
        raise environment.SettingsError("DJANGO_ENV=production runs with DEBUG off: unset DJANGO_DEBUG")
    DEBUG = False
else:
    SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", LOCAL_SECRET_KEY)
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
    # Failed admin logins, and the locks they lead to (tables in public).
    "axes",
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
    "django.middleware.csp.ContentSecurityPolicyMiddleware",
    "salesflow.middleware.RefuseNulInQuery",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a refused login into the lockout response.
    "axes.middleware.AxesMiddleware",
]
if PRODUCTION:
    # Static files from the application itself, right after the security middleware (WhiteNoise's place).
    MIDDLEWARE.insert(1, "whitenoise.middleware.WhiteNoiseMiddleware")

# Content-Security-Policy on every response: scripts, styles, images and fonts from this site only, no plugin,
# no framing, forms posted here only. Inline styles are allowed (the dashboard's bars are style="width: N%"
# attributes, so they show without JavaScript); inline and injected scripts are not.
SECURE_CSP = {
    "default-src": [CSP.SELF],
    "script-src": [CSP.SELF],
    "style-src": [CSP.SELF, CSP.UNSAFE_INLINE],
    "img-src": [CSP.SELF, "data:"],
    "object-src": [CSP.NONE],
    "base-uri": [CSP.NONE],
    "frame-ancestors": [CSP.NONE],
    "form-action": [CSP.SELF],
}

# django-axes first: it refuses a locked-out login before the password is even checked.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = environment.integer("SALESFLOW_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=environment.integer("SALESFLOW_LOGIN_COOLOFF_MINUTES", 15))
# A user name from one address: behind a proxy every request comes from the proxy's address, so locking
# addresses alone would lock every operator out at once.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]

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
# `collectstatic` writes here; the production profile serves it (WhiteNoise), compressed, with hashed names.
STATIC_ROOT = Path(os.environ.get("SALESFLOW_STATIC_ROOT") or DATA_DIR / "static")
STORAGES: dict[str, dict[str, Any]] = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
LOGIN_URL = "admin:login"

SALESFLOW: dict[str, Any] = {
    "LEGACY_AUTH_SCHEMA": os.environ.get("SALESFLOW_LEGACY_AUTH_SCHEMA", "salesflow_auth"),
    "ARCHIVE_SCHEMA": os.environ.get("SALESFLOW_ARCHIVE_SCHEMA", "salesflow_archive"),
    "ROLE_PREFIX": os.environ.get("SALESFLOW_ROLE_PREFIX", "salesflow"),
    "BACKUP_DIR": Path(os.environ.get("SALESFLOW_BACKUP_DIR") or DATA_DIR / "backups"),
    "BIN_DIRS": [p for p in os.environ.get("SALESFLOW_PG_BIN_DIRS", "").split(os.pathsep) if p],
    # Phase 1 dumps in parts of at most this many tables (default: what the server's lock table has room for).
    "BACKUP_PART_TABLES": os.environ.get("SALESFLOW_BACKUP_PART_TABLES") or None,
    # phase 3: tenant tables of more rows are copied and validated in key ranges of about this many rows
    "RANGE_ROWS": environment.integer("SALESFLOW_RANGE_ROWS", 100_000),
    # Phase 5's load test: this site's defaults of --load-seconds and --load-queries (None: the option's own)
    "LOAD_SECONDS": environment.optional_number("SALESFLOW_LOAD_SECONDS", float, 0.001, 3600.0),
    "LOAD_QUERIES": environment.optional_number("SALESFLOW_LOAD_QUERIES", int, 0),
    # How often the open dashboard asks for fresh numbers while a phase runs.
    "DASHBOARD_REFRESH_SECONDS": environment.integer("SALESFLOW_DASHBOARD_REFRESH_SECONDS", 5),
}

if PRODUCTION:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    # Behind a TLS-terminating proxy: the header it sets on HTTPS requests (unset: gunicorn speaks TLS itself,
    # or the proxy and the application are on one trusted host and it is set).
    SECURE_PROXY_SSL_HEADER = environment.proxy_ssl_header()
    SECURE_SSL_REDIRECT = environment.flag("SALESFLOW_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = environment.integer("SALESFLOW_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = environment.flag("SALESFLOW_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = environment.flag("SALESFLOW_HSTS_PRELOAD", False)
    # Turned off on purpose, because the proxy redirects to HTTPS or sends HSTS itself: not a finding. Nor is
    # staying off the browsers' HSTS preload list, a commitment for the whole domain that is its owner's to make.
    SILENCED_SYSTEM_CHECKS = [
        *(["security.W008"] if not SECURE_SSL_REDIRECT else []),
        *(["security.W004"] if not SECURE_HSTS_SECONDS else []),
        *(["security.W021"] if not SECURE_HSTS_PRELOAD else []),
    ]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "migrator": {"handlers": ["console"], "level": os.environ.get("SALESFLOW_LOG_LEVEL", "WARNING")},
        # A request that fails (a 500) with its traceback, whatever DEBUG: Django's own console handler
        # writes only with DEBUG on, and production has no ADMINS to mail it to. Not propagated, so a
        # DEBUG run does not print it twice.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
    },
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
