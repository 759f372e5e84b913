"""A rebuild from offset 0 equals what the live processors built, row by row (also after redelivery).

Every projection registered in ``projections.registry`` takes part: a synthetic but varied event
sequence (instances in several studies and series, rejections, reports drafted/signed/amended,
transfers, patient updates and merges, accesses, orders) is projected live by the embedded
runner into ClickHouse (the query model into its SQLite store), every table is snapshotted
(``SELECT * FROM t FINAL ORDER BY ALL``), the tables are dropped and rebuilt by ``cami replay``'s
:func:`rebuild`, and the snapshots compared. On chdb in this process and through clickhouse-connect
(the test-only chdb HTTP endpoint).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from projections.query_model.fold import QueryModel
from projections.query_model.store import TABLES as QUERY_TABLES
from projections.query_model.store import QueryModelSink, QueryStore, SqliteQueryStore
from projections.rebuild_online import SHADOW, Progress, rebuild_online, shadow_statement
from projections.registry import PROJECTIONS, build
from projections.replay import OwnStoreSink, rebuild
from projections.replay_lanes import Lanes
from projections.sinks import WarehouseSink
from projections.status import FAUST_GROUP, projection_lag
from projections.warehouse import Warehouse, open_warehouse
from streams import open_event_log
from streams.embedded import EmbeddedEventLog
from streams.faust_app import DEFAULT_APP_ID
from streams.processing import EmbeddedRunner, Processor, Sink, group_id
from streams.publisher import publish_many
from streams.topics import DICOM, archive_topics
from tests.support.chdb_http import ChdbHttpServer
from tests.support.events import order_sequence, synthetic_sequence
from tests.support.paths import ROOT


# -- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(params=["chdb", pytest.param("clickhouse-http", marks=pytest.mark.clickhouse_http)])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "chdb":
        yield f"chdb://{tmp_path / 'clickhouse'}"
        return
    server = ChdbHttpServer(tmp_path / "clickhouse-http").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def warehouse(warehouse_url: str) -> Iterator[Warehouse]:
    wh = open_warehouse(warehouse_url)
    try:
        yield wh
    finally:
        wh.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueryStore]:
    query_store = SqliteQueryStore(tmp_path / "query.db")
    yield query_store
    query_store.close()


@pytest.fixture
def event_log(tmp_path: Path) -> Iterator[EmbeddedEventLog]:
    log = open_event_log(f"sqlite://{tmp_path}/events.db")
    assert isinstance(log, EmbeddedEventLog)
    log.ensure_topics(archive_topics(3))
    yield log
    log.close()


def own(store: QueryStore, warehouse: Warehouse) -> dict[str, OwnStoreSink]:
    """The query model's sink, for the live runner and the rebuild alike."""
    return {QueryModel.name: QueryModelSink(store, warehouse)}


def live_bindings(warehouse: Warehouse, store: QueryStore) -> tuple[list[Processor], list[tuple[Processor, Sink]]]:
    processors = build()
    sinks = own(store, warehouse)
    return processors, [(p, sinks.get(p.name) or WarehouseSink(warehouse, getattr(p, "ddl", ()))) for p in processors]


def snapshot(
    warehouse: Warehouse, store: QueryStore, processors: Sequence[Processor]
) -> dict[str, list[tuple[Any, ...]]]:
    tables = [t for p in processors if not isinstance(p, QueryModel) for t in p.tables]  # type: ignore[attr-defined]
    found = {t: warehouse.query(f"SELECT * FROM {t} FINAL ORDER BY ALL").rows for t in tables}
    for table in QUERY_TABLES:  # the query store's rows, in a stable order
        found[table] = sorted((tuple(r.values()) for r in store.select(f"SELECT * FROM {table}")), key=repr)
    return found


def reset_groups(event_log: EmbeddedEventLog, processors: Sequence[Processor]) -> None:
    """Redelivery: every group goes back to offset 0 (as after losing all commits)."""
    for p in processors:
        event_log.commit_offsets(group_id(p), {(t, part): 0 for t in p.topics for part in event_log.partitions(t)})


# -- tests -------------------------------------------------------------------------------------
def test_every_registered_projection_declares_what_a_rebuild_needs() -> None:
    for processor in build():
        assert processor.name in PROJECTIONS
        if isinstance(processor, QueryModel):  # its tables live in the query store, reset by its sink
            continue
        assert getattr(processor, "tables", ()), f"{processor.name} declares no tables"
        assert getattr(processor, "ddl", ()), f"{processor.name} declares no ddl"
    assert FAUST_GROUP == DEFAULT_APP_ID  # the lag of `cami workers` is read from the group it uses


