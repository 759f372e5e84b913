"""What the archive already holds, per SOPInstanceUID: the write side's memory for dedup,
versioning and storage commitment.

A small SQLite file on the ingest node. The node records its own arrivals the moment their
event is durable; :class:`SopIndexProjection` folds ``InstanceReceived`` events from the log
into the same table, so arrivals through other nodes are known too and the index can be
rebuilt from offset 0 at any time (it is a projection like any other, kept next to ingest).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM

TABLE = "sop_instances"


@dataclass(frozen=True)
class HeldInstance:
    sop_instance_uid: str
    version: int
    sha256: str
    sop_class_uid: str
    study_instance_uid: str


class SopIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the log
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (sop_instance_uid TEXT NOT NULL, version INTEGER NOT NULL,"
            " sha256 TEXT NOT NULL, sop_class_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL,"
            " PRIMARY KEY (sop_instance_uid, version)) WITHOUT ROWID"
        )
        self._lock = threading.Lock()

    def versions(self, sop_instance_uid: str) -> list[HeldInstance]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT sop_instance_uid, version, sha256, sop_class_uid, study_instance_uid FROM {TABLE}"
                " WHERE sop_instance_uid = ? ORDER BY version",
                (sop_instance_uid,),
            ).fetchall()
        return [HeldInstance(*row) for row in rows]

    def latest(self, sop_instance_uid: str) -> HeldInstance | None:
        held = self.versions(sop_instance_uid)
        return held[-1] if held else None

    def record(self, instance: HeldInstance) -> None:
        self.record_many([instance])

    def record_many(self, instances: Sequence[HeldInstance]) -> None:
        with self._lock:
            self._conn.executemany(
                f"INSERT OR IGNORE INTO {TABLE} VALUES (?, ?, ?, ?, ?)",
                [(i.sop_instance_uid, i.version, i.sha256, i.sop_class_uid, i.study_instance_uid) for i in instances],
            )

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class SopIndexProjection:
    """Pure: InstanceReceived -> one row for the SOP index."""

    topics: Sequence[str] = (DICOM,)

    def __init__(self, node: str = "local") -> None:
        self.name = f"sop-index.{node}"

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        if event.type != "InstanceReceived":
            return []
        p = event.payload
        return [
            Row(
                TABLE,
                {
                    "sop_instance_uid": p["SOPInstanceUID"],
                    "version": p["version"],
                    "sha256": p["blob"]["sha256"],
                    "sop_class_uid": p["SOPClassUID"],
                    "study_instance_uid": p["StudyInstanceUID"],
                },
            )
        ]


class SopIndexSink:
    def __init__(self, index: SopIndex) -> None:
        self.index = index

    def write(self, rows: Sequence[Row]) -> None:
        self.index.record_many([HeldInstance(**dict(r.values)) for r in rows if r.table == TABLE])
