"""The tenant registry (``public.tenants``, ``public.domains``) on django-tenants."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db import models
from django.db.models.functions import Concat
from django_tenants.models import DomainMixin, TenantMixin

from salesflow.layout import TENANT_ID_PATTERN, TENANT_SCHEMA_PREFIX, is_reserved_schema, tenant_schema_name


class MigrationState(models.TextChoices):
    NEW = "NEW", "New (created in the target layout)"
    REGISTERED = "REGISTERED", "Registered from the legacy layout"
    SCHEMAS_READY = "SCHEMAS_READY", "Namespaced tables created"
    DATA_MIGRATED = "DATA_MIGRATED", "Data migrated and validated"
    SECURED = "SECURED", "Service grants applied"
    VERIFIED = "VERIFIED", "Verified"
    LIVE = "LIVE", "Live (legacy archived)"
    FAILED = "FAILED", "Failed"
    ROLLED_BACK = "ROLLED_BACK", "Rolled back"
    EXCLUDED = "EXCLUDED", "Left out (--skip-schema): legacy tables untouched"


def validate_schema_not_reserved(schema_name: str) -> None:
    conf = settings.SALESFLOW
    if is_reserved_schema(schema_name, conf["LEGACY_AUTH_SCHEMA"], conf["ARCHIVE_SCHEMA"]):
        raise ValidationError(f"schema {schema_name!r} is reserved and cannot belong to a tenant")


class Tenant(TenantMixin):
    """A SalesFlow tenant.

    Invariants: ``schema_name`` is always ``tenant_<tenant_id>`` (enforced by ``save`` and by a
    database constraint), so no tenant can point at ``public``, a service schema, the legacy auth or
    archive schema; ``tenant_id`` matches ``^[a-z][a-z0-9_]{0,55}$``. Deleting a tenant never drops
    its schema (``auto_drop_schema = False``): customer data is only removed deliberately.
    """

    schema_name: str  # TenantMixin's field (django-tenants ships no type information)
    tenant_id = models.CharField(
        max_length=56,
        unique=True,
        validators=[RegexValidator(TENANT_ID_PATTERN, "lowercase letter, then lowercase letters, digits or _")],
    )
    name = models.CharField(max_length=200)
    active = models.BooleanField(default=True)
    migration_state = models.CharField(max_length=20, choices=MigrationState.choices, default=MigrationState.NEW)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    auto_create_schema = True
    auto_drop_schema = False

    class Meta:
        db_table = "tenants"
        ordering = ["tenant_id"]
        indexes = [models.Index(fields=["migration_state"], name="tenants_state_idx")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(tenant_id__regex=TENANT_ID_PATTERN), name="tenants_tenant_id_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(schema_name=Concat(models.Value(TENANT_SCHEMA_PREFIX), "tenant_id")),
                name="tenants_schema_is_tenant_id",
            ),
        ]

    def __str__(self) -> str:
        return self.tenant_id

    def clean(self) -> None:
        super().clean()
        try:
            expected = tenant_schema_name(self.tenant_id)
        except ValueError as exc:
            raise ValidationError({"tenant_id": str(exc)}) from exc
        if self.schema_name and self.schema_name != expected:
            raise ValidationError({"schema_name": f"must be {expected!r} for tenant {self.tenant_id!r}"})
        validate_schema_not_reserved(expected)

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.clean()  # an invalid tenant id is a ValidationError here, before any name is derived from it
        if not self.schema_name:
            self.schema_name = tenant_schema_name(self.tenant_id)
        super().save(*args, **kwargs)


class Domain(DomainMixin):
    class Meta:
        db_table = "domains"
        ordering = ["domain"]

    def __str__(self) -> str:
        return self.domain
