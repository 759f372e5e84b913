"""Dead letters: events a projection could not apply, kept beside the read models.

A projection never commits past an event it did not apply (:func:`streams.processing.deliver`).
An event that is *itself* unprocessable — its projection's ``apply`` raises, or the warehouse
refuses its rows while it accepts other events' rows — would then stop the projection for ever;
instead it is recorded here, durably, before the position moves past it. ``cami status`` and the
monitoring API (``/api/monitoring/dead-letters``, to regional IT without the error text, which may
quote the event's values) show them; ``cami replay`` of the projection
marks its letters resolved and records again whatever still fails.

``dead_letters`` is a ``ReplacingMergeTree(version)`` keyed by (processor, topic, partition,
offset): a redelivered failure is one row, and resolving a letter is a newer row with
``resolved = true`` (append-only, like everything else here). ``version`` is the archive's clock
in microseconds when the row was written; a rebuild resolves before it re-applies, so a letter
recorded again by the rebuild is newer than its resolution.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from projections.warehouse.base import Warehouse
from streams.processing import DeadLetter

TABLE = "dead_letters"

DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    processor LowCardinality(String),
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    event_id String,
    event_type LowCardinality(String),
    error String,
    recorded_at DateTime64(6, 'UTC'),
    resolved Bool,
    version UInt64
) ENGINE = ReplacingMergeTree(version)
ORDER BY (processor, topic, partition, offset)
"""

_COLUMNS = (
    "processor",
    "topic",
    "partition",
    "offset",
    "event_id",
    "event_type",
    "error",
    "recorded_at",
    "resolved",
    "version",
)

_last_version = 0


def _version() -> int:
    """Microseconds of the archive's clock, strictly increasing within this process."""
    global _last_version
    _last_version = max(time.time_ns() // 1000, _last_version + 1)
    return _last_version


def record(warehouse: Warehouse, letters: Sequence[DeadLetter]) -> None:
    """Write dead letters; returns only once the warehouse has them (raises otherwise)."""
    now = datetime.now(UTC)
    rows: list[list[Any]] = []
    for letter in letters:
        s = letter.source
        rows.append(
            [letter.processor, s.topic, s.partition, s.offset, letter.event_id, letter.event_type,
             letter.error, now, False, _version()]
        )  # fmt: skip
    warehouse.insert(TABLE, _COLUMNS, rows)


def ensure(warehouse: Warehouse) -> None:
    """Create the table if no projection's sink has yet (readers may come first)."""
    warehouse.command(DDL)


def open_letters(warehouse: Warehouse, processor: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Unresolved dead letters, oldest first (all projections, or one), at most ``limit``."""
    ensure(warehouse)
    where = "NOT resolved" + (" AND processor = {processor:String}" if processor is not None else "")
    return warehouse.query(
        f"SELECT processor, topic, partition, offset, event_id, event_type, error, recorded_at"
        f" FROM {TABLE} FINAL WHERE {where} ORDER BY recorded_at, processor, topic, partition, offset"
        " LIMIT {limit:UInt32}",
        {"limit": limit, **({"processor": processor} if processor is not None else {})},
    ).dicts()


def counts(warehouse: Warehouse) -> dict[str, int]:
    """Per projection, how many unresolved dead letters it has."""
    ensure(warehouse)
    rows = warehouse.query(
        f"SELECT processor, count() FROM {TABLE} FINAL WHERE NOT resolved GROUP BY processor ORDER BY processor"
    ).rows
    return {str(name): int(n) for name, n in rows}


def resolve(warehouse: Warehouse, processor: str) -> int:
    """Mark every open letter of ``processor`` resolved (a rebuild retries them all); returns how
    many were open."""
    letters = open_letters(warehouse, processor, limit=2**32 - 1)
    if not letters:
        return 0
    now = datetime.now(UTC)
    warehouse.insert(
        TABLE,
        _COLUMNS,
        [
            [processor, d["topic"], d["partition"], d["offset"], d["event_id"], d["event_type"], d["error"],
             now, True, _version()]
            for d in letters
        ],
    )  # fmt: skip
    return len(letters)