def test_rebuild_equals_live_and_redelivery(
    warehouse: Warehouse, store: QueryStore, event_log: EmbeddedEventLog
) -> None:
    processors, bindings = live_bindings(warehouse, store)
    first, second = synthetic_sequence(1), synthetic_sequence(2)
    publish_many(event_log, first)
    event_log.append(DICOM, b"broken", b"\xc3\x01not-an-event")  # skipped the same way on both paths
    runner = EmbeddedRunner(event_log, bindings, batch_size=17)  # many small batches
    runner.catch_up()
    publish_many(event_log, second)
    runner.catch_up()
    live = snapshot(warehouse, store, processors)
    assert live["event_catalogue"], "the live processors wrote nothing"
    assert len(live["event_catalogue"]) == len(first) + len(second)

    # redelivery: everything again through the live path; the tables must not change
    reset_groups(event_log, processors)
    EmbeddedRunner(event_log, bindings, batch_size=50).catch_up()
    assert snapshot(warehouse, store, processors) == live

    # rebuild from offset 0 with fresh processors: row for row the same
    result = rebuild(event_log, warehouse, build(), batch_size=40, own_sinks=own(store, warehouse))
    assert result.events == len(first) + len(second) + 1
    assert result.undecodable == 1
    rebuilt = snapshot(warehouse, store, processors)
    assert rebuilt.keys() == live.keys()
    for table, rows in live.items():
        assert rebuilt[table] == rows, f"{table} differs after the rebuild"
    assert result.table_rows == {t: len(rows) for t, rows in live.items()}

    # and a rebuild applied twice (redelivery of the rebuild itself) changes nothing
    rebuild(event_log, warehouse, build(), batch_size=1000, own_sinks=own(store, warehouse))
    assert snapshot(warehouse, store, processors) == live


def test_rebuild_in_lanes_equals_live(
    warehouse: Warehouse, warehouse_url: str, store: QueryStore, event_log: EmbeddedEventLog, tmp_path: Path
) -> None:
    """The parallel path: partitions shared among worker processes (three partitions per topic,
    two warehouse lanes and the query model's), which read the log, decode and fold by
    themselves; on chdb they ship encoded inserts to this process, on the server they write. The
    tables come out row for row as the live processors built them."""
    processors, bindings = live_bindings(warehouse, store)
    events = synthetic_sequence(3) + synthetic_sequence(4)
    publish_many(event_log, events)
    event_log.append(DICOM, b"broken", b"\xc3\x01not-an-event")
    EmbeddedRunner(event_log, bindings, batch_size=23).catch_up()
    live = snapshot(warehouse, store, processors)
    assert len(live["event_catalogue"]) == len(events)
    assert len({(row[0], row[1]) for row in live["event_catalogue"]}) > 2  # slots for both lanes

    lanes = Lanes(
        event_log_url=f"sqlite://{tmp_path}/events.db",
        warehouse_url=warehouse_url,
        lanes=2,
        query_store_url=f"sqlite://{tmp_path}/query.db",
    )
    seen: list[int] = []
    result = rebuild(
        event_log,
        warehouse,
        build(),
        batch_size=30,
        own_sinks=own(store, warehouse),
        lanes=lanes,
        on_progress=seen.append,
    )
    assert result.events == len(events) + 1 == sum(seen)
    assert result.undecodable == 1
    rebuilt = snapshot(warehouse, store, processors)
    for table, rows in live.items():
        assert rebuilt[table] == rows, f"{table} differs after the rebuild in lanes"
    assert result.table_rows == {t: len(rows) for t, rows in live.items()}


