"""A projection never commits past an event it did not apply (issue 9, point 1).

On both event-log backends (embedded SQLite, real Kafka), with the real runner and real
ClickHouse (chdb, and the clickhouse-connect path against the test-only HTTP stand-in):

* objects whose DICOM values do not fit a column (StudyDate 18991231, 00000000, 99991231...)
  are all answered Success and all indexed, live and after a restart;
* an event its projection cannot apply is recorded as a dead letter, the others are applied,
  the position is committed past it, ``cami status --json`` lists it and a rebuild retries it;
* a warehouse outage commits nothing and dead-letters nothing; once the warehouse is back the
  whole batch is applied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from projections import dead_letters
from projections.catalogue import EventCatalogue
from projections.query_model.find import search_studies
from projections.replay import rebuild
from projections.sinks import WarehouseSink
from projections.warehouse import open_warehouse
from schemas.events import Event
from streams import open_event_log
from streams.log import EventLog
from streams.processing import SETTLE_AFTER, EmbeddedRunner, Row, Source, group_id
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.support import studies
from tests.support.chdb_http import ChdbHttpServer
from tests.support.events import FussyCatalogue, synthetic_events
from tests.support.paths import ROOT
from tests.support.readside import SENDER_AE, ReadSide, senders_toml
from tests.support.servers import free_port

ORG = next(iter(SENDER_AE))


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite://{tmp_path}/events.db"
    server: Any = request.getfixturevalue("kafka_server")
    return f"kafka://{server.bootstrap}"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


# -- 40 objects with values that do not fit a column ---------------------------------------------
#: per study: StudyDate, StudyTime as the sender wrote them (five instances each)
ODD_STUDIES = [
    ("18991231", "101500"),  # before ClickHouse's Date (and Date32): the value seen in the field
    ("00000000", "000000"),  # a "no date" some modalities send
    ("99991231", "235959"),  # after every ClickHouse date type
    ("20241332", "256199"),  # month 13; a time that is no time
    ("19500101", "083000"),  # before 1970: fits Date32, not Date
    ("20261124", "101500"),
    ("20261125", "111500"),
    ("20261126", "121500"),
]


def _start(settings: Settings) -> tuple[Archive, EmbeddedRunner, Any]:
    archive = bootstrap(settings)
    runner = EmbeddedRunner(archive.event_log, archive.bindings())
    runner.start()
    scp = archive.storage_scp(port=0)
    scp.start()
    return archive, runner, scp


def _indexed(archive: Archive, patient_id: str) -> int:
    """The patient's instances as both read models count them (the fewer of the two)."""
    found = search_studies(archive.query_store, patient_id=patient_id, limit=100)
    in_index = archive.warehouse.query(
        "SELECT uniqExact(sop_uid) FROM archive_instances FINAL WHERE patient_id = {p:String}", {"p": patient_id}
    ).scalar()
    return min(sum(int(s["instance_count"]) for s in found), int(in_index or 0))


