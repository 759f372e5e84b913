"""Parallel rebuilds: the log's partitions read, decoded and folded in worker processes (lanes).

A rebuild spends its time in Python: decoding each event, each projection's fold, encoding the
rows for ClickHouse. One process uses one core however many the machine has, so
:func:`projections.replay.rebuild` can hand that part to *lanes*, one process each:

* **warehouse lanes** (``lanes`` of them): each takes a share of the (topic, partition) slots,
  reads them from offset 0 to the rebuild's target, decodes every event once and applies every
  projection whose tables live in ClickHouse, through the same
  :func:`streams.processing.deliver_decoded` as the sequential rebuild and the live runners (dead
  letters, one-by-one retry of a refused batch). With a ClickHouse server the lane writes itself.
  Embedded ClickHouse (chdb) belongs to one process, so there the lane *ships* its inserts: the
  rows are encoded in the lane, in ClickHouse's Native format, into a file, and the parent runs
  ``INSERT ... FROM INFILE`` (the engine's part, a small share of the cost).
* **the query-model lane**: the query model's own store (SQLite) is written by this one process,
  which reads every slot of its topics.

Order and state. A stateful fold keeps its state per (aggregate, topic) (the audit trail's hash
chains), and one aggregate's events of one topic live in one partition, so a slot is never split
between lanes and each lane's projections see their slots' events in offset order, as the
sequential rebuild does. Rows are keyed by the event's log position or its natural key, so the
tables come out the same whichever lane wrote which rows when (``tests/integration/test_replay.py``
compares them with the sequential rebuild, row for row).

Failure. A lane that raises, or dies, fails the rebuild (exit 1, "run it again", as before); the
parent stops the others. Nothing is committed to a consumer group by lanes.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import queue
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from projections import dead_letters
from projections.query_model.fold import QueryModel
from projections.query_model.store import QueryModelSink, QueryStore, open_query_store
from projections.registry import ProjectionConfig, build
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse, WarehouseError, open_warehouse
from schemas.events import Event
from streams import EventLog, open_event_log
from streams.processing import (
    SETTLE_AFTER,
    BatchResult,
    Processor,
    Sink,
    Source,
    backoff,
    decode_records,
    deliver_decoded,
)

if TYPE_CHECKING:
    from projections.warehouse.chdb_backend import ChdbWarehouse

log = logging.getLogger("cami.replay")

#: the name of the lane that writes the query store
QUERY_MODEL_LANE = "query-model"

#: messages a lane may have in flight before it waits for the parent (bounds memory and files)
IN_FLIGHT = 4


@dataclass(frozen=True)
class Lanes:
    """How to run a rebuild in lanes: what a worker process needs to open the same log, the same
    projections and the query store by itself (objects do not cross processes; URLs do)."""

    event_log_url: str
    warehouse_url: str
    #: warehouse lanes (the query model, when rebuilt, has one more of its own)
    lanes: int = 2
    config: ProjectionConfig = field(default_factory=ProjectionConfig)
    query_store_url: str = ""


@dataclass
class LaneReport:
    """What a lane did in one step, sent to the parent after the step's rows are written (or,
    for a shipping lane, with the files the parent must load)."""

    lane: str
    events: int = 0
    undecodable: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    #: shipped inserts: (table, column names, Native file) for the parent to load, in order
    inserts: list[tuple[str, list[str], str]] = field(default_factory=list)
    done: bool = False
    error: str = ""


def split_slots(ends: Mapping[str, Mapping[int, int]], lanes: int) -> list[dict[str, dict[int, int]]]:
    """The non-empty (topic, partition) slots shared among ``lanes`` by event count, biggest slot
    first to the lightest lane; each lane's share in the shape :meth:`EventLog.scan` takes."""
    slots = sorted(
        ((end, topic, partition) for topic, per in ends.items() for partition, end in per.items() if end > 0),
        reverse=True,
    )
    shares: list[dict[str, dict[int, int]]] = [{} for _ in range(max(lanes, 1))]
    load = [0] * len(shares)
    for end, topic, partition in slots:
        lightest = load.index(min(load))
        shares[lightest].setdefault(topic, {})[partition] = end
        load[lightest] += end
    return [share for share in shares if share]


