"""The eleven example queries of ``docs/analytics.md`` run as written, on both warehouse backends.

The warehouse is fed the region of ``tests/unit/test_monitoring_analytics.py`` plus one study sent
under a temporary patient ID that a merge later maps to an existing patient (so the "several
organisations" query must follow the merge to be right). Every expected row below is worked out
from the scenario by hand; the comments say how.

The region, by study (organisation, AE title, modality, objects x bytes, first object, flags):

    1  A OKB_PACS  CT  3 x 1000   2025-03-03 10:00  pathology        P1 (F, born 1972-03-05)
    2  A OKB_PACS  MR  2 x 2000   2025-03-10 09:00  lacks doctor code P2 (M, 1990-06-15)
    3  A OKB_CT2   CT  1 x 500    2025-04-02 08:00  emergency, lacks procedure code; re-sent
                                                    complete at 08:05 as version 2 of 600 B  P3 (F, 2015-04-01)
    4  B GKB2_PACS DX  2 x 300    2025-03-05 12:00  pathology        P1
    5  B GKB2_PACS US  1 x 100    2025-04-20 14:00  emergency, lacks birth date  P4 (M)
    6  C ONKO_PACS MG  4 x 5000   2025-03-20 07:00  pathology        P2
    7  A OKB_PACS  CT  1 x 800    2025-03-15 11:00                   P3
    8  C ONKO_PACS CT  1 x 700    2025-04-25 10:00  (this file)      PRIOR_ID, merged into P4 (born 1931-01-01)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from projections.analytics import Analytics
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Actor, Event, new_event
from streams.processing import EmbeddedRunner
from tests.support.projections import open_log
from tests.support.scenarios import (
    KEY,
    ORG_A,
    ORG_B,
    ORG_C,
    P4,
    PRIOR_ID,
    Person,
    Study,
    at,
    instance_event,
    scenario,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "analytics.md"
SQL_BLOCK = re.compile(r"^### (?P<title>[^\n]+)\n(?:(?!^#{1,3} ).)*?^```sql\n(?P<sql>.*?)^```$", re.M | re.S)

STUDY_8 = Study(
    8, ORG_C, "ONKO_PACS", "CT", Person(PRIOR_ID, P4.name, P4.birth_date, P4.sex), 1, 700, "2025-04-25 10:00:00"
)


#: double readings signed (study, reader's staff code, organisation, assessment, when); the
#: studies are screening studies with no objects in this scenario, so no other query sees them
DOUBLE_READINGS = [
    ("S1", "R-1", ORG_A, "normal", "2026-11-03 09:00:00"),
    ("S1", "R-2", ORG_A, "Normal", "2026-11-03 11:00:00"),  # the case does not matter
    ("S2", "R-1", ORG_A, "normal", "2026-11-04 09:00:00"),
    ("S2", "R-3", ORG_C, "abnormal", "2026-11-05 09:00:00"),
    ("S3", "R-2", ORG_A, "abnormal", "2026-11-06 09:00:00"),
    ("S3", "R-3", ORG_C, "abnormal", "2026-11-06 10:00:00"),
    ("S4", "R-1", ORG_A, "normal", "2026-11-07 09:00:00"),  # one reading only: no pair yet
    ("S5", "R-1", ORG_A, "normal", "2026-10-30 09:00:00"),  # October: outside the month
    ("S5", "R-2", ORG_A, "abnormal", "2026-10-30 10:00:00"),
]


def double_reading_events() -> list[Event]:
    events = []
    for n, (study, reader, organisation, assessment, when) in enumerate(DOUBLE_READINGS):
        uid = f"1.2.826.0.1.3680043.8.498.900.{study[1:]}"
        signed_at = at(when)
        payload = {
            "report_id": f"dr-{n}", "StudyInstanceUID": uid, "AccessionNumber": None, "PatientID": None,
            "protocol_text": "", "conclusion_text": "c", "signer": {"code": reader, "name": None}, "revision": 1,
            "signed_at": signed_at, "content_sha256": "0" * 64, "reading": "double-reading", "assessment": assessment,
        }  # fmt: skip
        events.append(
            new_event("ReportSigned", payload, aggregate_id=uid, source_node="http", organisation=organisation,
                      actor=Actor(reader, "radiologist"), occurred_at=signed_at)
        )  # fmt: skip
    return events


def doc_events() -> list[Event]:
    return [*scenario(), instance_event(STUDY_8, 0, at(STUDY_8.first)), *double_reading_events()]


EXPECTED: dict[str, list[tuple[Any, ...]]] = {
    # first object's month; A in March: CT studies 1 and 7, MR study 2
    "Studies per modality per organisation per month": [
        (202503, ORG_A, "CT", 2),
        (202503, ORG_A, "MR", 1),
        (202503, ORG_B, "DX", 1),
        (202503, ORG_C, "MG", 1),
        (202504, ORG_A, "CT", 1),
        (202504, ORG_B, "US", 1),
        (202504, ORG_C, "CT", 1),
    ],
    # OKB_PACS: 3 + 2 + 1 objects of studies 1, 2, 7 on 3, 10 and 15 March (7800 B, 6 / 3 days);
    # OKB_CT2: both versions of study 3's object on one day; GKB2_PACS: 2 + 1 on two days;
    # ONKO_PACS: 4 + 1 on two days
    "Equipment load per AE title": [
        (ORG_A, "OKB_CT2", 2, 1, 1100, 2.0),
        (ORG_A, "OKB_PACS", 6, 3, 7800, 2.0),
        (ORG_B, "GKB2_PACS", 3, 2, 700, 1.5),
        (ORG_C, "ONKO_PACS", 5, 2, 20700, 2.5),
    ],
    # A: study 1 signed after 30 min, study 2 after 120 -> p50 = 75, p90 = 30 + 0.9 * 90 = 111;
    # B: study 4 after 10 min; C: study 6 after 40 min (the amendment is not a signature)
    "Report turnaround percentiles": [
        (ORG_A, 2, 75.0, 111.0, 120),
        (ORG_B, 1, 10.0, 10.0, 10),
        (ORG_C, 1, 40.0, 40.0, 40),
    ],
    # study 3 was completed by its version 2; 2 and 5 still lack attributes
    "Incomplete packages by organisation": [
        (ORG_A, 4, 1, ["PerformingPhysicianCode"]),
        (ORG_B, 2, 1, ["PatientBirthDate"]),
        (ORG_C, 2, 0, []),
    ],
    # T1 queued 09:50, done 10:02 (720 s, 1 attempt); T2 queued 07:59, failed once, done 08:06
    # (420 s, 2 attempts); T3 failed for good, T4 only queued, T5 in flight: not completed
    "Transfer latency": [
        (ORG_A, "emergency", 1, 420.0, 420, 2),
        (ORG_A, "scheduled", 1, 720.0, 720, 1),
    ],
    # A: 4 studies, study 3 emergency, study 1 pathology; B: 5 emergency, 4 pathology; C: 6 pathology, 8 neither
    "Emergency and pathology share by organisation": [
        (ORG_A, 4, 1, 1, 25.0, 25.0),
        (ORG_B, 2, 1, 1, 50.0, 50.0),
        (ORG_C, 2, 0, 1, 0.0, 50.0),
    ],
    # all in April: the unknown caller; B's invalid UID (2048 B); A's two objects without ID (4096 B each)
    "Rejections by reason per month": [
        (202504, "association", "unknown-caller", 1, 0),
        (202504, "instance", "invalid-uid", 1, 2048),
        (202504, "instance", "missing-patient-id", 2, 8192),
    ],
    # P1 at A and B, P2 at A and C, P4 at B and (as PRIOR_ID, merged) C; P3 only at A.
    # Without following the merge it would be [(1, 3), (2, 2)].
    "Patients examined at several organisations": [(1, 1), (2, 3)],
    # age at the study date: study 7 (P3, 2025-03-15) 9, study 3 (2025-04-02) 10, studies 1 and 4
    # P1 52 and 53, P2 34, study 8 94; study 5 has no birth date
    "Age and sex distribution per modality": [
        ("CT", "F", "05-09", 1),
        ("CT", "F", "10-14", 1),
        ("CT", "F", "50-54", 1),
        ("CT", "M", "90+", 1),
        ("DX", "F", "50-54", 1),
        ("MG", "M", "30-34", 1),
        ("MR", "M", "30-34", 1),
        ("US", "M", "unknown", 1),
    ],
    # A March: 3000 + 4000 + 800 in 6 objects; A April: study 3, 500 + 600 in 2 objects
    "Bytes stored per organisation per month": [
        (ORG_A, 202503, 6, 7800),
        (ORG_A, 202504, 2, 1100),
        (ORG_B, 202503, 2, 600),
        (ORG_B, 202504, 1, 100),
        (ORG_C, 202503, 4, 20000),
        (ORG_C, 202504, 1, 700),
    ],
    # S1 agrees, S2 does not; R-2: S1 and S3 agree; R-3: S2 does not, S3 does; S4 has one
    # reading, S5 is October's
    "Double reading concordance per reader": [
        ("R-1", ORG_A, 2, 1, 0.5),
        ("R-2", ORG_A, 2, 2, 1.0),
        ("R-3", ORG_C, 2, 1, 0.5),
    ],
}


def doc_queries() -> list[tuple[str, str]]:
    """(heading, sql) for every ```sql block of the document, in order."""
    text = DOC.read_text(encoding="utf-8")
    found = [(m["title"].strip(), m["sql"]) for m in SQL_BLOCK.finditer(text)]
    assert len(found) == text.count("```sql"), "every sql block needs a ### heading of its own"
    return found


def test_the_document_has_exactly_eleven_queries_with_known_answers() -> None:
    queries = doc_queries()
    assert len(queries) == 11
    assert [title for title, _ in queries] == list(EXPECTED)


@pytest.fixture
def fed(warehouse: Warehouse, tmp_path: Path) -> Warehouse:
    log = open_log(tmp_path, doc_events())
    try:
        EmbeddedRunner(log, [(Analytics(KEY), WarehouseSink(warehouse, Analytics.ddl))], batch_size=5).catch_up()
    finally:
        log.close()
    return warehouse


def test_every_query_of_the_document_returns_the_expected_rows(fed: Warehouse) -> None:
    results = {title: fed.query(sql).rows for title, sql in doc_queries()}
    assert results == EXPECTED