def test_forty_objects_with_odd_values_are_all_indexed_live_and_after_restart(log_url: str, tmp_path: Path) -> None:
    home = tmp_path / "cami"
    home.mkdir()
    (home / "senders.toml").write_text(senders_toml(), encoding="utf-8")
    settings = Settings.from_env({"CAMI_HOME": str(home), "CAMI_PARTITIONS": "3", "CAMI_EVENT_LOG": log_url})
    patient_id = f"ODD-{uuid.uuid4().hex[:8]}"
    datasets = []
    study_uids = []
    for study_date, study_time in ODD_STUDIES:
        study_uid, series_uid = generate_uid(), generate_uid()
        study_uids.append(study_uid)
        for number in range(1, 6):
            ds = studies.instance(study_uid, series_uid, number, patient_id=patient_id, size=16)
            ds.StudyDate = study_date
            ds.StudyTime = study_time
            datasets.append(ds)
    assert len(datasets) == 40

    archive, runner, scp = _start(settings)
    try:
        ae = AE(ae_title=SENDER_AE[ORG])
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="CAMI")
        assert assoc.is_established
        try:
            statuses = [assoc.send_c_store(ds).Status for ds in datasets]
        finally:
            assoc.release()
        assert statuses == [0x0000] * 40
        wait_for(lambda: _indexed(archive, patient_id) >= 40, "40 instances in the read models")
        assert _indexed(archive, patient_id) == 40
        assert not runner.errors
    finally:
        scp.stop()
        runner.stop()
        archive.close()

    archive, runner, scp = _start(settings)  # a restart: the index is what the tables hold
    try:
        warehouse = archive.warehouse
        assert _indexed(archive, patient_id) == 40
        kept = dict(
            warehouse.query(
                "SELECT study_date_text, any(study_date) FROM archive_instances FINAL"
                " WHERE patient_id = {p:String} GROUP BY study_date_text",
                {"p": patient_id},
            ).rows
        )
        # the text as sent is kept; a date only where it is one ClickHouse can hold
        assert kept == {
            "18991231": None,
            "00000000": None,
            "99991231": None,
            "20241332": None,
            "19500101": date(1950, 1, 1),
            "20261124": date(2026, 11, 24),
            "20261125": date(2026, 11, 25),
            "20261126": date(2026, 11, 26),
        }
        # date matching still works, before 1970 too, and odd dates match no range
        found = search_studies(
            archive.query_store, patient_id=patient_id, study_date_from=date(1949, 1, 1), study_date_to=date(1951, 1, 1)
        )
        assert [s["study_uid"] for s in found] == [study_uids[4]]
        recent = search_studies(archive.query_store, patient_id=patient_id, study_date_from=date(2026, 1, 1))
        assert sorted(s["study_uid"] for s in recent) == sorted(study_uids[5:])
        assert dead_letters.counts(warehouse) == {}
    finally:
        scp.stop()
        runner.stop()
        archive.close()


# -- one event its projection cannot apply ---------------------------------------------------------
class Tally:
    """A projection whose rows for chosen events do not fit its table (UInt8): the warehouse
    refuses those rows and accepts the others' (test only)."""

    topics: Sequence[str] = EventCatalogue.topics

    def __init__(self, oversized: set[str]) -> None:
        self.name = f"tally-{uuid.uuid4().hex[:8]}"
        self.table = f"tally_{self.name[6:]}"
        self.tables = (self.table,)
        self.ddl = (
            f"CREATE TABLE IF NOT EXISTS {self.table} (event_id String, n UInt8, offset UInt64)"
            " ENGINE = ReplacingMergeTree ORDER BY event_id",
        )
        self.oversized = oversized

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        event_id = str(event.envelope.event_id)
        n = 300 if event_id in self.oversized else 1
        return [Row(self.table, {"event_id": event_id, "n": n, "offset": source.offset})]


def _caught_up(event_log: EventLog, group: str, topics: Sequence[str], ends: dict[str, dict[int, int]]) -> bool:
    return all(event_log.committed(group, t).get(p, 0) >= end for t in topics for p, end in ends[t].items() if end > 0)