class ShippingWarehouse(Warehouse):
    """A lane's stand-in for the parent's embedded ClickHouse: an insert is encoded here (the
    same Native codec as :class:`ChdbWarehouse`) into a file that the parent loads. Tables were
    created by the parent before the lanes started; statements other than those creations are
    refused, queries too (a fold is pure and reads nothing)."""

    backend = "chdb-lane"

    def __init__(self, types: Mapping[str, Mapping[str, str]], directory: str) -> None:
        from projections.warehouse.chdb_backend import NativeFileWriter  # chdb: only where it is used

        self._writer = NativeFileWriter(types)
        self._directory = directory
        self.shipped: list[tuple[str, list[str], str]] = []

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        if not sql.lstrip().upper().startswith("CREATE TABLE IF NOT EXISTS"):
            raise WarehouseError("a rebuild lane runs no statements; the parent does")

    def query(self, sql: str, parameters: Mapping[str, Any] | None = None) -> Any:
        raise WarehouseError("a rebuild lane reads nothing from the warehouse")

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        fd, path = tempfile.mkstemp(prefix="cami-lane-", suffix=".native", dir=self._directory)
        try:
            with os.fdopen(fd, "wb") as out:
                self._writer.write(table, columns, rows, out)
        except BaseException:
            os.unlink(path)
            raise
        self.shipped.append((table, list(columns), path))
        return len(rows)

    def take(self) -> list[tuple[str, list[str], str]]:
        shipped, self.shipped = self.shipped, []
        return shipped


@dataclass(frozen=True)
class LaneTask:
    """One lane's work, handed to its process."""

    name: str
    lanes: Lanes
    #: the slots it reads, up to the rebuild's target (the shape :meth:`EventLog.scan` takes)
    share: dict[str, dict[int, int]]
    projections: tuple[str, ...]
    #: column types of the warehouse tables, for a lane that ships its inserts
    types: dict[str, dict[str, str]]
    #: where a shipping lane leaves its Native files
    directory: str
    batch_size: int


@contextmanager
def collected_per_batch() -> Iterator[Callable[[], object]]:
    """Garbage collection for a rebuild: automatic collection off, the young generations collected
    after each batch (the caller calls what this yields), a full collection at the end.

    A rebuild keeps large long-lived state (the audit chains' heads and links, a benchmark's
    events) and allocates each batch's rows, which live just long enough to be promoted to the
    oldest generation: the automatic full collections over that heap took 35-55 % of a
    1,000,000-event rebuild. The rows hold no reference cycles, so the young collections free
    what little cyclic garbage a batch makes before it can pile up."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield lambda: gc.collect(1)
    finally:
        if enabled:
            gc.enable()
        gc.collect()


def run_lane(task: LaneTask, reports: Any) -> None:
    """A lane's process: scan its share, apply its projections, report each step (see module doc)."""
    try:
        for report in _lane_steps(task):
            reports.put(report)
        reports.put(LaneReport(task.name, done=True))
    except BaseException as exc:  # the parent fails the rebuild with it
        reports.put(LaneReport(task.name, done=True, error=f"{exc!r}\n{traceback.format_exc()}"))


def _lane_steps(task: LaneTask) -> Iterator[LaneReport]:
    lanes = task.lanes
    processors = build(task.projections, lanes.config)
    shipping = ShippingWarehouse(task.types, task.directory) if lanes.warehouse_url.startswith("chdb:") else None
    warehouse: Warehouse = shipping if shipping is not None else open_warehouse(lanes.warehouse_url)
    store: QueryStore | None = None
    sinks: dict[str, Sink] = {}
    for processor in processors:
        if isinstance(processor, QueryModel):
            store = open_query_store(lanes.query_store_url)
            sinks[processor.name] = QueryModelSink(store, warehouse)
        else:
            sinks[processor.name] = WarehouseSink(warehouse)  # the parent created the tables
    event_log = open_event_log(lanes.event_log_url)
    try:
        with collected_per_batch() as collect:
            yield from _lane_batches(task, event_log, processors, sinks, shipping, collect)
    finally:
        event_log.close()
        if store is not None:
            store.close()
        if shipping is None:
            warehouse.close()


def _lane_batches(
    task: LaneTask,
    event_log: EventLog,
    processors: Sequence[Processor],
    sinks: Mapping[str, Sink],
    shipping: ShippingWarehouse | None,
    collect: Callable[[], object],
) -> Iterator[LaneReport]:
    for records in event_log.scan(task.share, task.batch_size):
        report = LaneReport(task.name, events=len(records))
        decoded, undecodable = decode_records(
            [(Source(r.topic, r.partition, r.offset, r.value), r.value) for r in records]
        )
        report.undecodable = len(undecodable)
        for processor in processors:
            done = apply_with_retries(processor, sinks[processor.name], decoded, undecodable)
            for row in done.rows:
                report.rows[row.table] = report.rows.get(row.table, 0) + 1
            if done.dead_letters:
                report.dead_letters[processor.name] = len(done.dead_letters)
        if shipping is not None:
            report.inserts = shipping.take()
        collect()
        yield report


