"""The monitoring and analytics scenario: a small region with known answers.

Seven studies from three organisations (one study re-sent as version 2 to complete its package),
rejections, reports drafted/edited/signed/amended, transfers in every state, agent heartbeats, a
patient merge, and events the analytics must ignore (orders and accesses that carry patient names).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.events import Actor, Event, new_event

KEY = b"test-pseudonym-key"


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
