"""The rebuild engine of ``cami replay`` (and of the benchmarks): drop a projection's tables and
rebuild them from offset 0 of the log.

Read models are disposable: the log is the source of truth, and a projection is a pure function
of it. A rebuild therefore

1. drops the projection's tables (each projection class declares ``tables``) and recreates them
   from its ``ddl``;
2. *then* takes the end offsets of its topics (the rebuild's target ``E``);
3. reads every partition from offset 0 up to ``E`` with :meth:`EventLog.scan` (no consumer group:
   the live processors' committed offsets are not touched while it runs), decodes each event
   once and applies every projection being rebuilt to it, writing the rows through the same
   :class:`projections.sinks.WarehouseSink` the live processors use. The ``query-model``
   projection's tables live in the query store, not the warehouse: it is given its live sink
   (``sinks``), which empties the store (``reset``) instead of the DROP/CREATE.

Dead letters. The projection's open dead letters (:mod:`projections.dead_letters`) are marked
resolved when its tables are recreated, since every event is applied again; an event that still
cannot be applied is recorded again as a dead letter (the same rule as the live runners), so the
rebuild completes and the letter stays visible.

Offsets and a live processor. Rows are keyed by the event's log position and the tables
deduplicate (ReplacingMergeTree), so applying an event twice leaves the same table. Taking ``E``
*after* the tables were recreated makes a live processor that keeps running harmless: whatever it
wrote before the drop has a position below ``E`` and is rebuilt; whatever it writes afterwards
lands in the new tables (a batch that hit the table while it was missing fails, is not committed,
and is redelivered). After the rebuild the live group is *aligned*:

* embedded log: each projection has its own group (``cami.<name>``); where its committed offset
  is below ``E`` it is moved forward to ``E``, so the live runner does not apply ``[C, E)`` a
  second time. An offset already beyond ``E`` is left alone (those events came after the
  rebuild's snapshot and are the live runner's to apply).
* Kafka: the Faust workers share one group (the app id) across *all* projections, so it cannot be
  moved for one projection without making the others skip events. It is left as it is; the
  workers re-apply ``[C, E)`` after the rebuild, which the tables absorb (same keys). Stopping the
  workers during a rebuild is not required, only cheaper.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from projections import dead_letters
from projections.replay_lanes import (
    QUERY_MODEL_LANE,
    LaneReport,
    Lanes,
    apply_with_retries,
    collected_per_batch,
    run_lanes,
)
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse, WarehouseError
from streams.log import EventLog, Record
from streams.processing import (
    DeadLetter,
    Processor,
    Row,
    Sink,
    Source,
    decode_records,
    group_id,
)

#: events read, decoded and written per step (one insert per table per step)
DEFAULT_BATCH = 5_000


@dataclass
class RebuildResult:
    projections: list[str]
    #: events read from the log (up to the end offsets taken after the tables were recreated)
    events: int = 0
    #: rows written, per table (before deduplication)
    rows_written: dict[str, int] = field(default_factory=dict)
    #: rows in each table after the rebuild (deduplicated: ``count() ... FINAL``)
    table_rows: dict[str, int] = field(default_factory=dict)
    undecodable: int = 0
    #: per projection, events that still cannot be applied (recorded again as dead letters)
    dead_letters: dict[str, int] = field(default_factory=dict)
    #: per projection, dead letters open before the rebuild (all retried by it)
    retried_dead_letters: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    #: the rebuild's target: per topic, per partition, the end offset read up to
    ends: dict[str, dict[int, int]] = field(default_factory=dict)
    #: consumer groups whose committed offsets were moved forward to the target
    aligned_groups: dict[str, dict[str, dict[int, int]]] = field(default_factory=dict)

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "projections": self.projections,
            "events": self.events,
            "rows_written": self.rows_written,
            "table_rows": self.table_rows,
            "undecodable": self.undecodable,
            "dead_letters": self.dead_letters,
            "retried_dead_letters": self.retried_dead_letters,
            "seconds": round(self.seconds, 3),
            "events_per_second": round(self.events_per_second, 1),
            "ends": {t: {str(p): o for p, o in e.items()} for t, e in self.ends.items()},
            "aligned_groups": {
                g: {t: {str(p): o for p, o in e.items()} for t, e in topics.items()}
                for g, topics in self.aligned_groups.items()
            },
        }


class OwnStoreSink(Protocol):
    """The sink of a projection whose tables live outside the warehouse (the query model)."""

    def write(self, rows: Sequence[Row]) -> None: ...

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...

    def reset(self) -> None:
        """Drop the projection's tables and create them empty."""

    def counts(self) -> dict[str, int]:
        """Rows per table."""

    def shadow(self) -> OwnStoreSink:
        """A sink into a new, empty store beside this one (a rebuild while serving)."""

    def swap_in(self, rebuilt: Any) -> None:  # Any: each store swaps in only its own kind of shadow
        """Make this sink's store hold what ``rebuilt`` (its :meth:`shadow`) holds, then discard it."""

    def discard(self) -> None:
        """Close the store and delete what it holds (an abandoned shadow)."""


