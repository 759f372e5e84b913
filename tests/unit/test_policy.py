"""The policy table (schemas/policy.py) and the UID grammar (schemas/uids.py): pure, no server."""

from __future__ import annotations

import pytest

from schemas.policy import POLICY, ROLES, Action, may, roles_that
from schemas.uids import is_uid


def test_every_action_is_granted_to_someone_and_the_administrator_may_not_write_reports() -> None:
    for action in Action:
        assert roles_that(action), f"nobody may {action}"
    assert not may("administrator", Action.WRITE_REPORTS)  # reports are written by radiologists
    assert may("administrator", Action.AMEND_REPORTS)
    # full-import requests are the administrator's; an agent only answers them
    assert roles_that(Action.REQUEST_TRANSFERS) == {"administrator"}
    # rebuilding read models while serving is the administrator's alone
    assert roles_that(Action.REBUILD) == {"administrator"}
    # orders and patients' records come from the MIS alone (over HL7)
    assert roles_that(Action.PLACE_ORDERS) == roles_that(Action.UPDATE_PATIENTS) == {"mis"}


def test_reading_images_implies_reading_patient_data() -> None:
    # a study page or a retrieve shows the patient's name: no role may have one without the other
    assert roles_that(Action.READ_IMAGES) <= roles_that(Action.READ_PATIENT_DATA)


@pytest.mark.parametrize(
    ("role", "allowed"),
    [
        ("auditor", {Action.READ_PATIENT_DATA, Action.AUDIT}),
        ("regional-it", {Action.MONITOR}),
        ("modality", {Action.STORE, Action.READ_WORKLIST}),
        ("mis", {Action.PLACE_ORDERS, Action.UPDATE_PATIENTS, Action.WRITE_REPORTS, Action.AMEND_REPORTS}),
        ("agent", {Action.STORE, Action.REPORT_TRANSFERS}),
        ("analyst", set()),
        ("referring-doctor", {Action.READ_PATIENT_DATA, Action.READ_IMAGES}),
    ],
)
def test_what_each_role_may_do(role: str, allowed: set[Action]) -> None:
    assert {a for a in Action if may(role, a)} == allowed


def test_an_unknown_role_may_do_nothing() -> None:
    assert not any(may("superuser", action) for action in Action)
    assert not any(may("", action) for action in Action)


def test_roles_are_the_table_keys_in_order() -> None:
    assert tuple(POLICY) == ROLES
    assert ROLES[0] == "radiologist" and "modality" in ROLES


@pytest.mark.parametrize("value", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0.0", "2.25." + "1" * 59])
def test_valid_uids(value: str) -> None:
    assert is_uid(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "1",
        "1.02",
        "01.2",
        "1..2",
        ".1.2",
        "1.2.",
        "1.2.3\n",
        "\n1.2.3",
        "1.2.a",
        "1.2*",
        "1.2\\1.3",
        "2.25." + "1" * 60,
    ],
)
def test_invalid_uids(value: str) -> None:
    assert not is_uid(value)
