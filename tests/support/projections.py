"""A projection fed from a real event log into a warehouse, and the check that redelivery and a
rebuild from offset 0 leave the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Event
from streams import open_event_log
from streams.log import EventLog
from streams.processing import EmbeddedRunner, Processor, Row, Source
from streams.publisher import publish_many
from streams.topics import archive_topics


class Redelivery:
    """The same pure function under another consumer group: every event is delivered again."""

    def __init__(self, inner: Processor, name: str) -> None:
        self.inner = inner
        self.name = name
        self.topics = inner.topics

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        return self.inner.apply(event, source)


def open_log(tmp_path: Path, events: Sequence[Event]) -> EventLog:
    log = open_event_log(f"sqlite://{tmp_path}/events.db")
    log.ensure_topics(archive_topics(3))
    publish_many(log, events)
    return log


def snapshot(warehouse: Warehouse, relations: Sequence[str]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every relation in a total order: a table deduplicated with FINAL and ordered by
    the log position (its unique key), a view by its first column (its grouping key)."""
    out = {}
    for name in relations:
        engine = warehouse.query(
            "SELECT engine FROM system.tables WHERE database = currentDatabase() AND name = {t:String}", {"t": name}
        ).scalar()
        if engine == "View":
            first_column = warehouse.query(f"SELECT * FROM {name} LIMIT 0").columns[0]
            sql = f"SELECT * FROM {name} ORDER BY {first_column}"
        else:
            sql = f"SELECT * FROM {name} FINAL ORDER BY topic, partition, offset"
        out[name] = warehouse.query(sql).rows
    return out


def raw_count(warehouse: Warehouse, table: str) -> int:
    return int(warehouse.query(f"SELECT count() FROM {table}").scalar())


def check_redelivery_and_rebuild(
    warehouse: Warehouse,
    log: EventLog,
    make: Any,
    ddl: Sequence[str],
    tables: Sequence[str],
    relations: Sequence[str],
    expected_counts: dict[str, int],
    figures: Any,
) -> None:
    """Fed once; then everything again under another consumer group with merges stopped; then a
    rebuild from offset 0 into dropped tables: identical contents each time, row by row."""
    sink = WarehouseSink(warehouse, ddl)
    EmbeddedRunner(log, [(make(), sink)], batch_size=7).catch_up()
    first = snapshot(warehouse, relations)
    assert {t: len(first[t]) for t in tables} == expected_counts
    figures(warehouse)

    for table in tables:
        warehouse.command(f"SYSTEM STOP MERGES {table}")
    EmbeddedRunner(log, [(Redelivery(make(), "redelivery"), sink)], batch_size=3).catch_up()
    # every row is in its table twice until FINAL collapses the pair
    assert {t: raw_count(warehouse, t) for t in tables} == {t: 2 * n for t, n in expected_counts.items()}
    assert snapshot(warehouse, relations) == first
    figures(warehouse)  # exact with the duplicates physically present
    for table in tables:
        warehouse.command(f"SYSTEM START MERGES {table}")

    for table in tables:
        warehouse.command(f"DROP TABLE {table}")
    rebuilt = WarehouseSink(warehouse, ddl)
    EmbeddedRunner(log, [(Redelivery(make(), "rebuild"), rebuilt)], batch_size=500).catch_up()
    assert snapshot(warehouse, relations) == first
    for table in tables:
        warehouse.command(f"OPTIMIZE TABLE {table} FINAL")
    assert {t: raw_count(warehouse, t) for t in tables} == expected_counts
    assert snapshot(warehouse, relations) == first
    figures(warehouse)
