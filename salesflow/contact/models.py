"""Contact service reference data in schema ``contact``, merged from every tenant."""

from django.db import models

from salesflow.layout import service_db_table


class ContactType(models.Model):
    """Invariant: ``code`` is unique; tenant contacts point here by id (remapped in phase 3)."""

    id = models.BigAutoField(primary_key=True)
    code = models.TextField(unique=True)
    name = models.TextField()

    class Meta:
        db_table = service_db_table("contact", "contact_types")
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code


class TagCategory(models.Model):
    """Invariant: ``name`` is unique."""

    id = models.BigAutoField(primary_key=True)
    name = models.TextField(unique=True)
    color = models.TextField(null=True, blank=True)

    class Meta:
        db_table = service_db_table("contact", "tag_categories")
        ordering = ["name"]
        verbose_name_plural = "tag categories"

    def __str__(self) -> str:
        return self.name