def test_rebuild_aligns_the_live_groups_and_loses_nothing_after(
    warehouse: Warehouse, store: QueryStore, event_log: EmbeddedEventLog
) -> None:
    processors, bindings = live_bindings(warehouse, store)
    publish_many(event_log, synthetic_sequence(3) + order_sequence(3))
    EmbeddedRunner(event_log, bindings).catch_up()
    behind = synthetic_sequence(4, studies=3) + order_sequence(4)
    publish_many(event_log, behind)  # the live processors have not seen these yet
    assert all(sum(lags.values()) > 0 for lags in projection_lag(event_log, processors).values())

    result = rebuild(event_log, warehouse, processors, own_sinks=own(store, warehouse))
    # the live groups were moved to the rebuild's end, so nothing is applied twice ...
    assert set(result.aligned_groups) == {group_id(p) for p in processors}
    assert all(sum(lags.values()) == 0 for lags in projection_lag(event_log, processors).values())
    runner = EmbeddedRunner(event_log, bindings)
    assert sum(runner.catch_up().values()) == 0

    # ... and what arrives after the rebuild is the live processors' to apply
    later = synthetic_sequence(5, studies=2)
    publish_many(event_log, later)
    done = runner.catch_up()
    assert done["catalogue"] == len(later)
    live = snapshot(warehouse, store, processors)
    rebuild(event_log, warehouse, build(), own_sinks=own(store, warehouse))
    assert snapshot(warehouse, store, processors) == live


