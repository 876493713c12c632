"""Activity service reference data in schema ``activity``, merged from every tenant."""

from django.db import models

from salesflow.layout import service_db_table


class ActivityType(models.Model):
    """Invariant: ``code`` is unique; tenant activities point here by id (remapped in phase 3)."""

    id = models.BigAutoField(primary_key=True)
    code = models.TextField(unique=True)
    name = models.TextField()

    class Meta:
        db_table = service_db_table("activity", "activity_types")
        ordering = ["code"]

    def __str__(self) -> str:
        return self.code
