"""The archive index on both warehouse backends (chdb and clickhouse-connect over HTTP).

A synthetic event sequence goes through the real embedded log and :class:`EmbeddedRunner` into a
:class:`WarehouseSink`; the query layer must answer from it, and redelivery and a rebuild must
leave exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from projections.archive_index.find import incomplete_packages, patient_timeline, search_studies
from projections.archive_index.fold import ArchiveIndex
from projections.archive_index.views import (
    instance_location,
    patient_record,
    series_instances,
    study_report,
    study_series,
)
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Actor, Event, new_event
from streams import open_event_log
from streams.processing import EmbeddedRunner, Row, Source
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.contract.conftest import WarehouseTarget

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


class Redelivery:
    """The same pure function under another consumer group: every event is delivered again."""

    def __init__(self, name: str) -> None:
        self.inner = ArchiveIndex()
        self.name = name
        self.topics = self.inner.topics

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        return self.inner.apply(event, source)


def snapshot(warehouse: Warehouse) -> dict[str, list[tuple[Any, ...]]]:
    tables = {
        "archive_instances": "study_uid, series_uid, sop_uid, version",
        "archive_reports": "study_uid, report_id, stage, seq",
        "archive_patients": "patient_id, attribute",
        "archive_patient_merges": "prior_patient_id",
    }
    return {t: warehouse.query(f"SELECT * FROM {t} FINAL ORDER BY {key}").rows for t, key in tables.items()}


def feed(tmp_path: Path, warehouse: Warehouse, events: list[Event]) -> tuple[Any, WarehouseSink]:
    log = open_event_log(f"sqlite://{tmp_path}/events.db")
    log.ensure_topics(archive_topics(3))
    publish_many(log, events)
    sink = WarehouseSink(warehouse, ArchiveIndex.ddl)
    EmbeddedRunner(log, [(ArchiveIndex(), sink)], batch_size=7).catch_up()
    return log, sink


def test_queries_answer_from_the_projected_events(warehouse: Warehouse, tmp_path: Path) -> None:
    log, _ = feed(tmp_path, warehouse, region_events())
    log.close()

    everything = search_studies(warehouse)
    assert [s["study_uid"] for s in everything] == [S5, S4, S3, S1, S2]  # newest study date first
    by_uid = {s["study_uid"]: s for s in everything}

    s1 = by_uid[S1]
    assert (s1["series_count"], s1["instance_count"], s1["size"]) == (2, 5, 5000)  # the duplicate collapsed
    assert s1["modalities"] == ["CT"] and s1["organisations"] == [ORG_A]
    assert s1["report_status"] == "amended" and s1["missing"] == []
    assert s1["study_date"] == date(2026, 1, 10)
    # PatientUpdated applies: the latest name replaces what the images carry
    assert s1["patient_id"] == "P-1" and s1["patient_name"] == "Петрова^Анна"

    s2 = by_uid[S2]
    assert s2["patient_id"] == "P-1" and s2["recorded_patient_ids"] == ["P-OLD"]  # merged
    assert (s2["instance_count"], s2["size"]) == (1, 2500)  # the newest version counts, once
    assert s2["missing"] == ["PerformingPhysicianCode", "Report"]
    assert s2["report_status"] == "none"

    assert by_uid[S3]["report_status"] == "draft" and by_uid[S3]["missing"] == ["Report"]
    assert by_uid[S4]["organisations"] == [ORG_A, ORG_B] and by_uid[S4]["series_count"] == 2
    assert by_uid[S4]["report_status"] == "signed"

    # filters
    assert [s["study_uid"] for s in search_studies(warehouse, modality="CT")] == [S5, S1]
    assert [s["study_uid"] for s in search_studies(warehouse, organisation=ORG_B)] == [S5, S4, S2]
    window = search_studies(warehouse, study_date_from=date(2026, 1, 12), study_date_to=date(2026, 1, 31))
    assert [s["study_uid"] for s in window] == [S4, S3]
    assert [s["study_uid"] for s in search_studies(warehouse, study_uid=S4)] == [S4]
    assert [s["study_uid"] for s in search_studies(warehouse, patient_name="Иванова*")] == [S5, S1, S2]
    assert [s["study_uid"] for s in search_studies(warehouse, patient_name="Петр?ва^*")] == [S5, S1]
    assert [s["study_uid"] for s in search_studies(warehouse, limit=2, offset=1)] == [S4, S3]
    assert search_studies(warehouse, modality="CT", organisation=ORG_A, patient_id="P-OLD")[0]["study_uid"] == S1

    # the patient across organisations, merges followed from either ID
    timeline = [s["study_uid"] for s in patient_timeline(warehouse, "P-1")]
    assert timeline == [S5, S1, S2]
    assert [s["study_uid"] for s in patient_timeline(warehouse, "P-OLD")] == timeline
    assert patient_record(warehouse, "P-OLD") == {
        "patient_id": "P-1",
        "merged_ids": ["P-OLD"],
        "issuer_of_patient_id": None,
        "patient_name": "Петрова^Анна",
        "patient_birth_date": None,
        "patient_sex": None,
    }

    series = study_series(warehouse, S1)
    assert [(s["series_number"], s["instance_count"], s["size"]) for s in series] == [(1, 3, 3000), (2, 2, 2000)]
    instances = series_instances(warehouse, S1, uid(1, 1, 1))
    assert [i["sop_uid"] for i in instances] == [uid(1, 1, 1, n) for n in range(3)]
    assert instances[0]["patient_name"] == "Иванова^Анна" and instances[0]["rows"] == 512

    assert instance_location(warehouse, uid(1, 2, 1, 0)) == {
        "sha256": "b" * 64, "size": 2500, "store": "file://", "version": 2, "study_uid": S2, "series_uid": uid(1, 2, 1),
    }  # fmt: skip
    assert instance_location(warehouse, uid(1, 2, 1, 0), version=1)["sha256"] == "a" * 64  # type: ignore[index]
    assert instance_location(warehouse, uid(9, 9)) is None

    report = study_report(warehouse, S1)
    assert report["status"] == "amended"
    [r] = report["reports"]
    assert r["conclusion_text"] == "заключение исправлено" and r["signed_conclusion_text"] == "заключение"
    assert r["signer"] == DOCTOR and r["signed_at"] == T0 + timedelta(hours=2) and r["revision"] == 2
    assert [(a["number"], a["reason"], a["conclusion_before"]) for a in r["amendments"]] == [
        (1, "опечатка", "заключение")
    ]
    assert study_report(warehouse, S3)["reports"][0]["conclusion_text"] == "—"
    assert study_report(warehouse, S5) == {"study_uid": S5, "status": "none", "reports": []}

    assert [s["study_uid"] for s in incomplete_packages(warehouse)] == [S5, S3, S2]
    assert [s["study_uid"] for s in incomplete_packages(warehouse, ORG_A)] == [S3]


def test_hostile_parameters_match_literally(warehouse: Warehouse, tmp_path: Path) -> None:
    log, _ = feed(tmp_path, warehouse, region_events())
    log.close()

    assert [s["study_uid"] for s in search_studies(warehouse, patient_name=HOSTILE_NAME)] == [S3]
    assert [s["study_uid"] for s in search_studies(warehouse, patient_name="O'Brien^100%*")] == [S3]
    assert [s["study_uid"] for s in search_studies(warehouse, patient_name="O'Brien^100??*")] == [S4, S3]
    assert [s["study_uid"] for s in search_studies(warehouse, patient_name="*\\ан")] == [S4, S3]
    assert search_studies(warehouse, patient_name="O'Brien^100%") == []  # % is no wildcard
    assert [s["study_uid"] for s in search_studies(warehouse, patient_id=HOSTILE_ID)] == [S3]
    assert search_studies(warehouse, patient_id="P'5\\%_") == []
    assert [s["study_uid"] for s in search_studies(warehouse, accession=HOSTILE_ACCESSION)] == [S3]
    assert search_studies(warehouse, accession="ACC'%") == []
    assert search_studies(warehouse, study_uid="' OR 1=1 --") == []
    assert search_studies(warehouse, organisation="x') OR ('1'='1") == []
    assert study_report(warehouse, "'; DROP TABLE archive_reports; --")["reports"] == []
    assert instance_location(warehouse, "\\' OR ''='") is None
    assert study_series(warehouse, S1)  # the tables are still there


def test_redelivery_and_rebuild_leave_identical_rows(warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    warehouse = warehouse_target.open()
    log, sink = feed(tmp_path, warehouse, region_events())
    try:
        first = snapshot(warehouse)
        assert len(first["archive_instances"]) == 11 and len(first["archive_reports"]) == 8
        assert len(first["archive_patients"]) == 1 and len(first["archive_patient_merges"]) == 1

        # (b) the whole sequence delivered again, in other batch sizes, into the same tables; with
        # background merges stopped, so the duplicates are really there until FINAL collapses them
        warehouse.command("SYSTEM STOP MERGES archive_instances")
        EmbeddedRunner(log, [(Redelivery("archive-index-redelivery"), sink)], batch_size=3).catch_up()
        raw = warehouse.query("SELECT count() FROM archive_instances").scalar()
        assert raw == 2 * 11 + 2  # every row written twice (the retried fact twice more) before FINAL
        assert snapshot(warehouse) == first
        warehouse.command("SYSTEM START MERGES archive_instances")

        # (c) a rebuild: drop the tables, create them again, replay from offset 0
        for table in ArchiveIndex.tables:
            warehouse.command(f"DROP TABLE {table}")
        rebuilt_sink = WarehouseSink(warehouse, ArchiveIndex.ddl)
        EmbeddedRunner(log, [(Redelivery("archive-index-rebuild"), rebuilt_sink)], batch_size=500).catch_up()
        assert snapshot(warehouse) == first
        # and after the engine merged the parts for good, FINAL or not
        for table in ArchiveIndex.tables:
            warehouse.command(f"OPTIMIZE TABLE {table} FINAL")
        assert snapshot(warehouse) == first
        assert warehouse.query("SELECT count() FROM archive_instances").scalar() == 11
    finally:
        log.close()
