from django.apps import AppConfig


class ActivityDataConfig(AppConfig):
    """Tenant app: namespace ``activity_data`` inside every tenant schema."""

    name = "salesflow.activity_data"
    label = "activity_data"
    verbose_name = "Activity data (per tenant)"
