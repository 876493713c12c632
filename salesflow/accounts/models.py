"""Auth service tables in schema ``auth``: same columns and ids as the legacy auth schema."""

from django.db import models

from salesflow.layout import service_db_table


class User(models.Model):
    """A user account shared by all tenants. Invariant: ``email`` is unique across the service."""

    id = models.BigAutoField(primary_key=True)
    email = models.TextField(unique=True)
    password_hash = models.TextField()
    full_name = models.TextField(null=True, blank=True)
    is_active = models.BooleanField(default=True, db_default=True)
    created_at = models.DateTimeField()

    class Meta:
        db_table = service_db_table("auth", "users")
        ordering = ["id"]

    def __str__(self) -> str:
        return self.email


class Role(models.Model):
    id = models.BigAutoField(primary_key=True)
    name = models.TextField(unique=True)
    description = models.TextField(null=True, blank=True)

    class Meta:
        db_table = service_db_table("auth", "roles")
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name


class Permission(models.Model):
    id = models.BigAutoField(primary_key=True)
    code = models.TextField(unique=True)
    description = models.TextField(null=True, blank=True)

    class Meta:
        db_table = service_db_table("auth", "permissions")
        ordering = ["id"]

    def __str__(self) -> str:
        return self.code


class RolePermission(models.Model):
    """Invariant: one row per (role, permission); deleting either side deletes the link in the database."""

    pk = models.CompositePrimaryKey("role_id", "permission_id")
    role = models.ForeignKey(Role, on_delete=models.DB_CASCADE)
    permission = models.ForeignKey(Permission, on_delete=models.DB_CASCADE)

    class Meta:
        db_table = service_db_table("auth", "role_permissions")
        ordering = ["role_id", "permission_id"]

    def __str__(self) -> str:
        return f"role {self.role_id}: permission {self.permission_id}"


class UserRole(models.Model):
    """Invariant: one row per (user, role); ``tenant_id`` scopes the grant to one tenant when set."""

    pk = models.CompositePrimaryKey("user_id", "role_id")
    user = models.ForeignKey(User, on_delete=models.DB_CASCADE)
    role = models.ForeignKey(Role, on_delete=models.DB_CASCADE)
    tenant_id = models.TextField(null=True, blank=True)

    class Meta:
        db_table = service_db_table("auth", "user_roles")
        ordering = ["user_id", "role_id"]

    def __str__(self) -> str:
        return f"user {self.user_id}: role {self.role_id}"
