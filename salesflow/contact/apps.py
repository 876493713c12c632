from django.apps import AppConfig


class ContactConfig(AppConfig):
    """The contact service's shared reference data, in schema ``contact``."""

    name = "salesflow.contact"
    label = "contact"
    verbose_name = "Contact service"
