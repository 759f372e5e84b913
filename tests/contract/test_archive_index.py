"""The archive index on both warehouse backends (chdb and clickhouse-connect over HTTP).

A synthetic event sequence goes through the real embedded log and :class:`EmbeddedRunner` into a
:class:`WarehouseSink` (and into the query store, which the study lists read); the query layer must
answer from them, and redelivery and a rebuild must leave exactly the same rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from projections.archive_index.fold import ArchiveIndex
from projections.archive_index.views import (
    instance_location,
    patient_record,
    series_instances,
    study_report,
    study_series,
)
from projections.query_model.find import incomplete_packages, patient_timeline, search_studies
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Event
from streams.processing import EmbeddedRunner, Row, Source
from tests.support.region import (
    DOCTOR,
    HOSTILE_ACCESSION,
    HOSTILE_ID,
    HOSTILE_NAME,
    ORG_A,
    ORG_B,
    S1,
    S2,
    S3,
    S4,
    S5,
    T0,
    feed,
    project_queries,
    region_events,
    uid,
)
from tests.support.warehouses import WarehouseTarget


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


def test_queries_answer_from_the_projected_events(warehouse: Warehouse, tmp_path: Path) -> None:
    log, _ = feed(tmp_path, warehouse, region_events())
    store = project_queries(log, tmp_path / "query.db")
    log.close()

    everything = search_studies(store)
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
    assert [s["study_uid"] for s in search_studies(store, modality="CT")] == [S5, S1]
    assert [s["study_uid"] for s in search_studies(store, organisation=ORG_B)] == [S5, S4, S2]
    window = search_studies(store, study_date_from=date(2026, 1, 12), study_date_to=date(2026, 1, 31))
    assert [s["study_uid"] for s in window] == [S4, S3]
    assert [s["study_uid"] for s in search_studies(store, study_uid=S4)] == [S4]
    assert [s["study_uid"] for s in search_studies(store, patient_name="Иванова*")] == [S5, S1, S2]
    assert [s["study_uid"] for s in search_studies(store, patient_name="Петр?ва^*")] == [S5, S1]
    assert [s["study_uid"] for s in search_studies(store, limit=2, offset=1)] == [S4, S3]
    assert search_studies(store, modality="CT", organisation=ORG_A, patient_id="P-OLD")[0]["study_uid"] == S1

    # the patient across organisations, merges followed from either ID
    timeline = [s["study_uid"] for s in patient_timeline(store, "P-1")]
    assert timeline == [S5, S1, S2]
    assert [s["study_uid"] for s in patient_timeline(store, "P-OLD")] == timeline
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

    assert [s["study_uid"] for s in incomplete_packages(store)] == [S5, S3, S2]
    assert [s["study_uid"] for s in incomplete_packages(store, ORG_A)] == [S3]


def test_hostile_parameters_match_literally(warehouse: Warehouse, tmp_path: Path) -> None:
    log, _ = feed(tmp_path, warehouse, region_events())
    store = project_queries(log, tmp_path / "query.db")
    log.close()

    assert [s["study_uid"] for s in search_studies(store, patient_name=HOSTILE_NAME)] == [S3]
    assert [s["study_uid"] for s in search_studies(store, patient_name="O'Brien^100%*")] == [S3]
    assert [s["study_uid"] for s in search_studies(store, patient_name="O'Brien^100??*")] == [S4, S3]
    assert [s["study_uid"] for s in search_studies(store, patient_name="*\\ан")] == [S4, S3]
    assert search_studies(store, patient_name="O'Brien^100%") == []  # % is no wildcard
    assert [s["study_uid"] for s in search_studies(store, patient_id=HOSTILE_ID)] == [S3]
    assert search_studies(store, patient_id="P'5\\%_") == []
    assert [s["study_uid"] for s in search_studies(store, accession=HOSTILE_ACCESSION)] == [S3]
    assert search_studies(store, accession="ACC'%") == []
    assert search_studies(store, study_uid="' OR 1=1 --") == []
    assert search_studies(store, organisation="x') OR ('1'='1") == []
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