def declared(processor: Processor, attribute: str) -> tuple[str, ...]:
    value = getattr(processor, attribute, None)
    if not value:
        raise ValueError(f"projection {processor.name!r} declares no {attribute}; it cannot be rebuilt")
    return tuple(value)


def rebuild(
    event_log: EventLog,
    warehouse: Warehouse,
    processors: Sequence[Processor],
    *,
    batch_size: int = DEFAULT_BATCH,
    align: bool = True,
    on_start: Callable[[int], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    own_sinks: Mapping[str, OwnStoreSink] | None = None,
    lanes: Lanes | None = None,
) -> RebuildResult:
    """Drop, recreate and refill the tables of ``processors`` from offset 0 (see module doc).

    ``on_start(total_events)`` is called once the target is known, ``on_progress(n)`` after each
    batch of ``n`` events is written. ``own_sinks`` (projection name -> sink) are the sinks of the
    projections whose tables live outside the warehouse: they are reset instead of dropped.
    ``lanes``: read, decode and fold in worker processes (:mod:`projections.replay_lanes`)."""
    started = time.perf_counter()
    result = RebuildResult([p.name for p in processors])
    own = {p.name: own_sinks[p.name] for p in processors if own_sinks and p.name in own_sinks}
    tables = {p.name: declared(p, "tables") for p in processors if p.name not in own}
    ddl = {p.name: declared(p, "ddl") for p in processors if p.name not in own}
    sinks: dict[str, Sink] = {}
    for processor in processors:
        if processor.name in own:
            own[processor.name].reset()
            sinks[processor.name] = own[processor.name]
        else:
            for table in tables[processor.name]:
                warehouse.command(f"DROP TABLE IF EXISTS {table}")
            sinks[processor.name] = WarehouseSink(warehouse, ddl[processor.name])  # recreates them
        # every event is applied again from offset 0: the old dead letters are retried with them
        # (resolved now; those that still fail are recorded again, newer than this resolution)
        retried = dead_letters.resolve(warehouse, processor.name)
        if retried:
            result.retried_dead_letters[processor.name] = retried

    topics = list(dict.fromkeys(t for p in processors for t in p.topics))
    result.ends = {t: event_log.end_offsets(t) for t in topics}
    if on_start is not None:
        on_start(sum(sum(e.values()) for e in result.ends.values()))
    if lanes is not None:
        _rebuild_in_lanes(warehouse, processors, own, lanes, batch_size, on_progress, result)
    else:
        apply_scan(event_log, {}, result.ends, processors, sinks, result, batch_size, on_progress)

    result.table_rows.update(table_rows(warehouse, processors, own, tables))
    if align:
        result.aligned_groups = align_embedded_groups(event_log, processors, result.ends)
    result.seconds = time.perf_counter() - started
    return result


def _rebuild_in_lanes(
    warehouse: Warehouse,
    processors: Sequence[Processor],
    own: Mapping[str, OwnStoreSink],
    lanes: Lanes,
    batch_size: int,
    on_progress: Callable[[int], None] | None,
    result: RebuildResult,
) -> None:
    """The scan-and-apply step in worker processes; their reports are added up into ``result``.
    Events are counted once: the warehouse lanes read every topic of the projections they
    rebuild, the query-model lane the same events again (it counts only when rebuilt alone)."""
    alone = all(p.name in own for p in processors)

    def counted(report: LaneReport) -> None:
        result.undecodable += report.undecodable if report.lane != QUERY_MODEL_LANE or alone else 0
        for table, n in report.rows.items():
            result.rows_written[table] = result.rows_written.get(table, 0) + n
        for name, n in report.dead_letters.items():
            result.dead_letters[name] = result.dead_letters.get(name, 0) + n
        if report.lane != QUERY_MODEL_LANE or alone:
            result.events += report.events
            if on_progress is not None:
                on_progress(report.events)

    run_lanes(warehouse, processors, own, result.ends, lanes, batch_size, counted)


def apply_scan(
    event_log: EventLog,
    starts: Mapping[str, Mapping[int, int]],
    ends: Mapping[str, Mapping[int, int]],
    processors: Sequence[Processor],
    sinks: Mapping[str, Sink],
    result: RebuildResult,
    batch_size: int,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Apply every event from ``starts`` (default offset 0) to ``ends`` to the projections reading
    its topic, batch by batch, counting into ``result``; ``on_progress(n)`` after each batch."""
    readers: dict[str, list[Processor]] = {}
    with collected_per_batch() as collect:
        for records in event_log.scan(ends, batch_size, starts=starts):
            by_topic: dict[str, list[Record]] = {}
            for record in records:
                by_topic.setdefault(record.topic, []).append(record)
            for topic, topic_records in by_topic.items():
                if topic not in readers:
                    readers[topic] = [p for p in processors if topic in p.topics]
                apply_records(topic_records, readers[topic], sinks, result)
            result.events += len(records)
            collect()
            if on_progress is not None:
                on_progress(len(records))


def apply_records(
    records: Sequence[Record],
    processors: Sequence[Processor],
    sinks: Mapping[str, Sink],
    result: RebuildResult,
) -> None:
    """Decode each record once and give it to every projection reading its topic, through the
    same :func:`streams.processing.deliver_decoded` the live runners use: an event a projection
    cannot apply becomes a dead letter again, a warehouse outage is retried a few times with
    backoff and then fails the rebuild (nothing is skipped)."""
    decoded, undecodable = decode_records([(Source(r.topic, r.partition, r.offset, r.value), r.value) for r in records])
    result.undecodable += len(undecodable)
    for processor in processors:
        done = apply_with_retries(processor, sinks[processor.name], decoded, undecodable)
        for row in done.rows:
            result.rows_written[row.table] = result.rows_written.get(row.table, 0) + 1
        if done.dead_letters:
            result.dead_letters[processor.name] = result.dead_letters.get(processor.name, 0) + len(done.dead_letters)


def table_rows(
    warehouse: Warehouse,
    processors: Sequence[Processor],
    own: Mapping[str, OwnStoreSink],
    tables: Mapping[str, Sequence[str]],
) -> dict[str, int]:
    """Rows in each rebuilt table (own stores count their own)."""
    rows: dict[str, int] = {}
    for processor in processors:
        if processor.name in own:
            rows.update(own[processor.name].counts())
        else:
            rows.update({table: count_rows(warehouse, table) for table in tables[processor.name]})
    return rows


def count_rows(warehouse: Warehouse, table: str) -> int:
    try:
        return int(warehouse.query(f"SELECT count() FROM {table} FINAL").scalar())
    except WarehouseError:  # an engine without FINAL (plain MergeTree) has nothing to collapse
        return int(warehouse.query(f"SELECT count() FROM {table}").scalar())


def align_embedded_groups(
    event_log: EventLog, processors: Sequence[Processor], ends: dict[str, dict[int, int]]
) -> dict[str, dict[str, dict[int, int]]]:
    """Move each projection's own group (``cami.<name>``) forward to the rebuild's target where it
    is behind, so the live runner does not apply again what the rebuild already wrote.

    Only on the embedded log, where the group belongs to this one projection; the Faust group on
    Kafka is shared by every projection and is left alone (see the module doc)."""
    if event_log.backend != "embedded":
        return {}
    aligned: dict[str, dict[str, dict[int, int]]] = {}
    for processor in processors:
        group = group_id(processor)
        marks: list[Record] = []
        for topic in processor.topics:
            committed = event_log.committed(group, topic)
            for partition, end in ends.get(topic, {}).items():
                if end > 0 and committed.get(partition, 0) < end:
                    marks.append(Record(topic, partition, end - 1, b"", b"", 0))
                    aligned.setdefault(group, {}).setdefault(topic, {})[partition] = end
        if marks:
            with event_log.consumer(group, processor.topics) as consumer:
                consumer.commit(marks)  # commits the offset after each mark: the target itself
    return aligned
