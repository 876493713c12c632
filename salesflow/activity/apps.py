from django.apps import AppConfig


class ActivityConfig(AppConfig):
    """The activity service's shared reference data, in schema ``activity``."""

    name = "salesflow.activity"
    label = "activity"
    verbose_name = "Activity service"
