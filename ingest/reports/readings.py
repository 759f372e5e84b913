"""Double reading and second opinions: the rules, as pure functions of a study's reports.

**Double reading.** A study of a modality the region screens (``CAMI_DOUBLE_READ``, e.g.
``MG,DX``: mammography, fluorography) is read twice, independently: two readings, each a report
(``reading`` = ``double-reading``) by a different radiologist, each signed with an
``assessment`` (a short code: ``normal``, ``abnormal``, a BI-RADS category...). Until a
radiologist has signed a reading of their own they see no other reading of the study, its
existence aside (the API answers 403 for its texts, the study page hides it): the second reader
does not read the first. Once two readings are signed, everyone sees both.

Two signed readings whose assessments differ (compared case-insensitively) are a
**discrepancy**: an ``ArbitrationRequested`` event names them, and a radiologist who read neither
writes the deciding report (``reading`` = ``arbitration``, the task's id as ``request_id``).

**Second opinion.** Any doctor who may read the study asks for one (``SecondOpinionRequested``:
a named organisation, or any radiologist of a specialty); a radiologist of that organisation or
specialty accepts it (``SecondOpinionAccepted``) and writes a report with ``reading`` =
``second-opinion`` and the request's id. The study page shows it beside the first report.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ingest.reports.rules import ReportConflict, ReportForbidden, ReportInvalid, ReportState

PRIMARY = "primary"
DOUBLE_READING = "double-reading"
SECOND_OPINION = "second-opinion"
ARBITRATION = "arbitration"
READINGS = (PRIMARY, DOUBLE_READING, SECOND_OPINION, ARBITRATION)

#: an arbitration task is named by the two readings it settles: found twice, it is one task
TASK_NAMESPACE = uuid.UUID("3e1b7f0a-9c4d-4b52-8e6a-2f7d5c1a9b30")


@dataclass(frozen=True)
class Discrepancy:
    """Two signed readings that disagree: the task an arbiter takes."""

    task_id: str
    report_ids: tuple[str, str]
    readers: tuple[str, str]
    assessments: tuple[str, str]


def independent_readings(states: Iterable[ReportState]) -> list[ReportState]:
    """The study's readings of its own (second opinions and arbitration aside)."""
    return [s for s in states if s.reading in (None, PRIMARY, DOUBLE_READING)]


def _reader(state: ReportState) -> str:
    return state.author_user or f"document:{state.report_id}"


def hidden_from(states: Sequence[ReportState], user: str, role: str, double_read: bool) -> set[str]:
    """The reports of a double-read study ``user`` may not read yet: while fewer than two
    readings are signed and the user (a radiologist) has not signed one, every reading but
    their own."""
    if not double_read or role != "radiologist":
        return set()
    readings = independent_readings(states)
    signed_readers = {_reader(s) for s in readings if s.signed}
    if len(signed_readers) >= 2 or user in signed_readers:
        return set()
    return {s.report_id for s in readings if not s.drafted_by(user)}


def check_new_report(
    states: Sequence[ReportState],
    user: str,
    double_read: bool,
    reading: str | None,
    *,
    arbitration_readers: Sequence[str] = (),
) -> str | None:
    """The reading a new report by ``user`` is (None on a study that is not double-read), or
    why it may not be written: a third independent reading, a second reading by the same
    radiologist, an arbitration by one of the two readers."""
    if reading not in (None, *READINGS):
        raise ReportInvalid(f"reading must be one of {', '.join(READINGS)}")
    if reading == ARBITRATION:
        if user in arbitration_readers:
            raise ReportForbidden("a reader of the disputed readings may not arbitrate them")
        return ARBITRATION
    if reading == SECOND_OPINION:
        return SECOND_OPINION
    if not double_read:
        return reading if reading != DOUBLE_READING else None
    readings = independent_readings(states)
    if any(s.drafted_by(user) for s in readings):
        raise ReportConflict("you have a reading of this study already: the two readings are by two radiologists")
    if len({_reader(s) for s in readings}) >= 2:
        raise ReportConflict("this study has its two readings; a discrepancy goes to arbitration")
    return DOUBLE_READING


def check_signing(state: ReportState, double_read: bool) -> None:
    """A double reading is signed with its assessment (what the two readings are compared by)."""
    if double_read and state.reading in (None, DOUBLE_READING, ARBITRATION) and not state.assessment:
        raise ReportInvalid("a reading of a double-read study is signed with an assessment (e.g. normal, abnormal)")


def same_assessment(a: str | None, b: str | None) -> bool:
    return (a or "").strip().casefold() == (b or "").strip().casefold()


def discrepancy(states: Sequence[ReportState], double_read: bool) -> Discrepancy | None:
    """The two signed readings of a double-read study when they disagree (else None)."""
    if not double_read:
        return None
    readings = [s for s in independent_readings(states) if s.signed]
    signed = sorted(readings, key=lambda s: (s.signed_at or "", s.report_id))
    first: dict[str, ReportState] = {}
    for state in signed:
        first.setdefault(_reader(state), state)
    if len(first) < 2:
        return None
    a, b = list(first.values())[:2]
    if same_assessment(a.assessment, b.assessment):
        return None
    ids = (a.report_id, b.report_id)
    return Discrepancy(
        task_id=str(uuid.uuid5(TASK_NAMESPACE, "|".join(sorted(ids)))),
        report_ids=ids,
        readers=(_reader(a), _reader(b)),
        assessments=(a.assessment or "", b.assessment or ""),
    )
