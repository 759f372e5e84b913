"""Monitoring and analytics projections as pure functions (no warehouse), and the scenario the
contract tests project into both warehouse backends.

The scenario is a small region with known answers: seven studies from three organisations (one
study re-sent as version 2 to complete its package), rejections, reports drafted/edited/signed/
amended, transfers in every state, agent heartbeats, a patient merge, and events the analytics must
ignore (orders and accesses that carry patient names).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from api.demo.synthetic import synthetic_region
from ingest.validation import inspect
from projections.analytics import Analytics, age_band, keyed, pseudonym
from projections.monitoring.fold import Monitoring
from projections.registry import PROJECTIONS, ProjectionConfig, build
from schemas.events import Actor, Event, new_event
from streams.processing import Row, Source
from streams.topics import topic_for

KEY = b"test-pseudonym-key"
OTHER_KEY = b"another-key"

ORG_A = "1.2.643.5.1.13.13.12.2.50.1001"
ORG_B = "1.2.643.5.1.13.13.12.2.50.1002"
ORG_C = "1.2.643.5.1.13.13.12.2.50.1003"


@dataclass(frozen=True)
class Person:
    patient_id: str
    name: str
    birth_date: str
    sex: str


P1 = Person("4650123456789012", "Иванова^Мария^Петровна", "19720305", "F")
P2 = Person("7700987654321098", "Smith^John^Albert", "19900615", "M")
P3 = Person("5012345678901234", "Кузнецова^Дарья^Олеговна", "20150401", "F")
P4 = Person("6600111122223333", "Соколов^Пётр^Ильич", "19310101", "M")
PRIOR_ID = "TMP-55501"  # a temporary ID later merged into P4
PATIENTS = (P1, P2, P3, P4)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _uid(*parts: object) -> str:
    return "1.2.826.0.1.3680043.8.498.77." + ".".join(str(p) for p in parts)


@dataclass(frozen=True)
class Study:
    n: int
    org: str
    ae_title: str
    modality: str
    patient: Person
    instances: int
    size: int
    first: str  # first arrival (ISO)
    pathology: bool = False
    emergency: bool = False
    missing: tuple[str, ...] = ()

    @property
    def uid(self) -> str:
        return _uid(self.n)


STUDIES = (
    Study(1, ORG_A, "OKB_PACS", "CT", P1, 3, 1000, "2025-03-03 10:00:00", pathology=True),
    Study(2, ORG_A, "OKB_PACS", "MR", P2, 2, 2000, "2025-03-10 09:00:00", missing=("PerformingPhysicianCode",)),
    Study(3, ORG_A, "OKB_CT2", "CT", P3, 1, 500, "2025-04-02 08:00:00", emergency=True, missing=("ProcedureCode",)),
    Study(4, ORG_B, "GKB2_PACS", "DX", P1, 2, 300, "2025-03-05 12:00:00", pathology=True),
    Study(
        5, ORG_B, "GKB2_PACS", "US", P4, 1, 100, "2025-04-20 14:00:00", emergency=True, missing=("PatientBirthDate",)
    ),
    Study(6, ORG_C, "ONKO_PACS", "MG", P2, 4, 5000, "2025-03-20 07:00:00", pathology=True),
    Study(7, ORG_A, "OKB_PACS", "CT", P3, 1, 800, "2025-03-15 11:00:00"),
)
STUDY = {s.n: s for s in STUDIES}


def instance_event(
    study: Study,
    index: int,
    when: datetime,
    *,
    version: int = 1,
    size: int | None = None,
    missing: Sequence[str] | None = None,
) -> Event:
    p = study.patient
    missing = list(study.missing if missing is None else missing)
    payload: dict[str, Any] = {
        "StudyInstanceUID": study.uid,
        "SeriesInstanceUID": _uid(study.n, 1),
        "SOPInstanceUID": _uid(study.n, 1, index),
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "PatientID": p.patient_id,
        "IssuerOfPatientID": "RU-OMS",
        "PatientName": p.name,
        "PatientBirthDate": None if "PatientBirthDate" in missing else p.birth_date,
        "PatientSex": p.sex,
        "SpecificCharacterSet": "ISO_IR 192",
        "StudyDate": when.strftime("%Y%m%d"),
        "StudyTime": when.strftime("%H%M%S"),
        "AccessionNumber": f"ACC{study.n:04d}",
        "StudyDescription": f"{study.modality} study",
        "ReferringPhysicianName": "Орлов^Виктор^Сергеевич",
        "Modality": study.modality,
        "SeriesNumber": 1,
        "InstanceNumber": index + 1,
        "BodyPartExamined": "CHEST",
        "InstitutionName": "ГБУЗ МО",
        "PerformingPhysician": {
            "code": None if "PerformingPhysicianCode" in missing else f"111-222-33{study.n} 44",
            "name": "Белова^Анна^Юрьевна",
        },
        "ProcedureCodeValue": None if "ProcedureCode" in missing else "A06.09.005",
        "ProcedureCodingScheme": "RU-NMU",
        "ProcedureCodeMeaning": "Компьютерная томография органов грудной полости",
        "blob": {
            "sha256": hashlib.sha256(f"{study.n}/{index}/{version}".encode()).hexdigest(),
            "size": size if size is not None else study.size,
            "store": "file://",
        },
        "version": version,
        "pathology": study.pathology,
        "emergency": study.emergency,
        "missing": missing,
        "channel": "dicom",
        "calling_ae_title": study.ae_title,
        "called_ae_title": "CAMI_URGENT" if study.emergency else "CAMI",
        "peer_address": "10.1.2.3",
    }
    return new_event(
        "InstanceReceived",
        payload,
        aggregate_id=study.uid,
        source_node=study.ae_title,
        organisation=study.org,
        occurred_at=when,
    )


def report_event(kind: str, study: Study, when: datetime, **extra: Any) -> Event:
    p = study.patient
    family = p.name.split("^")[0]
    payload: dict[str, Any] = {
        "report_id": f"rep-{study.n}",
        "StudyInstanceUID": study.uid,
        "AccessionNumber": f"ACC{study.n:04d}",
        "PatientID": p.patient_id,
        **extra,
    }
    texts = {"protocol_text": f"Пациент {family}, {p.birth_date}: без особенностей.", "conclusion_text": "Норма."}
    doctor = {"code": "555-666-777 88", "name": "Белова^Анна^Юрьевна"}
    if kind == "ReportDrafted":
        payload |= {**texts, "author": doctor, "revision": 1, "source": "http"}
    elif kind == "ReportEdited":
        payload |= {**texts, "editor": doctor, "revision": 2}
    elif kind == "ReportSigned":
        payload |= {**texts, "signer": doctor, "signed_at": when, "content_sha256": "0" * 64}
        payload.setdefault("revision", 1)
    else:
        payload |= {
            "amendment_number": 1,
            "reason": "опечатка",
            "amended_by": doctor,
            "amended_at": when,
            "protocol_before": texts["protocol_text"],
            "conclusion_before": "Норма.",
            "protocol_after": texts["protocol_text"],
            "conclusion_after": f"Норма ({family}).",
        }
    return new_event(
        kind,
        payload,
        aggregate_id=study.uid,
        source_node="api",
        organisation=study.org,
        actor=Actor("dr.belova", "radiologist"),
        occurred_at=when,
    )


def transfer_event(kind: str, org: str, transfer_id: str, when: datetime, **payload: Any) -> Event:
    return new_event(
        kind,
        {"transfer_id": transfer_id, **payload},
        aggregate_id=org,
        source_node="agent",
        organisation=org,
        occurred_at=when,
    )


def scenario() -> list[Event]:
    """The region with known answers (see the contract tests for the expected figures)."""
    events: list[Event] = []
    for s in STUDIES:
        start = at(s.first)
        for i in range(s.instances):
            events.append(instance_event(s, i, start + timedelta(seconds=20 * i + (45 if i == 2 else 0))))
    # study 3 is completed by a re-sent object (version 2, different bytes) with the procedure code
    events.append(instance_event(STUDY[3], 0, at("2025-04-02 08:05:00"), version=2, size=600, missing=()))

    # reports: turnaround from the first object to the first signature
    events += [
        report_event("ReportDrafted", STUDY[1], at("2025-03-03 10:20:00")),
        report_event("ReportEdited", STUDY[1], at("2025-03-03 10:25:00")),
        report_event("ReportSigned", STUDY[1], at("2025-03-03 10:30:00"), revision=2),  # 1800 s
        report_event("ReportDrafted", STUDY[2], at("2025-03-10 10:00:00")),
        report_event("ReportSigned", STUDY[2], at("2025-03-10 11:00:00")),  # 7200 s
        report_event("ReportSigned", STUDY[4], at("2025-03-05 12:10:00"), source="dicom-sr"),  # 600 s
        report_event("ReportDrafted", STUDY[6], at("2025-03-20 07:30:00")),
        report_event("ReportSigned", STUDY[6], at("2025-03-20 07:40:00")),  # 2400 s
        report_event("ReportAmended", STUDY[6], at("2025-03-21 09:00:00")),
    ]

    # rejections: two refused objects at A, one at B (it carries a patient ID), an unknown caller
    for minute in (0, 1):
        events.append(
            new_event(
                "InstanceRejected",
                {
                    "reason": "missing-patient-id",
                    "status": 0xA900,
                    "error_comment": "PatientID is missing",
                    "StudyInstanceUID": _uid(90, minute),
                    "received_bytes": 4096,
                    "channel": "dicom",
                    "calling_ae_title": "OKB_PACS",
                },
                aggregate_id=_uid(90, minute),
                source_node="OKB_PACS",
                organisation=ORG_A,
                occurred_at=at(f"2025-04-10 09:0{minute}:00"),
            )
        )
    events.append(
        new_event(
            "InstanceRejected",
            {
                "reason": "invalid-uid",
                "status": 0xA900,
                "error_comment": "SOPInstanceUID is not a UID",
                "PatientID": P4.patient_id,
                "received_bytes": 2048,
                "channel": "stow-rs",
                "calling_ae_title": "GKB2_PACS",
            },
            aggregate_id=ORG_B,
            source_node="GKB2_PACS",
            organisation=ORG_B,
            occurred_at=at("2025-04-20 14:30:00"),
        )
    )
    events.append(
        new_event(
            "AssociationRejected",
            {
                "reason": "unknown-caller",
                "calling_ae_title": "ROGUE_AE",
                "called_ae_title": "CAMI",
                "peer_address": "10.9.9.9",
            },
            aggregate_id="ROGUE_AE",
            source_node="ROGUE_AE",
            occurred_at=at("2025-04-20 14:45:00"),
        )
    )

    # transfers (keyed by organisation)
    t = transfer_event
    events += [
        t(
            "TransferQueued",
            ORG_A,
            "T1",
            at("2025-03-03 09:50:00"),
            StudyInstanceUID=STUDY[1].uid,
            instances=3,
            bytes=3000,
            priority="scheduled",
            pathology=True,
            source_ae_title="OKB_PACS",
            destination="CAMI",
        ),
        t("TransferStarted", ORG_A, "T1", at("2025-03-03 09:55:00"), StudyInstanceUID=STUDY[1].uid, attempt=1),
        t(
            "TransferCompleted",
            ORG_A,
            "T1",
            at("2025-03-03 10:02:00"),
            StudyInstanceUID=STUDY[1].uid,
            attempt=1,
            instances_sent=3,
            bytes_sent=3000,
            duration_ms=420_000,
        ),  # queued -> done 720 s
        t(
            "TransferQueued",
            ORG_A,
            "T2",
            at("2025-04-02 07:59:00"),
            StudyInstanceUID=STUDY[3].uid,
            instances=1,
            bytes=500,
            priority="emergency",
            source_ae_title="OKB_CT2",
            destination="CAMI_URGENT",
        ),
        t("TransferStarted", ORG_A, "T2", at("2025-04-02 07:59:10"), StudyInstanceUID=STUDY[3].uid, attempt=1),
        t(
            "TransferFailed",
            ORG_A,
            "T2",
            at("2025-04-02 08:00:00"),
            StudyInstanceUID=STUDY[3].uid,
            attempt=1,
            error="connection reset",
            will_retry=True,
        ),
        t("TransferStarted", ORG_A, "T2", at("2025-04-02 08:03:00"), StudyInstanceUID=STUDY[3].uid, attempt=2),
        t(
            "TransferCompleted",
            ORG_A,
            "T2",
            at("2025-04-02 08:06:00"),
            StudyInstanceUID=STUDY[3].uid,
            attempt=2,
            instances_sent=1,
            bytes_sent=600,
            duration_ms=180_000,
        ),  # queued -> done 420 s
        t(
            "TransferQueued",
            ORG_B,
            "T3",
            at("2025-03-05 11:50:00"),
            StudyInstanceUID=STUDY[4].uid,
            instances=2,
            bytes=600,
            priority="scheduled",
            pathology=True,
            source_ae_title="GKB2_PACS",
            destination="CAMI",
        ),
        t("TransferStarted", ORG_B, "T3", at("2025-03-05 11:51:00"), StudyInstanceUID=STUDY[4].uid, attempt=1),
        t(
            "TransferFailed",
            ORG_B,
            "T3",
            at("2025-03-05 11:52:00"),
            StudyInstanceUID=STUDY[4].uid,
            attempt=1,
            error="association rejected",
            will_retry=False,
        ),
        t(
            "TransferQueued",
            ORG_B,
            "T4",
            at("2025-04-20 13:00:00"),
            StudyInstanceUID=STUDY[5].uid,
            instances=1,
            bytes=100,
            priority="emergency",
            source_ae_title="GKB2_PACS",
            destination="CAMI_URGENT",
        ),
        t(
            "TransferQueued",
            ORG_C,
            "T5",
            at("2025-03-20 06:00:00"),
            StudyInstanceUID=STUDY[6].uid,
            instances=4,
            bytes=20000,
            priority="scheduled",
            pathology=True,
            source_ae_title="ONKO_PACS",
            destination="CAMI",
        ),
        t("TransferStarted", ORG_C, "T5", at("2025-03-20 06:30:00"), StudyInstanceUID=STUDY[6].uid, attempt=1),
    ]
    hb = {"host": "okb-gw", "agent_version": "1.0", "queue_bytes": 0, "in_flight": 0, "link_kbps": 256.0}
    events += [
        new_event(
            "AgentHeartbeat",
            {
                **hb,
                "agent_id": "okb-agent",
                "queue_depth": 1,
                "queue_bytes": 500,
                "last_success_at": at("2025-03-03 10:02:00"),
            },
            aggregate_id=ORG_A,
            source_node="okb-agent",
            organisation=ORG_A,
            occurred_at=at("2025-04-02 07:58:00"),
        ),
        new_event(
            "AgentHeartbeat",
            {**hb, "agent_id": "okb-agent", "queue_depth": 0, "last_success_at": at("2025-04-02 08:06:00")},
            aggregate_id=ORG_A,
            source_node="okb-agent",
            organisation=ORG_A,
            occurred_at=at("2025-04-02 08:10:00"),
        ),
        new_event(
            "AgentHeartbeat",
            {
                **hb,
                "agent_id": "gkb-agent",
                "host": "gkb-gw",
                "queue_depth": 1,
                "queue_bytes": 100,
                "last_success_at": None,
            },
            aggregate_id=ORG_B,
            source_node="gkb-agent",
            organisation=ORG_B,
            occurred_at=at("2025-04-20 13:05:00"),
        ),
    ]

    # events the analytics must ignore, full of patient data
    events += [
        new_event(
            "OrderPlaced",
            {
                "placer_order_number": "ORD-1",
                "PatientID": P4.patient_id,
                "PatientName": P4.name,
                "PatientBirthDate": P4.birth_date,
                "PatientSex": "M",
                "priority": "ROUTINE",
            },
            aggregate_id=STUDY[5].uid,
            source_node="MIS",
            organisation=ORG_B,
            occurred_at=at("2025-04-19 10:00:00"),
        ),
        new_event(
            "PatientUpdated",
            {"PatientID": P1.patient_id, "PatientName": P1.name, "PatientBirthDate": P1.birth_date, "source": "hl7"},
            aggregate_id=P1.patient_id,
            source_node="MIS",
            occurred_at=at("2025-04-01 10:00:00"),
        ),
        new_event(
            "RecordAccessed",
            {
                "action": "view",
                "channel": "study-page",
                "PatientID": P2.patient_id,
                "StudyInstanceUID": STUDY[2].uid,
                "results": 1,
                "outcome": "ok",
                "query": f"PatientName={P2.name}",
            },
            aggregate_id=STUDY[2].uid,
            source_node="web",
            actor=Actor("dr.petrov", "radiologist"),
            occurred_at=at("2025-04-01 11:00:00"),
        ),
        new_event(
            "PatientsMerged",
            {"PatientID": P4.patient_id, "PriorPatientID": PRIOR_ID, "source": "hl7"},
            aggregate_id=P4.patient_id,
            source_node="MIS",
            occurred_at=at("2025-04-21 10:00:00"),
        ),
    ]
    return events


def region_events(seed: int = 3, studies: int = 10) -> list[Event]:
    """InstanceReceived events for a synthetic region (realistic Cyrillic names, birth dates)."""
    events = []
    for study in synthetic_region(seed, studies):
        for ds in study.instances[:2]:
            found = inspect(ds)
            payload = {
                **found.attributes,
                "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
                "blob": {"sha256": "0" * 64, "size": 10, "store": "file://"},
                "missing": found.missing,
                "pathology": found.pathology,
                "emergency": found.emergency,
                "channel": "import",
            }
            events.append(
                new_event(
                    "InstanceReceived",
                    payload,
                    aggregate_id=study.study_uid,
                    source_node=study.organisation.ae_title,
                    organisation=study.organisation.code,
                )
            )
    return events


def positioned(events: Iterable[Event]) -> list[tuple[Event, Source]]:
    """Log positions as a single-partition log would assign them (one offset sequence per topic)."""
    offsets: dict[str, int] = {}
    out = []
    for event in events:
        topic = topic_for(event.type)
        offsets[topic] = offsets.get(topic, -1) + 1
        out.append((event, Source(topic, 0, offsets[topic])))
    return out


def project(processor: Any, events: Iterable[Event]) -> list[Row]:
    return [
        row
        for event, source in positioned(events)
        for row in processor.apply(event, source)
        if topic_for(event.type) in processor.topics
    ]


def phi_needles(people: Iterable[tuple[str, str | None, str | None]]) -> set[str]:
    """Every form a patient's identity could take in a column: the ID, the name and each of its
    parts, the birth date as DICOM and ISO text (compared case-insensitively by the scanners)."""
    needles: set[str] = set()
    for patient_id, name, birth in people:
        needles.add(patient_id)
        if name:
            needles |= {name, name.replace("^", " ").strip()}
            needles |= {part for part in name.split("^") if len(part) >= 3}
        if birth:
            needles |= {birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}"}
    return {n.casefold() for n in needles}


def flatten(value: Any) -> Iterable[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from flatten(item)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from flatten(v)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif value is not None:
        yield str(value)


def leaks(values: Iterable[Any], needles: set[str]) -> list[tuple[str, str]]:
    found = []
    for value in values:
        for text in flatten(value):
            for needle in needles:
                if needle in text.casefold():
                    found.append((needle, text))
    return found


SCENARIO_PEOPLE = [(p.patient_id, p.name, p.birth_date) for p in PATIENTS] + [(PRIOR_ID, None, None)]


# -- monitoring -------------------------------------------------------------------------------------
def rows_of(rows: Sequence[Row], table: str) -> list[dict[str, Any]]:
    return [dict(r.values) for r in rows if r.table == table]


def test_monitoring_rows_for_arrivals() -> None:
    rows = project(Monitoring(), scenario())
    arrivals = rows_of(rows, "monitoring_arrivals")
    stored = [r for r in arrivals if r["kind"] == "stored"]
    assert len(stored) == sum(s.instances for s in STUDIES) + 1
    first = stored[0]
    assert first["organisation"] == ORG_A and first["ae_title"] == "OKB_PACS" and first["bytes"] == 1000
    assert first["minute"] == at("2025-03-03 10:00:00")
    third = stored[2]  # 10:01:25 falls in the 10:01 minute
    assert third["at"] == at("2025-03-03 10:01:25") and third["minute"] == at("2025-03-03 10:01:00")
    assert [r["missing"] for r in stored if r["study_uid"] == STUDY[3].uid] == [["ProcedureCode"], []]
    refused = [(r["kind"], r["reason"], r["organisation"], r["ae_title"]) for r in arrivals if r["kind"] != "stored"]
    assert refused == [
        ("rejected", "missing-patient-id", ORG_A, "OKB_PACS"),
        ("rejected", "missing-patient-id", ORG_A, "OKB_PACS"),
        ("rejected", "invalid-uid", ORG_B, "GKB2_PACS"),
        ("association-rejected", "unknown-caller", "", "ROGUE_AE"),
    ]


def test_monitoring_reports_use_the_archive_signing_time() -> None:
    rows = rows_of(project(Monitoring(), scenario()), "monitoring_reports")
    assert [(r["study_uid"], r["signed_at"]) for r in rows] == [
        (STUDY[1].uid, at("2025-03-03 10:30:00")),
        (STUDY[2].uid, at("2025-03-10 11:00:00")),
        (STUDY[4].uid, at("2025-03-05 12:10:00")),
        (STUDY[6].uid, at("2025-03-20 07:40:00")),
    ]  # drafts, edits and amendments are not signatures


def test_transfer_state_after_each_event() -> None:
    rows = rows_of(project(Monitoring(), scenario()), "monitoring_transfers")
    t2 = [(r["event_type"], r["state"]) for r in rows if r["transfer_id"] == "T2"]
    assert t2 == [
        ("TransferQueued", "queued"),
        ("TransferStarted", "in-flight"),
        ("TransferFailed", "queued"),  # will be retried
        ("TransferStarted", "in-flight"),
        ("TransferCompleted", "done"),
    ]
    t3 = [r["state"] for r in rows if r["transfer_id"] == "T3"]
    assert t3 == ["queued", "in-flight", "failed"]
    beats = rows_of(project(Monitoring(), scenario()), "monitoring_heartbeats")
    assert [(b["agent_id"], b["queue_depth"], b["last_success_at"]) for b in beats] == [
        ("okb-agent", 1, at("2025-03-03 10:02:00")),
        ("okb-agent", 0, at("2025-04-02 08:06:00")),
        ("gkb-agent", 1, None),
    ]


def test_apply_is_deterministic_and_ignores_foreign_events() -> None:
    """Redelivery rewrites the same row under the same key: apply depends only on event and position."""
    monitoring, analytics = Monitoring(), Analytics(KEY)
    for event, source in positioned(scenario()):
        assert monitoring.apply(event, source) == monitoring.apply(event, source)
        assert analytics.apply(event, source) == analytics.apply(event, source)
        for row in [*monitoring.apply(event, source), *analytics.apply(event, source)]:
            assert (row.values["topic"], row.values["partition"], row.values["offset"]) == (
                source.topic,
                source.partition,
                source.offset,
            )
        if event.type in ("OrderPlaced", "PatientUpdated", "RecordAccessed"):
            assert analytics.apply(event, source) == []
        if event.type in ("OrderPlaced", "PatientUpdated", "RecordAccessed", "PatientsMerged", "ReportDrafted"):
            assert monitoring.apply(event, source) == []


# -- analytics --------------------------------------------------------------------------------------
def test_pseudonym_is_hmac_sha256_of_the_patient_id() -> None:
    expected = hmac.new(KEY, P1.patient_id.encode(), hashlib.sha256).hexdigest()
    assert pseudonym(KEY, P1.patient_id) == expected
    rows = project(Analytics(KEY), scenario())
    instances = rows_of(rows, "analytics_instances")
    p1 = {
        r["patient_pseudonym"]
        for r in instances
        if r["study_key"] in (keyed(KEY, "study", STUDY[1].uid), keyed(KEY, "study", STUDY[4].uid))
    }
    assert p1 == {expected}  # the same patient at two organisations: one pseudonym
    assert len({r["patient_pseudonym"] for r in instances}) == len(PATIENTS)
    reports = rows_of(rows, "analytics_reports")
    assert {r["patient_pseudonym"] for r in reports if r["study_key"] == keyed(KEY, "study", STUDY[1].uid)} == {
        expected
    }
    merges = rows_of(rows, "analytics_patient_merges")
    assert merges[0]["prior_pseudonym"] == pseudonym(KEY, PRIOR_ID)
    assert merges[0]["pseudonym"] == pseudonym(KEY, P4.patient_id)


def test_a_different_key_gives_different_pseudonyms_and_keys() -> None:
    mine = rows_of(project(Analytics(KEY), scenario()), "analytics_instances")
    theirs = rows_of(project(Analytics(OTHER_KEY), scenario()), "analytics_instances")
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a["patient_pseudonym"] != b["patient_pseudonym"]
        assert a["study_key"] != b["study_key"] and a["instance_key"] != b["instance_key"]
        assert a["modality"] == b["modality"] and a["bytes"] == b["bytes"]
    # keys of different kinds never coincide even for the same text
    assert keyed(KEY, "study", "x") != keyed(KEY, "report", "x") != pseudonym(KEY, "x")


def test_registry_builds_both_with_the_configured_key() -> None:
    assert {"monitoring", "analytics"} <= set(PROJECTIONS)
    [analytics] = build(("analytics",), ProjectionConfig(pseudonym_key=OTHER_KEY))
    [event] = [e for e in scenario() if e.type == "InstanceReceived"][:1]
    [row] = analytics.apply(event, Source("cami.dicom", 0, 0))
    assert row.values["patient_pseudonym"] == pseudonym(OTHER_KEY, P1.patient_id)
    with pytest.raises(ValueError):
        Analytics(b"")


@pytest.mark.parametrize(
    ("birth", "on", "band"),
    [
        ("19720305", date(2025, 3, 3), "50-54"),  # 52
        ("19700303", date(2025, 3, 3), "55-59"),  # 55 on the birthday
        ("19700304", date(2025, 3, 3), "50-54"),  # 54, the day before
        ("20150401", date(2025, 3, 15), "05-09"),
        ("20150401", date(2025, 4, 2), "10-14"),
        ("20250101", date(2025, 3, 1), "00-04"),
        ("19310101", date(2025, 4, 20), "90+"),
        (None, date(2025, 1, 1), "unknown"),
        ("1972", date(2025, 1, 1), "unknown"),
        ("20300101", date(2025, 1, 1), "unknown"),
    ],
)
def test_age_band(birth: str | None, on: date, band: str) -> None:
    assert age_band(birth, on) == band


def test_analytics_rows_carry_no_patient_identity() -> None:
    """Every value of every analytics row, for the scenario and a synthetic region."""
    region = region_events()
    people = SCENARIO_PEOPLE + [
        (str(e.payload["PatientID"]), e.payload.get("PatientName"), e.payload.get("PatientBirthDate")) for e in region
    ]
    needles = phi_needles(people)
    assert len(needles) > 40
    rows = project(Analytics(KEY), [*scenario(), *region])
    assert {r.table for r in rows} == {
        "analytics_instances",
        "analytics_reports",
        "analytics_transfers",
        "analytics_rejections",
        "analytics_patient_merges",
    }
    assert leaks([list(r.values.values()) for r in rows], needles) == []
    # the scanner itself finds what it must: the raw events are full of it
    assert leaks([dict(e.payload) for e in region], needles)


def test_age_band_and_facts_of_an_instance() -> None:
    [row] = Analytics(KEY).apply(instance_event(STUDY[7], 0, at("2025-03-15 11:00:00")), Source("cami.dicom", 1, 9))
    v = row.values
    assert v["age_band"] == "05-09" and v["patient_sex"] == "F" and v["study_date"] == date(2025, 3, 15)
    assert v["doctor_code"] == "111-222-337 44" and v["calling_ae_title"] == "OKB_PACS"
    assert v["study_key"] == keyed(KEY, "study", STUDY[7].uid)
    assert "PatientName" not in v and "ReferringPhysicianName" not in v
