"""Reading the settings' environment variables, and the one-line error when one is missing or unsafe."""

from __future__ import annotations

import os

from django.core.exceptions import ImproperlyConfigured

# Django's own test for a key it would warn about in `check --deploy` (security.W009).
SECRET_KEY_MIN_LENGTH, SECRET_KEY_MIN_UNIQUE_CHARACTERS = 50, 5


class SettingsError(ImproperlyConfigured):
    """The environment asks for a profile it does not fully configure; the message says what to set."""


def flag(name: str, default: bool) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``; unset or empty: the default."""
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name}={value!r} is not a yes/no value: set it to 1 or 0")


def integer(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a whole number") from None


def optional_number[N: (int, float)](name: str, kind: type[N], minimum: N, maximum: N | None = None) -> N | None:
    """A number from ``minimum`` to ``maximum`` (``kind``: int or float); unset or empty: None."""
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        number = kind(value)
    except ValueError:
        raise SettingsError(f"{name}={value!r} is not a {'whole number' if kind is int else 'number'}") from None
    if number < minimum or (maximum is not None and number > maximum):
        bounds = f"from {minimum} to {maximum}" if maximum is not None else f"{minimum} or more"
        raise SettingsError(f"{name}={value!r} is out of range: set it {bounds}")
    return number


def production_secret_key(local_default: str) -> str:
    key = os.environ.get("DJANGO_SECRET_KEY", "")
    weak = len(key) < SECRET_KEY_MIN_LENGTH or len(set(key)) < SECRET_KEY_MIN_UNIQUE_CHARACTERS
    if not key or key == local_default or weak or key.startswith("django-insecure-"):
        raise SettingsError(
            "DJANGO_ENV=production needs DJANGO_SECRET_KEY set to a random value of at least "
            f"{SECRET_KEY_MIN_LENGTH} characters, e.g. python -c 'import secrets; print(secrets.token_urlsafe(50))'"
        )
    return key


def production_allowed_hosts() -> list[str]:
    hosts = [h.strip() for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "").split(",") if h.strip()]
    if not hosts:
        raise SettingsError(
            "DJANGO_ENV=production needs DJANGO_ALLOWED_HOSTS: the host names the admin is served under, "
            "comma-separated (e.g. migrator.example.com)"
        )
    return hosts


def proxy_ssl_header() -> tuple[str, str] | None:
    """``SALESFLOW_PROXY_SSL_HEADER``: the header a TLS-terminating proxy sets, e.g. ``HTTP_X_FORWARDED_PROTO``
    (``HTTP_X_FORWARDED_PROTO=https`` names the value too; the default value is ``https``)."""
    value = os.environ.get("SALESFLOW_PROXY_SSL_HEADER", "").strip()
    if not value:
        return None
    header, _, expected = value.partition("=")
    if not header.startswith("HTTP_"):
        raise SettingsError(
            f"SALESFLOW_PROXY_SSL_HEADER={value!r} must name a request header as Django sees it, "
            "e.g. HTTP_X_FORWARDED_PROTO"
        )
    return header, expected or "https"
