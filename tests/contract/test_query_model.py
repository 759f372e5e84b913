"""The query model on both event-log backends and both query store engines (SQLite, PostgreSQL):
the live runner folds the log into the query store, and redelivery and a rebuild from offset 0
leave exactly the same rows; merges and demographics that arrive after the studies reach the rows
already there; a rebuild while serving swaps in while readers see the old rows or the new; and on
PostgreSQL, two writer processes applying interleaved batches of the same studies leave the rows
one writer leaves.

On Kafka the broker is shared by the session's tests, so the answers are checked for this test's
own studies (UID lists); the row-for-row comparisons cover whatever the topics hold.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.config import ConfigError, Settings
from projections.archive_index.matching import ATTRIBUTES, Condition, parse_condition
from projections.query_model.find import find, search_studies
from projections.query_model.fold import QueryModel
from projections.query_model.postgres import PostgresRefused, PostgresUnreachable
from projections.query_model.store import (
    TABLES,
    PostgresQueryStore,
    QueryModelSink,
    QueryStore,
    SqliteQueryStore,
    open_query_store,
)
from projections.rebuild_online import rebuild_online
from projections.replay import rebuild
from projections.warehouse import open_warehouse
from schemas.events import Event, new_event
from streams import EventLog, open_event_log
from streams.processing import EmbeddedRunner
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.support.events import synthetic_sequence
from tests.support.postgres import (
    PostgresServer,
    QueryStores,
    apply_batches,
    folded_batches,
    project_into,
    snapshot,
)
from tests.support.region import ORG_A, S1, S2, S3, S4, S5, T0, received, region_events, uid
from tests.support.servers import free_port

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


def region_studies(store: QueryStore, **values: str | list[str]) -> list[str]:
    rows = find(store, "STUDY", keys(StudyInstanceUID=REGION, **values))
    return [r["StudyInstanceUID"] for r in rows]


def test_redelivery_and_a_rebuild_leave_the_same_rows(
    event_log: EventLog, query_stores: QueryStores, tmp_path: Path
) -> None:
    publish_many(event_log, region_events())
    store = query_stores.open()
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


def test_merges_and_updates_after_the_studies_reach_their_rows(query_stores: QueryStores, tmp_path: Path) -> None:
    with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
        log.ensure_topics(archive_topics(3))
        store = query_stores.open()
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
            query_stores.close()


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
    with pytest.raises(ValueError, match="sqlite://") as refused:
        open_query_store("mysql://cami:secret@db/cami")
    assert "secret" not in str(refused.value)


@pytest.mark.postgres
def test_a_postgresql_store_is_named_by_its_setting(postgres_server: PostgresServer, tmp_path: Path) -> None:
    url = postgres_server.url_for()
    settings = Settings.from_env({"CAMI_HOME": str(tmp_path), "CAMI_QUERY_STORE": url})
    assert settings.query_store_url == url
    shown = settings.describe()["query_store"]
    assert postgres_server.password not in shown and shown.startswith("postgresql://cami:***@127.0.0.1:")
    store = open_query_store(url.replace("postgresql://", "postgres://") + "&sslmode=disable")  # passed to libpq
    try:
        assert isinstance(store, PostgresQueryStore) and store.backend == "postgresql"
        assert store.counts() == dict.fromkeys(TABLES, 0)
        # the row store's SQL as written: named parameters, casts, % in the text
        assert store.select("SELECT 'a%' AS p, 7 % 3 AS m, :x::text AS x, :x || 'b' AS y", {"x": "z"}) == [
            {"p": "a%", "m": 1, "x": "z", "y": "zb"}
        ]
    finally:
        store.discard()
    with pytest.raises(ConfigError, match="CAMI_QUERY_STORE") as bad_port:
        Settings.from_env({"CAMI_HOME": str(tmp_path), "CAMI_QUERY_STORE": "postgresql://cami:pw@db:99999/cami"})
    assert "pw" not in str(bad_port.value)


@pytest.mark.postgres
def test_a_postgresql_store_that_cannot_be_used_says_why_in_one_line(postgres_server: PostgresServer) -> None:
    address = postgres_server.address
    with pytest.raises(PostgresRefused) as wrong:
        open_query_store(f"postgresql://cami:not-the-password@{address}/cami")
    message = str(wrong.value)
    assert "'cami'" in message and address in message and "not-the-password" not in message
    assert "password" in message and "\n" not in message
    with pytest.raises(PostgresRefused, match="no database 'elsewhere'"):
        open_query_store(f"postgresql://cami:{postgres_server.password}@{address}/elsewhere")
    closed = free_port()
    with pytest.raises(PostgresUnreachable, match=f"127.0.0.1:{closed}.*start the server"):
        open_query_store(f"postgresql://cami:{postgres_server.password}@127.0.0.1:{closed}/cami")


class Readers:
    """Threads that keep asking the store for every study (study level) and every instance
    (instance level: three tables joined) while a rebuild runs; each answer is checked alone."""

    def __init__(self, store: QueryStore) -> None:
        self.store = store
        self.seen: list[tuple[list[str], int]] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True) for _ in range(2)]

    def answer(self) -> list[tuple[list[str], int]]:
        """(the studies listed, 0) and (the studies of the instances listed, how many instances)."""
        studies = [r["StudyInstanceUID"] for r in find(self.store, "STUDY", {}, limit=1000)]
        instances = find(self.store, "IMAGE", {}, limit=1000, returned=["SOPInstanceUID"])
        return [(studies, 0), (sorted({r["StudyInstanceUID"] for r in instances}), len(instances))]

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.seen.extend(self.answer())
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> Readers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_a_rebuild_while_serving_swaps_in_while_readers_see_old_or_new(
    query_stores: QueryStores, tmp_path: Path
) -> None:
    """`cami replay --online` for the query model: the shadow is filled from the log, then swapped
    in while two threads keep querying; each answer is the live store's before or after, and the
    final pass writes through the live store's own connections onto the swapped-in tables."""
    with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
        log.ensure_topics(archive_topics(3))
        publish_many(log, synthetic_sequence(31, studies=6))
        live = query_stores.open()
        fold(log, live, "query-model", batch_size=5)  # the live store, its statements used many times
        warehouse = open_warehouse(f"chdb://{tmp_path / 'clickhouse'}")  # where dead letters would be
        readers = Readers(live)
        try:
            old = readers.answer()
            publish_many(log, synthetic_sequence(32, studies=3))  # only the rebuild applies these
            late = synthetic_sequence(33, studies=2)

            def arrive_late() -> None:  # after the shadow's last catch-up: the final pass brings these
                publish_many(log, late)

            with readers:
                rebuild_online(
                    log,
                    warehouse,
                    [QueryModel()],
                    own_sinks={QueryModel.name: QueryModelSink(live, warehouse)},
                    batch_size=20,
                    before_swap=arrive_late,
                )
            new = readers.answer()
        finally:
            warehouse.close()
        assert readers.errors == []
        assert len(old[0][0]) == 6 and len(new[0][0]) == 6 + 3 + 2
        assert len(readers.seen) > 20
        # before the swap the old rows; from it on, every study the shadow was filled with (the
        # final pass then adds the late ones): never none, never a part of the rebuilt rows
        swapped = set(old[0][0]) | {f"1.2.826.0.1.3680043.8.498.32.{s}" for s in (1, 2, 3)}
        for studies, instances in readers.seen:  # instances 0: a study-level answer
            grown = instances == 0 or instances > old[1][1]
            assert (studies, instances) in old or (set(studies) >= swapped and grown)
        assert old[1] in readers.seen and any(set(studies) >= swapped for studies, _ in readers.seen)
        # the swapped-in rows are the rows of a store filled from nothing
        again = project_into(log, query_stores.open("again"), group="query-model-again", batch_size=50)
        assert snapshot(live) == snapshot(again)
        if isinstance(live, PostgresQueryStore):  # the shadow's schema is gone
            rows = live.select(
                "SELECT nspname FROM pg_namespace WHERE nspname = :name", {"name": f"{live.schema}_rebuild"}
            )
            assert rows == []
        else:
            assert not (tmp_path / "query.rebuild.db").exists()


