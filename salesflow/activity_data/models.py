"""Namespace ``activity_data`` of a tenant schema: the tenant's activities."""

from django.db import models

from salesflow.layout import namespaced_table


class Activity(models.Model):
    """A tenant's activity on one of its contacts. Columns keep their legacy names and types.

    Invariants: ``contact`` is in the same tenant schema (deleting it deletes its activities, in the
    database); ``activity_type_id`` is an id of the shared ``activity.activity_types`` and such a
    type cannot be deleted while any tenant uses it.
    """

    id = models.BigAutoField(primary_key=True)
    contact = models.ForeignKey(
        "contact_data.Contact", on_delete=models.DB_CASCADE, related_name="activities", db_index=False
    )
    activity_type = models.ForeignKey(
        "activity.ActivityType", on_delete=models.DO_NOTHING, related_name="+", db_index=False
    )
    subject = models.TextField()
    details = models.TextField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    owner_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = namespaced_table("activity_data", "activities")
        ordering = ["id"]
        verbose_name_plural = "activities"
        indexes = [
            models.Index(fields=["contact"], name="activity_data_contact_idx"),
            models.Index(fields=["activity_type"], name="activity_data_type_idx"),
            models.Index(fields=["due_at"], name="activity_data_due_idx"),
        ]

    def __str__(self) -> str:
        return self.subject