def test_rebuild_while_the_live_runner_keeps_running(
    tmp_path: Path, store: QueryStore, event_log: EmbeddedEventLog
) -> None:
    """A live runner writing during the rebuild loses nothing (target taken after the drop)."""
    warehouse = open_warehouse(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        processors, bindings = live_bindings(warehouse, store)
        publish_many(event_log, synthetic_sequence(6))
        runner = EmbeddedRunner(event_log, bindings, linger=0.05)
        runner.start()
        try:
            for seed in range(7, 10):
                publish_many(event_log, synthetic_sequence(seed, studies=2))
                rebuild(event_log, warehouse, build(), batch_size=25, align=False, own_sinks=own(store, warehouse))
        finally:
            runner.stop()
        EmbeddedRunner(event_log, bindings).catch_up()
        during = snapshot(warehouse, store, processors)
        total = sum(sum(event_log.end_offsets(t).values()) for t in processors[0].topics)
        assert len(during["event_catalogue"]) == total
        rebuild(event_log, warehouse, build(), own_sinks=own(store, warehouse))
        assert snapshot(warehouse, store, processors) == during
    finally:
        warehouse.close()


def test_cami_replay_command(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAMI_HOME": str(home),
        "CAMI_EVENT_LOG": f"sqlite://{home}/events.db",
        "CAMI_CLICKHOUSE": f"chdb://{home}/clickhouse",
        "CAMI_BLOBS": f"file://{home}/blobs",
    }
    home.mkdir()
    with open_event_log(env["CAMI_EVENT_LOG"]) as log:
        log.ensure_topics(archive_topics(6))
        events = synthetic_sequence(11, studies=4)
        publish_many(log, events)

    def cami(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    before = json.loads(cami("status", "--json").stdout)
    assert before["projection_lag"]["catalogue"]
    assert sum(before["projection_lag"]["catalogue"].values()) == len(events)

    done = cami("replay", "--projection", "catalogue", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["projections"] == ["catalogue"]
    assert result["events"] == len(events)
    assert result["table_rows"] == {"event_catalogue": len(events)}

    after = json.loads(cami("status", "--json").stdout)
    assert sum(after["projection_lag"]["catalogue"].values()) == 0
    assert sum(after["clickhouse"]["catalogue_rows"].values()) == len(events)

    human = cami("replay", "--projection", "all")
    assert human.returncode == 0, human.stderr
    assert f"{len(events)} events" in human.stdout

    # in worker processes: the same tables, the same counts
    laned = cami("replay", "--lanes", "2", "--json")
    assert laned.returncode == 0, laned.stderr
    in_lanes = json.loads(laned.stdout)
    assert in_lanes["events"] == len(events)
    assert in_lanes["table_rows"]["event_catalogue"] == len(events)
    assert in_lanes["table_rows"]["qm_studies"] == 4

    wrong = cami("replay", "--projection", "no-such-thing")
    assert wrong.returncode == 2
    assert "unknown projection" in wrong.stderr


# -- rebuilding while serving ------------------------------------------------------------------
class Watcher:
    """Reads what viewers read, over and over, while a rebuild runs: the instances of the archive
    index (warehouse) and the studies of the query model (query store)."""

    def __init__(self, warehouse: Warehouse, store: QueryStore) -> None:
        self.warehouse, self.store = warehouse, store
        self.lowest: dict[str, int] = {}
        self.errors: list[str] = []
        self.looks = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def counts(self) -> dict[str, int]:
        return {
            "archive_instances": int(self.warehouse.query("SELECT uniqExact(sop_uid) FROM archive_instances").scalar()),
            "qm_studies": int(self.store.select("SELECT count(*) AS n FROM qm_studies")[0]["n"]),
        }

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                for name, n in self.counts().items():
                    self.lowest[name] = min(self.lowest.get(name, n), n)
                self.looks += 1
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.002)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def shadows_left(warehouse: Warehouse) -> list[str]:
    found = warehouse.query(
        f"SELECT name FROM system.tables WHERE database = currentDatabase() AND endsWith(name, '{SHADOW}')"
    )
    return [str(r[0]) for r in found.rows]


def test_online_rebuild_keeps_answering_and_equals_live(
    warehouse: Warehouse, store: QueryStore, event_log: EmbeddedEventLog, tmp_path: Path
) -> None:
    """Rebuild while serving: the live runner keeps applying new events, more arrive while the
    shadows wait for the swap, readers never see fewer rows than before; afterwards the tables are
    row for row what a rebuild from nothing gives, and no shadow is left."""
    processors, bindings = live_bindings(warehouse, store)
    publish_many(event_log, synthetic_sequence(21, studies=12))
    EmbeddedRunner(event_log, bindings).catch_up()
    watcher = Watcher(warehouse, store)
    before = watcher.counts()
    assert before["archive_instances"] > 0 and before["qm_studies"] == 12

    runner = EmbeddedRunner(event_log, bindings, linger=0.02)
    runner.start()
    late = synthetic_sequence(23, studies=3)

    def arrive_late() -> None:  # after the shadows' last catch-up: only the final pass brings them
        publish_many(event_log, late)

    progress = Progress([p.name for p in processors])
    try:
        with watcher:
            publish_many(event_log, synthetic_sequence(22, studies=4))  # the live runner applies these
            result = rebuild_online(
                event_log,
                warehouse,
                build(),
                own_sinks=own(store, warehouse),
                batch_size=20,  # many steps: the readers look in between
                progress=progress,
                before_swap=arrive_late,
            )
    finally:
        runner.stop()
    EmbeddedRunner(event_log, bindings).catch_up()

    assert watcher.errors == []
    assert watcher.looks > 10
    assert watcher.lowest["archive_instances"] >= before["archive_instances"]
    assert watcher.lowest["qm_studies"] >= before["qm_studies"]
    assert shadows_left(warehouse) == []
    assert not (tmp_path / "query.rebuild.db").exists()
    state = progress.to_dict()
    assert state["phase"] == "done" and state["events_done"] == result.events > 0
    total = sum(sum(event_log.end_offsets(t).values()) for t in processors[0].topics)
    online = snapshot(warehouse, store, processors)
    assert len(online["event_catalogue"]) == total
    assert len(store.select("SELECT study_uid FROM qm_studies")) == 12 + 4 + 3

    rebuild(event_log, warehouse, build(), own_sinks=own(store, warehouse))  # from nothing, offline
    offline = snapshot(warehouse, store, processors)
    for table, rows in offline.items():
        assert online[table] == rows, f"{table} differs between the online and the offline rebuild"


def test_online_rebuild_that_fails_leaves_the_live_tables(
    warehouse: Warehouse, store: QueryStore, event_log: EmbeddedEventLog, tmp_path: Path
) -> None:
    processors, bindings = live_bindings(warehouse, store)
    publish_many(event_log, synthetic_sequence(24, studies=5))
    EmbeddedRunner(event_log, bindings).catch_up()
    live = snapshot(warehouse, store, processors)

    def fail() -> None:
        raise RuntimeError("stopped before the swap")

    with pytest.raises(RuntimeError, match="before the swap"):
        rebuild_online(event_log, warehouse, build(), own_sinks=own(store, warehouse), before_swap=fail)
    assert snapshot(warehouse, store, processors) == live
    assert shadows_left(warehouse) == []
    assert not (tmp_path / "query.rebuild.db").exists()


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        (
            "CREATE TABLE IF NOT EXISTS t (x UInt8) ENGINE = Log",
            "CREATE TABLE IF NOT EXISTS t__rebuild (x UInt8) ENGINE = Log",
        ),
        ("ALTER TABLE t ADD COLUMN IF NOT EXISTS t UInt8", "ALTER TABLE t__rebuild ADD COLUMN IF NOT EXISTS t UInt8"),
        ("create table other (t String)", "create table other (t String)"),
    ],
)
def test_shadow_statement_renames_only_the_tables_named(statement: str, expected: str) -> None:
    assert shadow_statement(statement, ["t"]) == expected
