"""Double reading's rules (ingest/reports/readings.py): pure, no server."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ingest.reports.readings import (
    ARBITRATION,
    DOUBLE_READING,
    SECOND_OPINION,
    check_new_report,
    check_signing,
    discrepancy,
    hidden_from,
)
from ingest.reports.rules import DRAFT, SIGNED, ReportConflict, ReportForbidden, ReportInvalid, ReportState

STUDY = "1.2.3.4"


def reading(
    report_id: str, user: str, *, signed: bool = False, assessment: str | None = None, **extra: str
) -> ReportState:
    return ReportState(
        report_id=report_id,
        study_instance_uid=STUDY,
        status=SIGNED if signed else DRAFT,
        protocol_text="p",
        conclusion_text="c",
        revision=1,
        author={"code": None, "name": user},
        source="http",
        created_at="2026-12-01T09:00:00+00:00",
        updated_at="2026-12-01T09:00:00+00:00",
        author_user=user,
        reading=extra.get("kind", DOUBLE_READING),
        request_id=extra.get("request_id"),
        assessment=assessment,
        signed_at=f"2026-12-01T10:00:0{report_id[-1]}+00:00" if signed else None,
    )


def test_a_reader_sees_no_other_reading_until_signing_their_own() -> None:
    first = reading("r1", "dr.a", signed=True, assessment="normal")
    second = reading("r2", "dr.b")
    states = [first, second]
    assert hidden_from(states, "dr.b", "radiologist", True) == {"r1"}
    assert hidden_from(states, "dr.c", "radiologist", True) == {"r1", "r2"}  # a third radiologist, not a reader yet
    assert hidden_from(states, "dr.a", "radiologist", True) == set()  # signed their own
    assert hidden_from(states, "ref.x", "referring-doctor", True) == set()  # not a reader
    assert hidden_from(states, "dr.b", "radiologist", False) == set()  # not a double-read study
    both = [first, replace(second, status=SIGNED, assessment="normal", signed_at="2026-12-01T11:00:00+00:00")]
    assert hidden_from(both, "dr.c", "radiologist", True) == set()  # both signed: open to all


def test_two_readings_by_two_radiologists_then_only_arbitration() -> None:
    assert check_new_report([], "dr.a", True, None) == DOUBLE_READING
    one = [reading("r1", "dr.a")]
    with pytest.raises(ReportConflict, match="two radiologists"):
        check_new_report(one, "dr.a", True, None)
    assert check_new_report(one, "dr.b", True, None) == DOUBLE_READING
    two = [*one, reading("r2", "dr.b")]
    with pytest.raises(ReportConflict, match="arbitration"):
        check_new_report(two, "dr.c", True, None)
    with pytest.raises(ReportForbidden):
        check_new_report(two, "dr.a", True, ARBITRATION, arbitration_readers=["dr.a", "dr.b"])
    assert check_new_report(two, "dr.c", True, ARBITRATION, arbitration_readers=["dr.a", "dr.b"]) == ARBITRATION
    assert check_new_report(two, "dr.c", True, SECOND_OPINION) == SECOND_OPINION
    assert check_new_report([], "dr.a", False, None) is None
    with pytest.raises(ReportInvalid):
        check_new_report([], "dr.a", False, "third-opinion")


def test_a_double_reading_is_signed_with_its_assessment() -> None:
    with pytest.raises(ReportInvalid, match="assessment"):
        check_signing(reading("r1", "dr.a"), True)
    check_signing(reading("r1", "dr.a", assessment="abnormal"), True)
    check_signing(reading("r1", "dr.a"), False)


def test_disagreeing_readings_make_one_arbitration_task() -> None:
    a = reading("r1", "dr.a", signed=True, assessment="Normal")
    b = reading("r2", "dr.b", signed=True, assessment="normal")
    assert discrepancy([a, b], True) is None  # the same, whatever the case
    c = replace(b, assessment="abnormal")
    found = discrepancy([a, c], True)
    assert found is not None
    assert found.report_ids == ("r1", "r2") and found.readers == ("dr.a", "dr.b")
    assert found.assessments == ("Normal", "abnormal")
    again = discrepancy([c, a], True)
    assert again is not None and again.task_id == found.task_id  # named by the readings: one task
    assert discrepancy([a], True) is None and discrepancy([a, c], False) is None
    arbiter = reading("r3", "dr.c", signed=True, assessment="abnormal", kind=ARBITRATION)
    assert discrepancy([a, c, arbiter], True) == found  # the arbiter's reading is not a third reading


def test_the_audit_trail_says_what_each_reading_task_is() -> None:
    from projections.audit.fold import summarise
    from schemas.events import Actor, new_event

    doctor = {"code": "R-9", "name": "Врачев^Иван"}
    asked = new_event(
        "SecondOpinionRequested",
        {"request_id": "q1", "StudyInstanceUID": STUDY, "requested_by": doctor, "requesting_user": "dr.x",
         "to_specialty": "neuroradiology", "reason": "уточнить"},
        aggregate_id=STUDY, source_node="http", actor=Actor("dr.x", "radiologist"),
    )  # fmt: skip
    assert summarise(asked) == "second opinion q1 asked of a radiologist of neuroradiology by R-9"
    task = new_event(
        "ArbitrationRequested",
        {"task_id": "t1", "StudyInstanceUID": STUDY, "report_ids": ["r1", "r2"], "readers": ["a", "b"],
         "assessments": ["normal", "abnormal"]},
        aggregate_id=STUDY, source_node="http",
    )  # fmt: skip
    assert summarise(task) == "readings disagree (normal / abnormal): arbitration task t1"
