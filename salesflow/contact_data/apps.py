from django.apps import AppConfig


class ContactDataConfig(AppConfig):
    """Tenant app: namespace ``contact_data`` inside every tenant schema."""

    name = "salesflow.contact_data"
    label = "contact_data"
    verbose_name = "Contact data (per tenant)"
