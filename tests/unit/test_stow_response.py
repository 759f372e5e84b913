"""ingest.stow.stow_response: the STOW-RS answer (PS3.18 10.5.3) and its HTTP status."""

from __future__ import annotations

from ingest.pipeline import Outcome
from ingest.statuses import Status
from ingest.stow import (
    ERROR_COMMENT,
    FAILED_SOP_SEQUENCE,
    FAILURE_ATTRIBUTES,
    FAILURE_REASON,
    REFERENCED_SOP_SEQUENCE,
    RETRIEVE_URL,
    WARNING_REASON,
    Identifiers,
    PartResult,
    stow_response,
)

BASE = "http://archive:8042"
STUDY = "1.2.3"


def stored(sop: str, status: Status = Status.SUCCESS) -> PartResult:
    outcome = Outcome(status, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2", study_instance_uid=STUDY)
    return PartResult(outcome, Identifiers(STUDY, "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", sop))


def failed(sop: str | None, status: Status = Status.CANNOT_UNDERSTAND) -> PartResult:
    outcome = Outcome(status, "the data set cannot be parsed", reason="malformed", offending=(0x0020000D,))
    return PartResult(outcome, Identifiers(sop_instance=sop))


def test_all_stored_is_200_with_retrieve_urls() -> None:
    status, body = stow_response([stored("1.2.3.4.1"), stored("1.2.3.4.2")], BASE, None)
    assert status == 200
    assert FAILED_SOP_SEQUENCE not in body
    assert body[RETRIEVE_URL]["Value"] == [f"{BASE}/dicomweb/studies/{STUDY}"]
    items = body[REFERENCED_SOP_SEQUENCE]["Value"]
    assert [i[RETRIEVE_URL]["Value"][0] for i in items] == [
        f"{BASE}/dicomweb/studies/{STUDY}/series/1.2.3.4/instances/1.2.3.4.{n}" for n in (1, 2)
    ]


def test_stored_with_a_warning_is_202() -> None:
    status, body = stow_response([stored("1.2.3.4.1", Status.WARNING_COERCED)], BASE, STUDY)
    assert status == 202
    assert body[REFERENCED_SOP_SEQUENCE]["Value"][0][WARNING_REASON]["Value"] == [int(Status.WARNING_COERCED)]


def test_some_failed_is_202_with_both_sequences() -> None:
    status, body = stow_response([stored("1.2.3.4.1"), failed("1.2.3.4.9")], BASE, STUDY)
    assert status == 202
    assert len(body[REFERENCED_SOP_SEQUENCE]["Value"]) == 1
    item = body[FAILED_SOP_SEQUENCE]["Value"][0]
    assert item[FAILURE_REASON]["Value"] == [int(Status.CANNOT_UNDERSTAND)]
    assert item[ERROR_COMMENT]["Value"] == ["malformed: the data set cannot be parsed"]
    assert item[FAILURE_ATTRIBUTES]["Value"] == ["0020000D"]


def test_all_failed_is_409_without_a_study_url() -> None:
    status, body = stow_response([failed("1.2.3.4.9"), failed(None)], BASE, STUDY)
    assert status == 409
    assert RETRIEVE_URL not in body and REFERENCED_SOP_SEQUENCE not in body
    assert len(body[FAILED_SOP_SEQUENCE]["Value"]) == 2


def test_nothing_stored_because_storage_was_out_is_503() -> None:
    status, _ = stow_response([failed("1.2.3.4.9", Status.OUT_OF_RESOURCES)], BASE, None)
    assert status == 503
