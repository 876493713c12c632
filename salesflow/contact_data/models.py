"""Namespace ``contact_data`` of a tenant schema: the tenant's contacts."""

from django.db import models

from salesflow.layout import namespaced_table


class Contact(models.Model):
    """A tenant's contact. Columns keep their legacy names and types.

    Invariants: ``contact_type_id`` is an id of the shared ``contact.contact_types`` (the database
    sets it NULL when that type is deleted, in every tenant at once); ``owner_id`` is an auth user
    id with no foreign key, because auth is another service.
    """

    id = models.BigAutoField(primary_key=True)
    first_name = models.TextField(null=True, blank=True)
    last_name = models.TextField(null=True, blank=True)
    email = models.TextField(null=True, blank=True)
    phone = models.TextField(null=True, blank=True)
    company = models.TextField(null=True, blank=True)
    contact_type = models.ForeignKey(
        "contact.ContactType",
        null=True,
        blank=True,
        on_delete=models.DB_SET_NULL,
        related_name="+",
        db_index=False,
    )
    owner_id = models.BigIntegerField(null=True, blank=True)
    custom_fields = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = namespaced_table("contact_data", "contacts")
        ordering = ["id"]
        indexes = [
            models.Index(fields=["email"], name="contact_data_email_idx"),
            models.Index(fields=["contact_type"], name="contact_data_type_idx"),
            models.Index(fields=["owner_id"], name="contact_data_owner_idx"),
        ]

    def __str__(self) -> str:
        return " ".join(part for part in (self.first_name, self.last_name) if part) or f"contact {self.pk}"
