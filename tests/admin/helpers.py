"""What the admin tests share besides fixtures: the tracking rows' clock, the operators' password and
users, and a phase-1 register row's details."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import Permission, User

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
PASSWORD = "operator-password"


def register_details(contacts: int, activities: int, contact_types: int = 3) -> dict[str, Any]:
    """``details`` of a phase-1 register row, shaped like the inspection report."""
    return {
        "inspection": {
            "schema": "x",
            "missing": [],
            "unmapped": {},
            "tables": {
                "contact_types": {"rows": contact_types, "columns": 3},
                "contacts": {"rows": contacts, "columns": 11},
                "activities": {"rows": activities, "columns": 9},
            },
        }
    }


def staff_user(username: str, *permissions: str) -> User:
    user = User.objects.create_user(username, f"{username}@example.com", PASSWORD, is_staff=True)
    for codename in permissions:
        app_label, code = codename.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=code))
    return user
