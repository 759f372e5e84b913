"""What the archive already holds, per SOPInstanceUID: the write side's memory for dedup,
versioning, storage commitment and the ownership rule (who may send a new version, under which
patient and study).

It is write-model state, not a read model (read models live in projections/): the pipeline reads
it synchronously to decide each arrival, and it is folded from the log only so that it survives
restarts and knows other nodes' arrivals.

A small SQLite file on the ingest node. The node records its own arrivals the moment their
event is durable; :class:`SopIndexProjection` folds ``InstanceReceived`` events from the log
into the same tables, so arrivals through other nodes are known too.

The file can be rebuilt from offset 0 at any time: each file draws a random *generation* when it
is created, and the projection's consumer group carries it (:attr:`SopIndex.projection_name`).
A new or deleted file, or one written by an older layout (dropped on open), therefore reads the
whole log again instead of resuming from offsets committed for rows it no longer has.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM

TABLE = "sop_instances"
#: the patient (and the organisation) each study was first stored under
STUDIES = "studies"
#: bumped whenever the tables change: an older file is dropped and rebuilt from the log
LAYOUT = 2


@dataclass(frozen=True)
class HeldInstance:
    sop_instance_uid: str
    version: int
    sha256: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    #: the regional code of the sending organisation (None: an unknown sender in pilot mode)
    organisation: str | None


@dataclass(frozen=True)
class HeldStudy:
    study_instance_uid: str
    patient_id: str
    organisation: str | None


class SopIndex:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the log
        self._lock = threading.Lock()
        self.generation = self._open_layout()

    def _open_layout(self) -> str:
        c = self._conn
        if int(c.execute("PRAGMA user_version").fetchone()[0]) != LAYOUT:
            # an older layout lacks columns the rules need: start empty, read the log again
            c.execute(f"DROP TABLE IF EXISTS {TABLE}")
            c.execute(f"DROP TABLE IF EXISTS {STUDIES}")
            c.execute("DROP TABLE IF EXISTS sop_index_meta")
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (sop_instance_uid TEXT NOT NULL, version INTEGER NOT NULL,"
            " sha256 TEXT NOT NULL, sop_class_uid TEXT NOT NULL, study_instance_uid TEXT NOT NULL,"
            " series_instance_uid TEXT NOT NULL, patient_id TEXT NOT NULL, organisation TEXT,"
            " PRIMARY KEY (sop_instance_uid, version)) WITHOUT ROWID"
        )
        c.execute(
            f"CREATE TABLE IF NOT EXISTS {STUDIES} (study_instance_uid TEXT PRIMARY KEY,"
            " patient_id TEXT NOT NULL, organisation TEXT) WITHOUT ROWID"
        )
        c.execute("CREATE TABLE IF NOT EXISTS sop_index_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        c.execute("INSERT OR IGNORE INTO sop_index_meta VALUES ('generation', ?)", (uuid.uuid4().hex[:12],))
        c.execute(f"PRAGMA user_version = {LAYOUT}")
        return str(c.execute("SELECT value FROM sop_index_meta WHERE key = 'generation'").fetchone()[0])

    def projection_name(self, node: str) -> str:
        """The name (and so the consumer group) of the projection that fills this file."""
        return f"{node}.{self.generation}"

    def versions(self, sop_instance_uid: str) -> list[HeldInstance]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT sop_instance_uid, version, sha256, sop_class_uid, study_instance_uid, series_instance_uid,"
                f" patient_id, organisation FROM {TABLE} WHERE sop_instance_uid = ? ORDER BY version",
                (sop_instance_uid,),
            ).fetchall()
        return [HeldInstance(*row) for row in rows]

    def latest(self, sop_instance_uid: str) -> HeldInstance | None:
        held = self.versions(sop_instance_uid)
        return held[-1] if held else None

    def study(self, study_instance_uid: str) -> HeldStudy | None:
        """The patient a study is held under, if any instance of it is held."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT study_instance_uid, patient_id, organisation FROM {STUDIES} WHERE study_instance_uid = ?",
                (study_instance_uid,),
            ).fetchone()
        return HeldStudy(*row) if row else None

    def record(self, instance: HeldInstance) -> None:
        self.record_many([instance])

    def record_many(self, instances: Sequence[HeldInstance]) -> None:
        # in log order: a study keeps the patient of its first instance (INSERT OR IGNORE), so a
        # log that already holds a conflicting arrival from before the rule still rebuilds the same
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._insert(instances)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _insert(self, instances: Sequence[HeldInstance]) -> None:
        self._conn.executemany(
            f"INSERT OR IGNORE INTO {TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    i.sop_instance_uid,
                    i.version,
                    i.sha256,
                    i.sop_class_uid,
                    i.study_instance_uid,
                    i.series_instance_uid,
                    i.patient_id,
                    i.organisation,
                )
                for i in instances
            ],
        )
        self._conn.executemany(
            f"INSERT OR IGNORE INTO {STUDIES} VALUES (?, ?, ?)",
            [(i.study_instance_uid, i.patient_id, i.organisation) for i in instances],
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
                    "series_instance_uid": p["SeriesInstanceUID"],
                    "patient_id": p["PatientID"],
                    "organisation": event.envelope.organisation,
                },
            )
        ]


class SopIndexSink:
    def __init__(self, index: SopIndex) -> None:
        self.index = index

    def write(self, rows: Sequence[Row]) -> None:
        self.index.record_many([HeldInstance(**dict(r.values)) for r in rows if r.table == TABLE])