def test_an_unprocessable_event_is_dead_lettered_committed_past_listed_and_retried(
    log_url: str, tmp_path: Path
) -> None:
    chdb_dir = tmp_path / "clickhouse"
    events = synthetic_events(12)
    bad, refused = str(events[4].envelope.event_id), str(events[9].envelope.event_id)
    fussy, tally = FussyCatalogue({bad}), Tally({refused})
    mine = {str(e.envelope.event_id) for e in events}
    with open_event_log(log_url) as event_log:
        event_log.ensure_topics(archive_topics(3))
        positions = publish_many(event_log, events)
        ends = {t: event_log.end_offsets(t) for t in fussy.topics}
        warehouse = open_warehouse(f"chdb://{chdb_dir}")
        try:
            bindings = [(p, WarehouseSink(warehouse, p.ddl)) for p in (fussy, tally)]
            runner = EmbeddedRunner(event_log, bindings)
            runner.catch_up(timeout=120)
            # the others are applied, and each projection's position is past its bad event
            for processor in (fussy, tally):
                assert _caught_up(event_log, group_id(processor), processor.topics, ends)
            catalogued = {r[0] for r in warehouse.query("SELECT toString(event_id) FROM event_catalogue FINAL").rows}
            assert catalogued & mine == mine - {bad}
            tallied = {r[0] for r in warehouse.query(f"SELECT event_id FROM {tally.table} FINAL").rows}
            assert tallied & mine == mine - {refused}
            [letter] = dead_letters.open_letters(warehouse, fussy.name)
            where = positions[4]
            assert (letter["event_id"], letter["topic"], letter["partition"], letter["offset"]) == (
                bad,
                where.topic,
                where.partition,
                where.offset,
            )
            assert letter["event_type"] == events[4].type and "cannot apply" in letter["error"]
            [letter] = dead_letters.open_letters(warehouse, tally.name)
            assert letter["event_id"] == refused and letter["offset"] == positions[9].offset
        finally:
            warehouse.close()

        # `cami status --json` (another process, the same storage) lists them per projection
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CAMI_HOME": str(tmp_path / "home"),
            "CAMI_EVENT_LOG": log_url,
            "CAMI_CLICKHOUSE": f"chdb://{chdb_dir}",
            "CAMI_BLOBS": f"file://{tmp_path}/blobs",
        }
        status = subprocess.run(
            [sys.executable, "-m", "api.cli", "status", "--json"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert status.returncode == 0, status.stderr
        listed = json.loads(status.stdout)["dead_letters"]
        assert listed[fussy.name]["open"] == 1 and listed[fussy.name]["letters"][0]["event_id"] == bad
        assert listed[tally.name]["open"] == 1 and listed[tally.name]["letters"][0]["event_id"] == refused

        # a rebuild retries them: what still fails is recorded again, what now works is applied
        warehouse = open_warehouse(f"chdb://{chdb_dir}")
        try:
            result = rebuild(event_log, warehouse, [fussy])
            assert result.retried_dead_letters == {fussy.name: 1}
            assert result.dead_letters == {fussy.name: 1}
            assert [d["event_id"] for d in dead_letters.open_letters(warehouse, fussy.name)] == [bad]

            fussy.refuse.clear()  # the projection is fixed
            result = rebuild(event_log, warehouse, [fussy])
            assert result.retried_dead_letters == {fussy.name: 1} and result.dead_letters == {}
            assert dead_letters.open_letters(warehouse, fussy.name) == []
            catalogued = {r[0] for r in warehouse.query("SELECT toString(event_id) FROM event_catalogue FINAL").rows}
            assert mine <= catalogued
            assert dead_letters.counts(warehouse) == {tally.name: 1}  # another projection's stay
        finally:
            warehouse.close()


# -- a warehouse outage ----------------------------------------------------------------------------
class NamedCatalogue(EventCatalogue):
    def __init__(self) -> None:
        self.name = f"outage-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def warehouse_server(tmp_path: Path) -> Iterator[ChdbHttpServer]:
    server = ChdbHttpServer(tmp_path / "clickhouse-http", port=free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.clickhouse_http
def test_a_warehouse_outage_commits_nothing_dead_letters_nothing_and_applies_all_once_back(
    log_url: str, warehouse_server: ChdbHttpServer
) -> None:
    processor = NamedCatalogue()
    group = group_id(processor)
    url = warehouse_server.url
    first, during, after = synthetic_events(6), synthetic_events(10), synthetic_events(5)

    def ids(events: list[Event]) -> set[str]:
        return {str(e.envelope.event_id) for e in events}

    with open_event_log(log_url) as event_log:
        event_log.ensure_topics(archive_topics(3))
        warehouse = open_warehouse(url)
        checker = open_warehouse(url)

        def catalogued() -> set[str]:
            return {r[0] for r in checker.query("SELECT toString(event_id) FROM event_catalogue FINAL").rows}

        runner = EmbeddedRunner(event_log, [(processor, WarehouseSink(warehouse, processor.ddl))], linger=0.1)
        runner.start()
        try:
            publish_many(event_log, first)
            wait_for(lambda: ids(first) <= catalogued(), "the first events applied")
            wait_for(lambda: sum(event_log.lag(group, t) for t in processor.topics) == 0, "first events committed")
            committed = {t: event_log.committed(group, t) for t in processor.topics}

            warehouse_server.stop()  # the warehouse goes down
            publish_many(event_log, during)
            # failing for long enough that the runner also tried to set the events aside
            wait_for(lambda: runner.failures[processor.name] > SETTLE_AFTER + 1, "repeated failures", timeout=120)
            assert {t: event_log.committed(group, t) for t in processor.topics} == committed
            assert sum(event_log.lag(group, t) for t in processor.topics) == len(during)

            warehouse_server.start()  # back, on the same port
            publish_many(event_log, after)
            wanted = ids(first) | ids(during) | ids(after)
            wait_for(lambda: wanted <= catalogued(), "every event applied once the warehouse is back", timeout=120)
            wait_for(lambda: sum(event_log.lag(group, t) for t in processor.topics) == 0, "everything committed")
            assert dead_letters.open_letters(checker, processor.name) == []
            assert runner.dead_lettered[processor.name] == 0
        finally:
            runner.stop()
            warehouse.close()
            checker.close()


def test_regional_it_sees_the_dead_letters_without_their_error_text(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        events = synthetic_events(4)
        bad = str(events[1].envelope.event_id)
        publish_many(side.archive.event_log, events)
        fussy = FussyCatalogue({bad})
        sink = WarehouseSink(side.archive.warehouse, fussy.ddl)
        EmbeddedRunner(side.archive.event_log, [(fussy, sink)]).catch_up(timeout=60)
        with side.client("it") as it:
            response = it.get("/api/monitoring/dead-letters")
            assert response.status_code == 200, response.text
            body = response.json()
        assert body["projections"] == {fussy.name: 1}
        [letter] = body["letters"]
        assert (letter["processor"], letter["event_id"], letter["event_type"]) == (fussy.name, bad, events[1].type)
        # the error text may quote the event's values: regional IT gets its kind only
        assert letter["error_kind"] == "ValueError" and "error" not in letter
        with side.client("dr.petrov") as doctor:
            assert doctor.get("/api/monitoring/dead-letters").status_code == 403


# -- the Faust path ------------------------------------------------------------------------------
_FAUST_WORKER = """
import sys
from pathlib import Path
from projections.sinks import WarehouseSink
from projections.warehouse import open_warehouse
from streams.faust_app import create_app, run_worker
from tests.support.events import FussyCatalogue

bootstrap, warehouse_url, bad, name, app_id, datadir = sys.argv[1:7]
processor = FussyCatalogue({bad})
processor.name = name
warehouse = open_warehouse(warehouse_url)
binding = (processor, WarehouseSink(warehouse, processor.ddl))
app = create_app(bootstrap, [binding], app_id=app_id, datadir=Path(datadir))
run_worker(app)
"""


@pytest.mark.kafka
@pytest.mark.clickhouse_http
def test_the_faust_worker_dead_letters_an_unprocessable_event_and_commits_past_it(
    kafka_server: Any, warehouse_server: ChdbHttpServer, tmp_path: Path
) -> None:
    app_id = f"cami-test-{uuid.uuid4().hex[:8]}"
    name = f"fussy-{uuid.uuid4().hex[:8]}"
    events = synthetic_events(12)
    bad = str(events[6].envelope.event_id)
    mine = {str(e.envelope.event_id) for e in events}
    with open_event_log(f"kafka://{kafka_server.bootstrap}") as event_log:
        event_log.ensure_topics(archive_topics(3))
        publish_many(event_log, events)
        ends = {t: event_log.end_offsets(t) for t in EventCatalogue.topics}
        warehouse = open_warehouse(warehouse_server.url)
        worker = subprocess.Popen(
            [sys.executable, "-c", _FAUST_WORKER, kafka_server.bootstrap, warehouse_server.url, bad, name, app_id,
             str(tmp_path / "faust")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )  # fmt: skip
        try:

            def settled() -> bool:
                if worker.poll() is not None:
                    raise AssertionError(f"faust worker exited: {worker.stdout.read() if worker.stdout else ''}")
                return _caught_up(event_log, app_id, EventCatalogue.topics, ends) and bool(
                    dead_letters.open_letters(warehouse, name)
                )

            wait_for(settled, "the Faust group committed past the bad event, which is a dead letter", timeout=240)
            catalogued = {r[0] for r in warehouse.query("SELECT toString(event_id) FROM event_catalogue FINAL").rows}
            assert catalogued & mine == mine - {bad}
            [letter] = dead_letters.open_letters(warehouse, name)
            assert letter["event_id"] == bad and "cannot apply" in letter["error"]
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            warehouse.close()
