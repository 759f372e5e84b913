"""The write side's memory of reports: each report's state as the log says it is (SQLite in
``$CAMI_HOME``), read synchronously by :class:`~ingest.reports.service.ReportService` to check a
command against the rules, and rebuildable from ``cami.reports``."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ingest.reports.rules import ReportState, evolve

TABLE = "reports"
#: second-opinion requests and arbitration tasks: task id -> kind, study, what is known (JSON)
TASKS = "reading_tasks"


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
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TASKS} (task_id TEXT PRIMARY KEY, kind TEXT NOT NULL,"
            " study_instance_uid TEXT NOT NULL, task TEXT NOT NULL)"
        )
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

    def apply_tasks(self, facts: Sequence[Mapping[str, Any]]) -> None:
        """Fold second-opinion and arbitration facts: a request or task, then its acceptance."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for f in facts:
                    p, kind = f["payload"], f["event_type"]
                    task_id = p.get("request_id") or p["task_id"]
                    row = self._conn.execute(f"SELECT task FROM {TASKS} WHERE task_id = ?", (task_id,)).fetchone()
                    task = json.loads(row[0]) if row else None
                    if kind == "SecondOpinionAccepted":
                        if task is None or task.get("accepted_by"):
                            continue  # unknown, or taken already: the first acceptance stands
                        task |= {"accepted_by": p["accepted_by"], "accepting_user": p["accepting_user"],
                                 "accepted_at": f["recorded_at"]}  # fmt: skip
                    elif task is None:
                        kind_name = "second-opinion" if kind == "SecondOpinionRequested" else "arbitration"
                        task = {**p, "task_id": task_id, "kind": kind_name, "requested_at": f["recorded_at"],
                                "organisation": f.get("organisation")}  # fmt: skip
                    else:
                        continue  # the same request again
                    self._conn.execute(
                        f"INSERT OR REPLACE INTO {TASKS} VALUES (?, ?, ?, ?)",
                        (task_id, task["kind"], task["StudyInstanceUID"], json.dumps(task, ensure_ascii=False)),
                    )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def task(self, task_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(f"SELECT task FROM {TASKS} WHERE task_id = ?", (task_id,)).fetchone()
        return dict(json.loads(row[0])) if row else None

    def tasks(self, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            if study_instance_uid is None:
                rows = self._conn.execute(f"SELECT task FROM {TASKS} ORDER BY task_id").fetchall()
            else:
                rows = self._conn.execute(
                    f"SELECT task FROM {TASKS} WHERE study_instance_uid = ? ORDER BY task_id", (study_instance_uid,)
                ).fetchall()
        return sorted((dict(json.loads(r[0])) for r in rows), key=lambda t: (t["requested_at"], t["task_id"]))

    def studies(self) -> list[str]:
        """Every study with a report (the double-reading worklist looks through them)."""
        with self._lock:
            rows = self._conn.execute(f"SELECT DISTINCT study_instance_uid FROM {TABLE}").fetchall()
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
