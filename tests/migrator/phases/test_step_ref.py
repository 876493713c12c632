"""The tracking key's one format: what databases already hold, read back into its parts."""

from __future__ import annotations

import pytest

from migrator.core.steps import COPY_RANGE, Step
from migrator.step_ref import StepKey, StepRef

VALIDATE = StepRef("data", "validate")


@pytest.mark.parametrize(
    ("key", "migration_id"),
    [
        (StepKey(VALIDATE, "acme_0001", "contact_data_contacts"), "data/acme_0001/validate/contact_data_contacts"),
        (StepKey(VALIDATE, None, "auth.users"), "data/*/validate/auth.users"),
        (StepKey(StepRef("verify", "load_test")), "verify/*/load_test"),
        (
            StepKey(StepRef("rollback", "check_backup"), None, "/backups/db/1.dump"),
            "rollback/*/check_backup//backups/db/1.dump",
        ),
    ],
)
def test_keys_are_written_as_before_and_read_back(key: StepKey, migration_id: str):
    assert key.migration_id == migration_id
    assert StepKey.parse(migration_id) == key


def test_a_step_and_its_ranges_have_the_keys_recorded_so_far():
    step = Step("data", 3, "copy_table", "copy", tenant_id="acme_0001", target="contact_data_contacts")
    assert step.key == VALIDATE.key("acme_0001", "contact_data_contacts").replace("validate", "copy_table")
    assert step.ref == StepRef("data", "copy_table")
    assert step.step_key.range(COPY_RANGE, 3).migration_id == "data/acme_0001/copy_range/contact_data_contacts/3"
    # a range always has its target part, even an empty one
    assert StepKey(VALIDATE).range("validate_range", 1).migration_id == "data/*/validate_range//1"


@pytest.mark.parametrize("migration_id", ["data", "data/acme", "/acme/validate", "data//validate"])
def test_a_string_that_is_not_a_step_key_is_refused(migration_id: str):
    with pytest.raises(ValueError, match="not a step key"):
        StepKey.parse(migration_id)
