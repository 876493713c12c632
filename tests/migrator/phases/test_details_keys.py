"""The keys queries read inside the stored details are keys of the types the steps write them with."""

from __future__ import annotations

from migrator.core.details import (
    INSPECTION,
    LEGACY_TIMEZONE,
    CopyDetails,
    InspectDetails,
    RowDetails,
    TimezoneDetails,
    ValidateDetails,
    read_details,
)


def test_the_keys_queries_look_up_are_the_written_types_keys():
    assert LEGACY_TIMEZONE in TimezoneDetails.__optional_keys__
    # the copies and validations that record a zone write it under the same key
    assert LEGACY_TIMEZONE in CopyDetails.__optional_keys__
    assert LEGACY_TIMEZONE in ValidateDetails.__optional_keys__
    assert INSPECTION in InspectDetails.__optional_keys__


def test_the_engines_keys_are_read_from_a_stored_row_as_written():
    stored = {"batches": 2, "message": "10 rows", "range": {"index": 1, "count": 2, "after": None, "through": 5}}
    details = read_details(RowDetails, stored)
    assert details.get("message") == "10 rows"
    assert details["range"]["through"] == 5
    assert read_details(RowDetails, None).get("message", "") == ""
