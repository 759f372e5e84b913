"""The audit trail as auditors read it (the API's audit pages and ``cami audit history``)."""

from __future__ import annotations

from typing import Any

from projections.audit.fold import COLUMNS, DDL, TABLE, as_hex
from projections.warehouse import Warehouse


def history(warehouse: Warehouse, record: str) -> list[dict[str, Any]]:
    """The record's entries, every column, in the order things happened (occurred_at; ties by
    recorded_at and log position; within one topic that is the chain order)."""
    warehouse.command(DDL)
    result = warehouse.query(
        f"SELECT {', '.join(COLUMNS)} FROM {TABLE} FINAL WHERE aggregate_id = {{r:String}}"
        " ORDER BY occurred_at, recorded_at, topic, partition, offset",
        {"r": record},
    )
    entries = result.dicts()
    for entry in entries:  # FixedString columns arrive as bytes; the hashes are hex text
        for column in ("event_sha256", "prev_hash", "entry_hash"):
            entry[column] = as_hex(entry[column])
    return entries
