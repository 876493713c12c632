"""The later release's models: the project's models with the fields its migrations add."""

from django.apps import AppConfig, apps
from django.db import models


class LaterReleaseConfig(AppConfig):
    name = "tests.migrator.later_release"
    label = "later_release"

    def ready(self) -> None:
        apps.get_model("accounts.User").add_to_class("timezone", models.TextField(default="UTC"))
        contact = apps.get_model("contact_data.Contact")
        contact.add_to_class("channel", models.TextField(default="email"))
        contact.add_to_class("priority", models.IntegerField(db_default=5))
