"""The query model on both event-log backends: the live runner folds the log into the query store,
and redelivery and a rebuild from offset 0 leave exactly the same rows; merges and demographics that
arrive after the studies reach the rows already there.

On Kafka the broker is shared by the session's tests, so the answers are checked for this test's
own studies (UID lists); the row-for-row comparisons cover whatever the topics hold.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from api.config import Settings
from projections.archive_index.matching import ATTRIBUTES, Condition, parse_condition
from projections.query_model.find import find, search_studies
from projections.query_model.fold import QueryModel
from projections.query_model.store import TABLES, QueryModelSink, QueryStore, SqliteQueryStore, open_query_store
from projections.replay import rebuild
from projections.warehouse import open_warehouse
from schemas.events import Event, new_event
from streams import EventLog, open_event_log
from streams.processing import EmbeddedRunner
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.support.region import ORG_A, S1, S2, S3, S4, S5, T0, received, region_events, uid

REGION = [S1, S2, S3, S4, S5]


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "embedded":
        url = f"sqlite://{tmp_path}/events.db"
    else:
        server: Any = request.getfixturevalue("kafka_server")
        url = f"kafka://{server.bootstrap}?delivery_timeout_ms=10000"
    with open_event_log(url) as log:
        log.ensure_topics(archive_topics(3))
        yield log


def keys(**values: str | list[str]) -> dict[str, Condition]:
    return {k: parse_condition(ATTRIBUTES[k], v, separators="\\,") for k, v in values.items()}


def fold(log: EventLog, store: QueryStore, group: str, batch_size: int) -> None:
    """The live path: the embedded runner under consumer group ``group`` into ``store``."""
    model = QueryModel()
    model.name = group
    EmbeddedRunner(log, [(model, QueryModelSink(store))], batch_size=batch_size).catch_up(timeout=180)


def snapshot(store: QueryStore) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sorted((tuple(r.values()) for r in store.select(f"SELECT * FROM {t}")), key=repr) for t in TABLES}


def region_studies(store: QueryStore, **values: str | list[str]) -> list[str]:
    rows = find(store, "STUDY", keys(StudyInstanceUID=REGION, **values))
    return [r["StudyInstanceUID"] for r in rows]


def test_redelivery_and_a_rebuild_leave_the_same_rows(event_log: EventLog, tmp_path: Path) -> None:
    publish_many(event_log, region_events())
    store = SqliteQueryStore(tmp_path / "query.db")
    warehouse = open_warehouse(f"chdb://{tmp_path / 'clickhouse'}")  # where dead letters would go
    try:
        fold(event_log, store, "query-model-live", batch_size=7)
        live = snapshot(store)

        # what QIDO-RS and C-FIND answer for the region
        assert region_studies(store) == [S5, S4, S3, S1, S2]
        assert region_studies(store, PatientID="P-OLD") == [S5, S1, S2]  # the merged patient, from either ID
        assert region_studies(store, PatientName="петр?ва^*") == [S5, S1, S2]  # the latest name, case folded
        assert region_studies(store, PatientName="Иванова*") == []
        [s1] = find(store, "STUDY", keys(StudyInstanceUID=S1))
        assert (s1["NumberOfStudyRelatedSeries"], s1["NumberOfStudyRelatedInstances"]) == (2, 5)  # retry collapsed
        [newest] = find(store, "IMAGE", keys(SOPInstanceUID=uid(1, 2, 1, 0)))
        assert newest["Version"] == 2
        listed = {s["study_uid"]: s for s in search_studies(store, patient_id="P-OLD")}
        assert {S1, S2, S5} <= set(listed)
        assert listed[S1]["report_status"] == "amended" and listed[S2]["missing"] == [
            "PerformingPhysicianCode",
            "Report",
        ]

        # every event delivered again (another group, other batches): not one row changes
        fold(event_log, store, "query-model-again", batch_size=3)
        assert snapshot(store) == live

        # a rebuild from offset 0, as `cami replay --projection query-model` runs it
        sink = QueryModelSink(store, warehouse)
        result = rebuild(event_log, warehouse, [QueryModel()], batch_size=11, own_sinks={"query-model": sink})
        assert snapshot(store) == live
        assert result.table_rows == {t: len(rows) for t, rows in live.items()}
    finally:
        warehouse.close()
        store.close()


def test_merges_and_updates_after_the_studies_reach_their_rows(tmp_path: Path) -> None:
    with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
        log.ensure_topics(archive_topics(3))
        store = SqliteQueryStore(tmp_path / "query.db")
        a, b, c = uid(8, 1), uid(8, 2), uid(8, 3)

        def study(study_uid: str, patient_id: str, name: str, hours: int) -> Event:
            return received(
                study_uid, f"{study_uid}.1", f"{study_uid}.1.1", patient_id=patient_id, patient_name=name,
                organisation=ORG_A, study_date="20260105", accession=f"ACC-{hours}", at=T0 + timedelta(hours=hours),
            )  # fmt: skip

        def merged(prior: str, surviving: str) -> Event:
            return new_event(
                "PatientsMerged", {"PatientID": surviving, "PriorPatientID": prior, "source": "hl7"},
                aggregate_id=surviving, source_node="MIS",
            )  # fmt: skip

        try:
            publish_many(log, [study(a, "PA", "Сидоров^Иван", 0), study(b, "PB", "Сидорова^Анна", 1)])
            publish_many(log, [study(c, "PC", "Волков^Олег", 2)])
            fold(log, store, "query-model", batch_size=500)
            assert [r["PatientID"] for r in find(store, "STUDY", keys(StudyInstanceUID=[a, b, c]))] == [
                "PA",
                "PB",
                "PC",
            ]  # one date and time: by UID
            # a case-folded Cyrillic prefix, and wildcards stay case-sensitive outside person names
            assert [r["StudyInstanceUID"] for r in find(store, "STUDY", keys(PatientName="сИДОРОВ*"))] == [a, b]
            assert find(store, "STUDY", keys(AccessionNumber="acc-*", StudyInstanceUID=a)) == []
            assert len(find(store, "STUDY", keys(AccessionNumber="ACC-*", StudyInstanceUID=a))) == 1

            # later: PB merged into PA, then PC into PB (a chain), and PA renamed
            publish_many(log, [merged("PB", "PA")])
            fold(log, store, "query-model", batch_size=500)
            publish_many(log, [merged("PC", "PB")])
            renamed = {"PatientID": "PA", "PatientName": "Сидорова^Анна^Ивановна", "source": "hl7"}
            publish_many(log, [new_event("PatientUpdated", renamed, aggregate_id="PA", source_node="MIS")])
            fold(log, store, "query-model", batch_size=500)
            rows = find(store, "STUDY", keys(PatientID="PC"))
            assert [(r["StudyInstanceUID"], r["PatientID"]) for r in rows] == [(a, "PA"), (b, "PA"), (c, "PA")]
            assert {r["PatientName"] for r in rows} == {"Сидорова^Анна^Ивановна"}
            assert [r["StudyInstanceUID"] for r in find(store, "STUDY", keys(PatientName="*ивановна"))] == [a, b, c]
            assert find(store, "STUDY", keys(PatientName="Волков*")) == []  # shown as the surviving patient now
            [patient] = find(store, "PATIENT", keys(PatientID="PB"))
            assert (patient["PatientID"], patient["NumberOfPatientRelatedStudies"]) == ("PA", 3)
            # the study lists follow the merge both ways; the name in the images still finds its study
            assert [s["study_uid"] for s in search_studies(store, patient_id="PC")] == [a, b, c]
            assert [s["study_uid"] for s in search_studies(store, patient_name="волков*")] == [c]
            # and a rebuild of this store from the log gives the same rows
            before = snapshot(store)
            store.reset()
            fold(log, store, "query-model-rebuilt", batch_size=1)
            assert snapshot(store) == before
        finally:
            store.close()


def test_the_store_is_named_by_its_setting(tmp_path: Path) -> None:
    default = Settings.from_env({"CAMI_HOME": str(tmp_path)})
    assert default.query_store_url == f"sqlite://{tmp_path}/query.db"
    elsewhere = tmp_path / "fast" / "queries.db"
    store = open_query_store(f"sqlite://{elsewhere}")
    try:
        assert isinstance(store, SqliteQueryStore) and store.path == elsewhere and elsewhere.exists()
        assert store.counts() == dict.fromkeys(TABLES, 0)
    finally:
        store.close()
    with pytest.raises(ValueError, match="sqlite://"):
        open_query_store("postgresql://db/cami")