@pytest.mark.postgres
def test_two_writer_processes_leave_the_rows_of_one(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """Two `cami workers` on one PostgreSQL store: two processes apply the same studies' batches
    at once, interleaved (one forwards, the other backwards, twice over), each batch a transaction
    under the store's lock; the rows equal what one writer leaves, and nobody deadlocked."""
    query_stores = QueryStores("postgresql", tmp_path, postgres_server)
    try:
        two_writers(query_stores, tmp_path)
    finally:
        query_stores.close()


def two_writers(query_stores: QueryStores, tmp_path: Path) -> None:
    with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
        log.ensure_topics(archive_topics(3))
        publish_many(log, synthetic_sequence(41, studies=8) + region_events())
        batches = folded_batches(log, batch_size=3)
    assert len(batches) > 20
    one = query_stores.open("one")
    apply_batches(query_stores.url("one"), batches)
    shared = query_stores.open("shared")  # creates the schema before the writers race
    spawn = multiprocessing.get_context("spawn")
    writers = [
        spawn.Process(target=apply_batches, args=(query_stores.url("shared"), order, 2))
        for order in (batches, batches[::-1])
    ]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(timeout=300)
    assert [w.exitcode for w in writers] == [0, 0]
    assert snapshot(shared) == snapshot(one)
    assert len(snapshot(one)["qm_studies"]) == 8 + 5
    assert query_stores.server is not None
    with psycopg.connect(query_stores.server.url) as admin:
        waiting = admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'").fetchone()
    assert waiting == (0,)  # every writer's lock went with its transaction


@pytest.mark.postgres
def test_a_swap_gives_way_to_a_reader_it_would_deadlock_with(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """A reader in a transaction holds one table and then asks for another that the swap took
    first: the swap lets go within a fraction of ``deadlock_timeout``, the reader gets its rows
    (PostgreSQL never has to break a deadlock by failing it), and the swap is done once it ends."""
    stores = QueryStores("postgresql", tmp_path, postgres_server)
    try:
        with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
            log.ensure_topics(archive_topics(3))
            publish_many(log, region_events())
            live = project_into(log, stores.open())
            assert isinstance(live, PostgresQueryStore)
            rebuilt = project_into(log, live.shadow(), group="query-model-shadow")
            expected = rebuilt.counts()
            live.reset()  # the live tables empty: the swap's effect shows
        outcome: list[BaseException | None] = []

        def swap() -> None:
            try:
                live.replace_with(rebuilt)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        with psycopg.connect(postgres_server.url, autocommit=True) as reader:
            schema = live.schema
            reader.execute("BEGIN")
            assert reader.execute(f"SELECT count(*) FROM {schema}.qm_series").fetchone() == (0,)
            swapping = threading.Thread(target=swap)
            swapping.start()
            swapping.join(timeout=1.0)
            assert swapping.is_alive()  # it waits for the reader's table
            # a table the swap takes before qm_series (they go in name order): a deadlock, unless it gives way
            assert reader.execute(f"SELECT count(*) FROM {schema}.qm_reports").fetchone() == (0,)
            reader.execute("COMMIT")
            swapping.join(timeout=60)
        assert outcome == [None]
        assert live.counts() == expected
        rebuilt.discard()
    finally:
        stores.close()


def test_nul_padding_in_a_value_and_in_a_query_is_harmless(query_stores: QueryStores, tmp_path: Path) -> None:
    """Some devices pad values with NUL; PostgreSQL's text cannot hold it. The study reaches the
    rows (no dead letter) on both engines, and a query holding NUL (a hostile QIDO parameter) is
    answered, not an error."""
    study, series, sop = uid("nul-study"), uid("nul-series"), uid("nul-sop")
    with open_event_log(f"sqlite://{tmp_path}/nul.db") as log:
        log.ensure_topics(archive_topics(3))
        publish_many(
            log, [received(study, series, sop, patient_id="NUL-1", patient_name="NUL^PADDED\x00", organisation=ORG_A)]
        )
        store = project_into(log, query_stores.open())
    [row] = store.select("SELECT patient_name FROM qm_studies WHERE study_uid = :study", {"study": study})
    assert str(row["patient_name"]).rstrip("\x00") == "NUL^PADDED"
    assert [r["StudyInstanceUID"] for r in find(store, "STUDY", keys(PatientID="NUL-1"))] == [study]
    assert find(store, "STUDY", keys(PatientID="NUL-1\x00")) in ([], [find(store, "STUDY", keys(PatientID="NUL-1"))[0]])
