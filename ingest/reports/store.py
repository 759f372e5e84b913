"""The write side's memory of reports: each report's state as the log says it is (SQLite in
``$CAMI_HOME``), read synchronously by :class:`~ingest.reports.service.ReportService` to check a
command against the rules, and rebuildable from ``cami.reports``."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ingest.reports.rules import ReportState, evolve

TABLE = "reports"


class ReportStore:
    """Report states as the log says they are (SQLite; rebuildable from ``cami.reports``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the log
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (report_id TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL,"
            " state TEXT NOT NULL)"
        )
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_study ON {TABLE} (study_instance_uid)")
        self._lock = threading.Lock()

    def get(self, report_id: str) -> ReportState | None:
        with self._lock:
            row = self._conn.execute(f"SELECT state FROM {TABLE} WHERE report_id = ?", (report_id,)).fetchone()
        return ReportState.from_json(row[0]) if row else None

    def for_study(self, study_instance_uid: str) -> list[ReportState]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT state FROM {TABLE} WHERE study_instance_uid = ?", (study_instance_uid,)
            ).fetchall()
        return sorted((ReportState.from_json(r[0]) for r in rows), key=lambda s: (s.created_at, s.report_id))

    def all(self) -> list[ReportState]:
        with self._lock:
            rows = self._conn.execute(f"SELECT state FROM {TABLE} ORDER BY report_id").fetchall()
        return [ReportState.from_json(r[0]) for r in rows]

    def apply(self, facts: Sequence[Mapping[str, Any]]) -> None:
        """Fold facts in order, each report's read-modify-write in one transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for f in facts:
                    report_id = f["payload"]["report_id"]
                    row = self._conn.execute(f"SELECT state FROM {TABLE} WHERE report_id = ?", (report_id,)).fetchone()
                    before = ReportState.from_json(row[0]) if row else None
                    after = evolve(before, f)
                    if after is not None and after is not before:
                        self._conn.execute(
                            f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?)",
                            (after.report_id, after.study_instance_uid, after.to_json()),
                        )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()
