"""Simple sinks that need no database: JSON lines on disk and an in-memory list."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from streams.processing import Row


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


class JsonLinesSink:
    """Appends ``{"table": ..., **values}`` lines and fsyncs each batch (exports, tests, debugging).

    Not idempotent by itself: readers key rows by their log position (topic/partition/offset)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def write(self, rows: Sequence[Row]) -> None:
        lines = "".join(
            json.dumps({"table": r.table, **{k: _jsonable(v) for k, v in r.values.items()}}, ensure_ascii=False) + "\n"
            for r in rows
        )
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(lines)
            fh.flush()
            os.fsync(fh.fileno())


class MemorySink:
    def __init__(self) -> None:
        self.rows: list[Row] = []

    def write(self, rows: Sequence[Row]) -> None:
        self.rows.extend(rows)
