"""The tracking key's one format: what databases already hold, read back into its parts."""

from __future__ import annotations

import pytest

from migrator.core.steps import COPY_RANGE, Step
from migrator.step_ref import StepKey, StepRef, Target

VALIDATE = StepRef("data", "validate")


@pytest.mark.parametrize(
    ("key", "migration_id"),
    [
        (
            StepKey(VALIDATE, "acme_0001", Target("contact_data_contacts")),
            "data/acme_0001/validate/contact_data_contacts",
        ),
        (StepKey(VALIDATE, None, Target.auth_table("users")), "data/*/validate/auth.users"),
        (StepKey(StepRef("verify", "load_test")), "verify/*/load_test"),
        (
            StepKey(StepRef("rollback", "check_backup"), None, Target("/backups/db/1.dump")),
            "rollback/*/check_backup//backups/db/1.dump",
        ),
    ],
)
def test_keys_are_written_as_before_and_read_back(key: StepKey, migration_id: str):
    assert key.migration_id == migration_id
    assert StepKey.parse(migration_id) == key


def test_a_step_and_its_ranges_have_the_keys_recorded_so_far():
    step = Step("data", 3, "copy_table", "copy", tenant_id="acme_0001", target=Target("contact_data_contacts"))
    assert step.key == VALIDATE.key("acme_0001", Target("contact_data_contacts")).replace("validate", "copy_table")
    assert step.ref == StepRef("data", "copy_table")
    assert step.step_key.range(COPY_RANGE, 3).migration_id == "data/acme_0001/copy_range/contact_data_contacts/3"
    # a range always has its target part, even an empty one
    assert StepKey(VALIDATE).range("validate_range", 1).migration_id == "data/*/validate_range//1"


@pytest.mark.parametrize("migration_id", ["data", "data/acme", "/acme/validate", "data//validate"])
def test_a_string_that_is_not_a_step_key_is_refused(migration_id: str):
    with pytest.raises(ValueError, match="not a step key"):
        StepKey.parse(migration_id)


@pytest.mark.parametrize(
    ("target", "text"),
    [
        (Target("contact_data_contacts"), "contact_data_contacts"),
        (Target.auth_table("users"), "auth.users"),
        # a dot in a name that is not a namespace's stays in the name
        (Target("/backups/db/1.dump"), "/backups/db/1.dump"),
        (Target("salesflow.rehearsal"), "salesflow.rehearsal"),
        (Target(), ""),
    ],
)
def test_a_target_is_written_as_before_and_read_back(target: Target, text: str):
    assert str(target) == text
    assert Target.parse(text) == target


def test_a_step_is_labelled_with_its_target_text():
    step = Step("data", 3, "validate", "compare", target=Target.auth_table("users"))
    assert step.label == "[all] validate auth.users"
    assert Step("verify", 5, "load_test", "measure").label == "[all] load_test"
