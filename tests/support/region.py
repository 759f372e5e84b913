"""A small region's events for the archive-index contract tests: five studies from two
organisations, a merge, reports, and hostile values (quotes, LIKE metacharacters, backslashes,
Cyrillic); ``feed`` projects them into a warehouse through the embedded runner, ``project_queries``
the events of a log into a query store the same way."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from projections.archive_index.fold import ArchiveIndex
from projections.query_model.fold import QueryModel
from projections.query_model.store import QueryModelSink, SqliteQueryStore
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Actor, Event, new_event
from streams import EventLog, open_event_log
from streams.processing import EmbeddedRunner
from streams.publisher import publish_many
from streams.topics import archive_topics

ORG_A = "1.2.643.5.1.13.13.12.2.50.1001"
ORG_B = "1.2.643.5.1.13.13.12.2.50.1002"
T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
DOCTOR = {"code": "123-456-789 00", "name": "Орлова^Анна"}
RADIOLOGIST = Actor("dr.petrov", "radiologist")

# hostile values: quotes, LIKE metacharacters, backslashes, Cyrillic
HOSTILE_NAME = "O'Brien^100%_Ив\\ан"
DECOY_NAME = "O'Brien^100xxИв\\ан"  # matches HOSTILE_NAME only if % or _ acted as wildcards
HOSTILE_ID = "P'5\\%_Ж"
HOSTILE_ACCESSION = "ACC'%_\\Ф"


def uid(*parts: int) -> str:
    return "1.2.826.0.1.3680043.8.498." + ".".join(str(p) for p in parts)


def received(
    study: str,
    series: str,
    sop: str,
    *,
    patient_id: str,
    patient_name: str,
    organisation: str,
    modality: str = "CT",
    study_date: str = "20260201",
    accession: str = "ACC-1",
    series_number: int = 1,
    instance_number: int = 1,
    version: int = 1,
    sha: str = "a",
    size: int = 1000,
    missing: Sequence[str] = (),
    at: datetime = T0,
) -> Event:
    payload: dict[str, Any] = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": series,
        "SOPInstanceUID": sop,
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "PatientID": patient_id,
        "PatientName": patient_name,
        "PatientBirthDate": "19700101",
        "PatientSex": "F",
        "StudyDate": study_date,
        "StudyTime": "101500",
        "AccessionNumber": accession,
        "StudyDescription": "Компьютерная томография",
        "ReferringPhysicianName": "Смирнов^Олег",
        "Modality": modality,
        "SeriesNumber": series_number,
        "SeriesDescription": f"series {series_number}",
        "BodyPartExamined": "CHEST",
        "InstanceNumber": instance_number,
        "Rows": 512,
        "Columns": 512,
        "PerformingPhysician": DOCTOR,
        "blob": {"sha256": (sha * 64)[:64], "size": size, "store": "file://"},
        "version": version,
        "missing": list(missing),
        "channel": "dicom",
        "calling_ae_title": "OKB_PACS",
    }
    return new_event(
        "InstanceReceived",
        payload,
        aggregate_id=study,
        source_node="OKB_PACS",
        organisation=organisation,
        occurred_at=at,
    )


def report_events(study: str, *, amend: bool) -> list[Event]:
    base = {"report_id": f"r-{study}", "StudyInstanceUID": study, "AccessionNumber": "ACC-1"}
    events = [
        new_event(
            "ReportDrafted",
            {**base, "protocol_text": "черновик", "conclusion_text": "—", "author": DOCTOR, "source": "http"},
            aggregate_id=study,
            source_node="http",
            organisation=ORG_A,
            actor=RADIOLOGIST,
        ),
        new_event(
            "ReportEdited",
            {**base, "protocol_text": "протокол", "conclusion_text": "заключение", "editor": DOCTOR, "revision": 2},
            aggregate_id=study,
            source_node="http",
            organisation=ORG_A,
            actor=RADIOLOGIST,
        ),
        new_event(
            "ReportSigned",
            {
                **base,
                "protocol_text": "протокол",
                "conclusion_text": "заключение",
                "signer": DOCTOR,
                "revision": 2,
                "signed_at": T0 + timedelta(hours=2),
                "content_sha256": "c" * 64,
            },
            aggregate_id=study,
            source_node="http",
            organisation=ORG_A,
            actor=RADIOLOGIST,
        ),
    ]
    if amend:
        events.append(
            new_event(
                "ReportAmended",
                {
                    **base,
                    "amendment_number": 1,
                    "reason": "опечатка",
                    "amended_by": DOCTOR,
                    "amended_at": T0 + timedelta(days=1),
                    "protocol_before": "протокол",
                    "conclusion_before": "заключение",
                    "protocol_after": "протокол",
                    "conclusion_after": "заключение исправлено",
                },
                aggregate_id=study,
                source_node="http",
                organisation=ORG_A,
                actor=RADIOLOGIST,
            )
        )
    return events


S1, S2, S3, S4, S5 = (uid(1, n) for n in range(1, 6))


def region_events() -> list[Event]:
    """Five studies, two organisations, a merge, a demographics update, reports in every state."""
    events: list[Event] = []
    # S1: patient P-1 at organisation A, CT, two series (3 + 2 instances), signed + amended report
    for series_number, count in ((1, 3), (2, 2)):
        for n in range(count):
            events.append(
                received(
                    S1,
                    uid(1, 1, series_number),
                    uid(1, 1, series_number, n),
                    patient_id="P-1",
                    patient_name="Иванова^Анна",
                    organisation=ORG_A,
                    series_number=series_number,
                    instance_number=n + 1,
                    study_date="20260110",
                )
            )
    events += report_events(S1, amend=True)
    # S2: the same patient under the prior ID P-OLD at organisation B, US, later merged into P-1;
    # one instance has a second version (different bytes), the package lacks the doctor's code
    events.append(
        received(
            S2, uid(1, 2, 1), uid(1, 2, 1, 0), patient_id="P-OLD", patient_name="Иванова^Анна",
            organisation=ORG_B, modality="US", study_date="20251201", missing=["PerformingPhysicianCode"],
        )
    )  # fmt: skip
    events.append(
        received(
            S2, uid(1, 2, 1), uid(1, 2, 1, 0), patient_id="P-OLD", patient_name="Иванова^Анна",
            organisation=ORG_B, modality="US", study_date="20251201", version=2, sha="b", size=2500,
            missing=["PerformingPhysicianCode"],
        )
    )  # fmt: skip
    # S3: hostile patient, draft report only
    events.append(
        received(
            S3, uid(1, 3, 1), uid(1, 3, 1, 0), patient_id=HOSTILE_ID, patient_name=HOSTILE_NAME,
            organisation=ORG_A, modality="MR", study_date="20260115", accession=HOSTILE_ACCESSION,
        )
    )  # fmt: skip
    events += report_events(S3, amend=False)[:1]
    # S4: the decoy patient, sent by both organisations, signed report
    events.append(
        received(
            S4, uid(1, 4, 1), uid(1, 4, 1, 0), patient_id="P-4", patient_name=DECOY_NAME,
            organisation=ORG_A, modality="DX", study_date="20260120", accession="ACC'xx\\Ф",
        )
    )  # fmt: skip
    events.append(
        received(
            S4, uid(1, 4, 2), uid(1, 4, 2, 0), patient_id="P-4", patient_name=DECOY_NAME,
            organisation=ORG_B, modality="DX", study_date="20260120", accession="ACC'xx\\Ф", series_number=2,
        )
    )  # fmt: skip
    events += report_events(S4, amend=False)
    # S5: P-1 again at organisation B, no report
    events.append(
        received(
            S5, uid(1, 5, 1), uid(1, 5, 1, 0), patient_id="P-1", patient_name="Иванова^Анна",
            organisation=ORG_B, modality="CT", study_date="20260201",
        )
    )  # fmt: skip
    events.append(
        new_event(
            "InstanceRejected",
            {"reason": "missing-patient-id", "status": 0xA900, "error_comment": "no PatientID", "channel": "dicom"},
            aggregate_id=ORG_A,
            source_node="OKB_PACS",
            organisation=ORG_A,
        )
    )
    events.append(
        new_event(
            "PatientsMerged",
            {"PatientID": "P-1", "PriorPatientID": "P-OLD", "source": "hl7"},
            aggregate_id="P-1",
            source_node="MIS",
        )
    )
    events.append(
        new_event(
            "PatientUpdated",
            {"PatientID": "P-1", "PatientName": "Петрова^Анна", "source": "hl7"},
            aggregate_id="P-1",
            source_node="MIS",
        )
    )
    # a producer retry that appended one fact twice: two log positions, one instance
    events.append(events[0])
    return events


def publish(tmp_path: Path, events: list[Event]) -> EventLog:
    """An embedded log in ``tmp_path`` holding ``events`` (the caller closes it)."""
    log = open_event_log(f"sqlite://{tmp_path}/events.db")
    log.ensure_topics(archive_topics(3))
    publish_many(log, events)
    return log


def project_queries(log: EventLog, path: Path, *, group: str = "query-model") -> SqliteQueryStore:
    """The query model of what ``log`` holds, in the store at ``path``, through the live runner
    (small batches); ``group`` names the consumer group (another name delivers everything again)."""
    store = SqliteQueryStore(path)
    model = QueryModel()
    model.name = group
    EmbeddedRunner(log, [(model, QueryModelSink(store))], batch_size=7).catch_up()
    return store


def feed(tmp_path: Path, warehouse: Warehouse, events: list[Event]) -> tuple[Any, WarehouseSink]:
    log = publish(tmp_path, events)
    sink = WarehouseSink(warehouse, ArchiveIndex.ddl)
    EmbeddedRunner(log, [(ArchiveIndex(), sink)], batch_size=7).catch_up()
    return log, sink