def apply_with_retries(
    processor: Processor,
    sink: Sink,
    decoded: Sequence[tuple[Event, Source]],
    undecodable: Sequence[tuple[Source, str]],
) -> BatchResult:
    """One projection over one step of a rebuild (in a lane or in the rebuilding process): an
    outage is retried with backoff a few times, then fails the rebuild; a bad event becomes a
    dead letter (:func:`streams.processing.deliver_decoded`)."""
    failures = 0
    while True:
        try:
            # no prepare: the rebuilt tables start empty, the processor's state with them
            return deliver_decoded(
                processor, sink, decoded, undecodable, settle=failures >= SETTLE_AFTER, prepare=False
            )
        except Exception as exc:
            failures += 1
            if failures > SETTLE_AFTER:
                raise
            log.warning("replay %s: batch not applied (%s); retrying", processor.name, exc)
            time.sleep(backoff(failures))


def run_lanes(
    warehouse: Warehouse,
    processors: Sequence[Processor],
    own: Mapping[str, Any],
    ends: Mapping[str, Mapping[int, int]],
    lanes: Lanes,
    batch_size: int,
    on_report: Callable[[LaneReport], None],
) -> None:
    """Start the lanes for ``processors`` over ``ends``, load what they ship (embedded ClickHouse),
    hand every report to ``on_report``; returns when every lane is done, raises when one failed."""
    in_store = tuple(p.name for p in processors if p.name in own)
    in_warehouse = tuple(p.name for p in processors if p.name not in own)
    tables = [t for p in processors if p.name not in own for t in getattr(p, "tables", ())]
    types: dict[str, dict[str, str]] = {}
    embedded = _embedded(warehouse)
    if embedded is not None:  # the lanes encode what the parent loads
        types = {t: embedded.column_types(t) for t in (*tables, dead_letters.TABLE)}
    context = multiprocessing.get_context("spawn")  # no fork: the parent runs chdb's threads
    reports: Any = context.Queue(maxsize=IN_FLIGHT * (lanes.lanes + 1))
    plans: list[tuple[str, dict[str, dict[int, int]], tuple[str, ...]]] = []
    if in_warehouse:
        topics = {t for p in processors if p.name in in_warehouse for t in p.topics}
        shares = split_slots({t: e for t, e in ends.items() if t in topics}, lanes.lanes)
        plans += [(f"warehouse-{i + 1}", share, in_warehouse) for i, share in enumerate(shares)]
    if in_store:
        topics = {t for p in processors if p.name in in_store for t in p.topics}
        plans.append((QUERY_MODEL_LANE, {t: dict(e) for t, e in ends.items() if t in topics}, in_store))
    with tempfile.TemporaryDirectory(prefix="cami-replay-lanes-") as directory:
        workers = [
            context.Process(
                target=run_lane,
                args=(LaneTask(name, lanes, share, names, types, directory, batch_size), reports),
                name=f"cami-replay-{name}",
                daemon=True,
            )
            for name, share, names in plans
        ]
        for worker in workers:
            worker.start()
        running = {name for name, _, _ in plans}
        try:
            while running:
                try:
                    report: LaneReport = reports.get(timeout=1.0)
                except queue.Empty:
                    dead = [w.name for w in workers if w.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(f"rebuild lane(s) died: {', '.join(dead)}") from None
                    continue
                if report.error:
                    raise RuntimeError(f"rebuild lane {report.lane} failed: {report.error}")
                if report.done:
                    running.discard(report.lane)
                    continue
                _load(warehouse, report.inserts)
                on_report(report)
        finally:
            for worker in workers:
                if worker.is_alive():
                    worker.terminate()
                worker.join(timeout=10)
            # its pipe now, not whenever the collector gets to it: a descriptor freed later, in
            # the middle of other work, is a surprise (and the lowest number, reused next)
            reports.close()
            reports.join_thread()


def _load(warehouse: Warehouse, inserts: Sequence[tuple[str, list[str], str]]) -> None:
    """Load a lane's shipped inserts into the embedded warehouse, in the order they were made."""
    if not inserts:
        return
    embedded = _embedded(warehouse)
    if embedded is None:
        raise WarehouseError(f"a lane shipped inserts but the warehouse is {warehouse.backend}")
    for table, columns, path in inserts:
        failures = 0
        while True:
            try:
                embedded.insert_native_file(table, columns, path)
                break
            except WarehouseError as exc:
                failures += 1
                if failures > SETTLE_AFTER:
                    raise
                log.warning("replay: loading %s failed (%s); retrying", table, exc)
                time.sleep(backoff(failures))
        os.unlink(path)


def _embedded(warehouse: Warehouse) -> ChdbWarehouse | None:
    """The warehouse as embedded ClickHouse, or None. chdb is imported only when the warehouse is
    one (every ``cami`` command imports this module; loading chdb costs ~240 MB of memory)."""
    if warehouse.backend != "chdb":
        return None
    from projections.warehouse.chdb_backend import ChdbWarehouse

    return warehouse if isinstance(warehouse, ChdbWarehouse) else None
