from django.apps import AppConfig


class AccountsConfig(AppConfig):
    """The auth service's tables, in schema ``auth`` (label ``accounts``: ``auth`` is Django's)."""

    name = "salesflow.accounts"
    label = "accounts"
    verbose_name = "Auth service"
