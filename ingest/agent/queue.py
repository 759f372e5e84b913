"""The agent's durable local queue: the spool, the studies waiting for CAMI, and the event outbox.

Everything lives in the data directory: one SQLite file (``agent.db``, WAL, ``synchronous=FULL``)
and the spooled objects under ``spool/<StudyInstanceUID>/<SOPInstanceUID>-<sha256 prefix>.dcm``.

Durability, in this order, so that a kill -9 at any moment leaves either the old or the new state:

1. an object is written to a temporary file, fsynced, renamed into place, and its directory fsynced;
2. only then does the transaction that records it (and the events it causes) commit;
3. only then does :meth:`TransferQueue.accept` return, and the source acknowledge to the hospital.

A file without a row (a crash between 1 and 2, or a replaced version) is removed when the queue is
opened; a row never points to a missing file. The name carries the content's hash, so a replacement
is a new file and the old one stays intact until the new row commits.

Transactional outbox: every state change that produces a transfer event writes the event in the
same transaction, so CAMI hears of exactly the changes that happened (the service posts
:meth:`~TransferQueue.pending_events` and calls :meth:`~TransferQueue.events_delivered`).

A study's states (:class:`~ingest.agent.model.StudyState`): ``local`` (not eligible) -> ``queued``
-> ``sending`` -> ``delivered``; a failed attempt -> ``retry`` (again at ``next_attempt_at``) or
``held``. Eligible: a pathology mark the rules count, an emergency, a full-import request,
``cami agent send``, or ``pathology_only = false``. An eligible study with an object CAMI would
refuse (:func:`ingest.agent.rules.file_problems`) is ``held`` with CAMI's reason and a
``TransferFailed(will_retry=false)``; ``requeue`` sends the rest and leaves those objects here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ingest.agent import rules as agent_rules
from ingest.agent.config import Rules
from ingest.agent.model import HeldInstance, Intake, OutboxEvent, Priority, StudyEntry, StudyState
from ingest.agent.schedule import Window, next_opening
from ingest.dicom import text, uid
from ingest.reports.documents import ENCAPSULATED_PDF, SR_CLASSES
from schemas.uids import is_uid

#: what ``missing`` says of a study sent without its report (no SR or encapsulated PDF among its objects)
REPORT = "Report"
REPORT_CLASSES = frozenset(SR_CLASSES) | {ENCAPSULATED_PDF}

log = logging.getLogger("cami.agent.queue")

#: studies counted as waiting to go (queue depth, bytes waiting)
WAITING = (StudyState.QUEUED, StudyState.RETRY, StudyState.SENDING)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT,
    accession TEXT,
    state TEXT NOT NULL,
    priority TEXT NOT NULL,
    pathology INTEGER NOT NULL DEFAULT 0,
    full_import INTEGER NOT NULL DEFAULT 0,
    forced INTEGER NOT NULL DEFAULT 0,
    request_id TEXT,
    transfer_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    held_reason TEXT,
    -- held because an object CAMI would refuse is part of it (a good replacement requeues it)
    held_by_problem INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    queued_at TEXT,
    delivered_at TEXT,
    received_at TEXT NOT NULL,
    source_ae_title TEXT
);
CREATE INDEX IF NOT EXISTS studies_state ON studies (state, priority, queued_at);
CREATE INDEX IF NOT EXISTS studies_patient ON studies (patient_id);
CREATE INDEX IF NOT EXISTS studies_accession ON studies (accession);
CREATE TABLE IF NOT EXISTS instances (
    sop_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    sent INTEGER NOT NULL DEFAULT 0,
    committed INTEGER NOT NULL DEFAULT 0,
    -- the transfer it is part of (set when the transfer starts)
    transfer_id TEXT,
    -- why CAMI would refuse it (CAMI's words); excluded: left here by `requeue`
    problem TEXT,
    excluded INTEGER NOT NULL DEFAULT 0,
    missing TEXT NOT NULL DEFAULT '[]',
    received_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid);
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    type TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pathology_flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    study_uid TEXT,
    accession TEXT,
    patient_id TEXT,
    source TEXT NOT NULL,
    flagged_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    study_uid TEXT,
    patient_id TEXT,
    urgent INTEGER NOT NULL,
    received_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    study_uid TEXT PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    seen_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def utc_now() -> datetime:
    return datetime.now(UTC)


def _ts(moment: datetime) -> str:
    """Timestamps are stored in UTC with a fixed layout, so text order is time order."""
    if moment.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _dt(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _payload_json(payload: dict[str, Any]) -> str:
    def encode(value: Any) -> Any:
        if isinstance(value, datetime):
            return {"$datetime": _ts(value)}
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    return json.dumps(payload, default=encode, ensure_ascii=False)


def _payload_from_json(raw: str) -> dict[str, Any]:
    def decode(value: dict[str, Any]) -> Any:
        if set(value) == {"$datetime"}:
            return datetime.fromisoformat(value["$datetime"])
        return value

    loaded = json.loads(raw, object_hook=decode)
    assert isinstance(loaded, dict)
    return loaded


def _file_name(value: str) -> str:
    """A UID as a file name; anything else (a refused object's bad UID) by its hash."""
    return value if is_uid(value) else "x" + hashlib.sha256(value.encode()).hexdigest()[:40]


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TransferQueue:
    """The spool, the studies and the outbox (see the module's description). Thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        organisation: str,
        destination: str,
        clock: Callable[[], datetime] = utc_now,
        *,
        rules: Rules | None = None,
        windows: Sequence[Window] = (),
    ) -> None:
        self.data_dir = Path(data_dir)
        self.organisation = organisation
        #: CAMI's AE title or base URL, as TransferQueued names it
        self.destination = destination
        self.clock = clock
        self.rules = rules or Rules()
        #: the schedule's windows: TransferQueued says when a scheduled study will go
        self.windows = tuple(windows)
        self.spool = self.data_dir / "spool"
        self.spool.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(
            self.data_dir / "agent.db", isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        # Every process holding the queue open (the agent, `cami agent status`...) keeps a shared
        # lock; the spool is cleaned only by a process that finds no other one (an exclusive lock):
        # another process may have written a file whose row it has not committed yet.
        self._lock_file = (self.data_dir / "agent.lock").open("a+b")
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            self._clean_spool()
        fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_SH)  # waits while another process cleans

    def close(self) -> None:
        with self._lock:
            self._db.close()
            self._lock_file.close()

    def __enter__(self) -> TransferQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _now(self) -> datetime:
        now = self.clock()
        if now.tzinfo is None:
            raise ValueError("the queue's clock must return timezone-aware datetimes")
        return now

    def _event(self, db: sqlite3.Connection, event_type: str, payload: dict[str, Any]) -> None:
        db.execute(
            "INSERT INTO outbox (event_id, type, occurred_at, payload) VALUES (?, ?, ?, ?)",
            (str(uuid.uuid4()), event_type, _ts(self._now()), _payload_json(payload)),
        )

    # -- start-up ----------------------------------------------------------------------------------
    def _clean_spool(self) -> None:
        """Files without a row (a crash before the row committed, a replaced version) go; rows
        whose file is gone (the disk lost it: never by the write order) are dropped loudly."""
        with self._transaction() as db:
            held = {row["path"] for row in db.execute("SELECT path FROM instances")}
            for row in db.execute("SELECT sop_uid, path FROM instances").fetchall():
                if not (self.data_dir / row["path"]).is_file():
                    log.error("spooled file %s is missing: instance %s dropped", row["path"], row["sop_uid"])
                    db.execute("DELETE FROM instances WHERE sop_uid = ?", (row["sop_uid"],))
        for study_dir in self.spool.iterdir():
            if not study_dir.is_dir():
                study_dir.unlink(missing_ok=True)
                continue
            for file in study_dir.iterdir():
                if file.relative_to(self.data_dir).as_posix() not in held:
                    file.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                study_dir.rmdir()  # only when empty

    def recover(self) -> list[str]:
        """At start-up: studies left ``sending`` by a stop go back to ``queued`` (the next attempt
        sends what was not sent and commits the whole study again)."""
        with self._transaction() as db:
            rows = db.execute("SELECT study_uid FROM studies WHERE state = ?", (StudyState.SENDING,)).fetchall()
            db.execute("UPDATE studies SET state = ? WHERE state = ?", (StudyState.QUEUED, StudyState.SENDING))
        return [row["study_uid"] for row in rows]

    # -- intake ------------------------------------------------------------------------------------
    def accept(
        self,
        part10: bytes | Path,
        *,
        source: str,
        calling_ae_title: str | None = None,
        emergency: bool = False,
    ) -> HeldInstance:
        """Spool and queue one Part-10 object durably (see the module's description). Raises
        ValueError with a reason for bytes that are not a DICOM object the agent can hold."""
        data = part10.read_bytes() if isinstance(part10, Path) else bytes(part10)
        examination = agent_rules.examine(data, self.organisation)  # ValueError: nothing to hold
        ds = examination.header
        study_uid, sop_uid = uid(ds, "StudyInstanceUID"), uid(ds, "SOPInstanceUID")
        if study_uid is None or sop_uid is None:
            raise ValueError(examination.problems[0] if examination.problems else "no StudyInstanceUID/SOPInstanceUID")
        digest = hashlib.sha256(data).hexdigest()
        held = self._held(sop_uid)
        if held is not None and held.sha256 == digest:
            return held  # the same object again: nothing changes
        problems = examination.problems
        marks = agent_rules.marks(ds, self.rules)
        relative = f"spool/{_file_name(study_uid)}/{_file_name(sop_uid)}-{digest[:16]}.dcm"
        self._write_durably(self.data_dir / relative, data)
        now = self._now()
        replaced: str | None = None
        with self._transaction() as db:
            previous = db.execute("SELECT path, sha256 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
            if previous is not None and previous["sha256"] == digest:
                row = db.execute("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
                return self._instance(row)  # another thread held the same bytes meanwhile
            if previous is not None and previous["path"] != relative:
                replaced = previous["path"]
            db.execute("DELETE FROM instances WHERE sop_uid = ?", (sop_uid,))
            db.execute(
                "INSERT INTO instances (sop_uid, study_uid, series_uid, sop_class_uid, transfer_syntax, path, size,"
                " sha256, problem, missing, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sop_uid,
                    study_uid,
                    uid(ds, "SeriesInstanceUID") or "",
                    uid(ds, "SOPClassUID") or "",
                    examination.transfer_syntax,
                    relative,
                    len(data),
                    digest,
                    problems[0] if problems else None,
                    json.dumps(examination.missing),
                    _ts(now),
                ),
            )
            study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if study is None:
                db.execute(
                    "INSERT INTO studies (study_uid, patient_id, accession, state, priority, received_at,"
                    " source_ae_title) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        study_uid,
                        text(ds, "PatientID"),
                        text(ds, "AccessionNumber"),
                        StudyState.LOCAL,
                        Priority.SCHEDULED,
                        _ts(now),
                        calling_ae_title or source,
                    ),
                )
            if marks.pathology:
                db.execute("UPDATE studies SET pathology = 1 WHERE study_uid = ?", (study_uid,))
            if emergency or marks.emergency:
                db.execute("UPDATE studies SET priority = ? WHERE study_uid = ?", (Priority.EMERGENCY, study_uid))
            self._apply_remembered(db, study_uid)
            self._settle(db, study_uid, new_problem=problems[0] if problems else None)
            row = db.execute("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
            instance = self._instance(row)
        if replaced is not None:
            (self.data_dir / replaced).unlink(missing_ok=True)
        return instance

    def _write_durably(self, path: Path, data: bytes) -> None:
        directory = path.parent
        created = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        temporary = directory / f".{path.name}.{uuid.uuid4().hex}.tmp"
        try:
            with temporary.open("wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
        _fsync_directory(directory)
        if created:
            _fsync_directory(directory.parent)

    def _apply_remembered(self, db: sqlite3.Connection, study_uid: str) -> None:
        """MIS flags and full-import requests made before this study arrived."""
        study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        if "mis" in self.rules.pathology_marks and not study["pathology"]:
            flag = db.execute(
                "SELECT 1 FROM pathology_flags WHERE (study_uid IS NULL OR study_uid = ?)"
                " AND (accession IS NULL OR accession = ?) AND (patient_id IS NULL OR patient_id = ?) LIMIT 1",
                (study_uid, study["accession"], study["patient_id"]),
            ).fetchone()
            if flag is not None:
                db.execute("UPDATE studies SET pathology = 1 WHERE study_uid = ?", (study_uid,))
        if not study["full_import"]:
            request = db.execute(
                "SELECT * FROM requests WHERE study_uid = ? OR (study_uid IS NULL AND patient_id = ?)"
                " ORDER BY received_at LIMIT 1",
                (study_uid, study["patient_id"]),
            ).fetchone()
            if request is not None:
                self._apply_request(db, study_uid, request["request_id"], bool(request["urgent"]))

    def _apply_request(self, db: sqlite3.Connection, study_uid: str, request_id: str, urgent: bool) -> None:
        db.execute(
            "UPDATE studies SET full_import = 1, request_id = ? WHERE study_uid = ?",
            (request_id, study_uid),
        )
        if urgent:
            db.execute("UPDATE studies SET priority = ? WHERE study_uid = ?", (Priority.EMERGENCY, study_uid))

    def _eligible(self, study: sqlite3.Row) -> bool:
        return bool(
            study["pathology"]
            or study["full_import"]
            or study["forced"]
            or study["priority"] == Priority.EMERGENCY
            or not self.rules.pathology_only
        )

    def _settle(self, db: sqlite3.Connection, study_uid: str, *, new_problem: str | None = None) -> None:
        """After a change to a study: queue it when it became eligible or has new objects to send,
        hold it when an object CAMI would refuse is part of what goes."""
        study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        state = StudyState(study["state"])
        if state == StudyState.LOCAL and self._eligible(study):
            self._queue(db, study_uid)
        elif state == StudyState.DELIVERED and (
            self._pending(db, study_uid)[0] or self._unwaived_problem(db, study_uid) is not None
        ):
            self._queue(db, study_uid)  # new objects after delivery: only they go (or the study is held)
        elif state == StudyState.HELD and study["held_by_problem"] and self._unwaived_problem(db, study_uid) is None:
            self._queue(db, study_uid)  # the refused object was replaced by a good one
        elif state in (StudyState.QUEUED, StudyState.RETRY) and new_problem is not None:
            self._hold(db, study_uid, self._unwaived_problem(db, study_uid) or new_problem, by_problem=True)
        # sending: a refused object that arrives now is not part of the transfer in flight; once
        # that transfer completes, the study is queued again and held for it

    def _pending(self, db: sqlite3.Connection, study_uid: str) -> tuple[int, int]:
        """(instances, bytes) still to deliver (not committed, not refused)."""
        row = db.execute(
            "SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM instances"
            " WHERE study_uid = ? AND committed = 0 AND problem IS NULL",
            (study_uid,),
        ).fetchone()
        return (int(row["n"]), int(row["bytes"])) if row["n"] else (0, 0)

    def _unwaived_problem(self, db: sqlite3.Connection, study_uid: str) -> str | None:
        row = db.execute(
            "SELECT sop_uid, problem FROM instances WHERE study_uid = ? AND problem IS NOT NULL AND excluded = 0"
            " ORDER BY received_at, sop_uid LIMIT 1",
            (study_uid,),
        ).fetchone()
        return None if row is None else f"{row['problem']} (SOPInstanceUID {row['sop_uid']})"

    def _queue(self, db: sqlite3.Connection, study_uid: str) -> None:
        """A new transfer: TransferQueued; then held at once if an object CAMI would refuse is in it."""
        now = self._now()
        transfer_id = str(uuid.uuid4())
        db.execute(
            "UPDATE studies SET state = ?, transfer_id = ?, attempt = 0, next_attempt_at = NULL, held_reason = NULL,"
            " held_by_problem = 0,"
            " last_error = NULL, queued_at = ? WHERE study_uid = ?",
            (StudyState.QUEUED, transfer_id, _ts(now), study_uid),
        )
        self._queued_event(db, study_uid)
        problem = self._unwaived_problem(db, study_uid)
        if problem is not None:
            self._hold(db, study_uid, problem, by_problem=True)

    def _queued_event(self, db: sqlite3.Connection, study_uid: str) -> None:
        study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        instances, size = self._pending(db, study_uid)
        emergency = study["priority"] == Priority.EMERGENCY
        payload: dict[str, Any] = {
            "transfer_id": study["transfer_id"],
            "StudyInstanceUID": study_uid,
            "instances": instances,
            "bytes": size,
            "priority": str(study["priority"]),
            "pathology": bool(study["pathology"]),
            "full_import": bool(study["full_import"]),
            "source_ae_title": study["source_ae_title"],
            "destination": self.destination,
            "scheduled_for": None if emergency else next_opening(self.windows, self._now()),
        }
        if study["request_id"] is not None:
            # optional field of TransferQueued (a full-import request's id); absent otherwise
            payload["request_id"] = study["request_id"]
        self._event(db, "TransferQueued", payload)

    def _hold(self, db: sqlite3.Connection, study_uid: str, reason: str, *, by_problem: bool) -> None:
        db.execute(
            "UPDATE studies SET state = ?, held_reason = ?, held_by_problem = ?, last_error = ?,"
            " next_attempt_at = NULL WHERE study_uid = ?",
            (StudyState.HELD, reason, int(by_problem), reason, study_uid),
        )
        self._failed_event(db, study_uid, reason, will_retry=False, retry_at=None)

    def _failed_event(
        self, db: sqlite3.Connection, study_uid: str, error: str, *, will_retry: bool, retry_at: datetime | None
    ) -> None:
        study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
        sent = db.execute(
            "SELECT count(*) FROM instances WHERE study_uid = ? AND transfer_id = ? AND sent = 1",
            (study_uid, study["transfer_id"]),
        ).fetchone()[0]
        self._event(
            db,
            "TransferFailed",
            {
                "transfer_id": study["transfer_id"],
                "StudyInstanceUID": study_uid,
                "attempt": int(study["attempt"]),
                "error": error,
                "will_retry": will_retry,
                "next_attempt_at": retry_at,
                "instances_sent": int(sent),
            },
        )

    # -- marks and requests ------------------------------------------------------------------------
    def remember_pathology(
        self,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        patient_id: str | None = None,
        source: str,
    ) -> None:
        """Keep a pathology flag (from the MIS) for studies that have not arrived yet; the given
        criteria must all match (a PatientID alone: every study of that patient)."""
        if not (study_uid or accession or patient_id):
            raise ValueError("a pathology flag needs a StudyInstanceUID, an AccessionNumber or a PatientID")
        with self._transaction() as db:
            self._remember_flag(db, study_uid, accession, patient_id, source)

    def _remember_flag(
        self, db: sqlite3.Connection, study_uid: str | None, accession: str | None, patient_id: str | None, source: str
    ) -> None:
        db.execute(
            "INSERT INTO pathology_flags (study_uid, accession, patient_id, source, flagged_at) VALUES (?, ?, ?, ?, ?)",
            (study_uid or None, accession or None, patient_id or None, source, _ts(self._now())),
        )

    def mark_pathology(
        self,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        patient_id: str | None = None,
        source: str,
    ) -> list[str]:
        """Mark the matching studies pathology now and remember the flag for those arriving later.
        Returns the studies this made eligible. Counts only when the rules count MIS flags."""
        if not (study_uid or accession or patient_id):
            raise ValueError("a pathology flag needs a StudyInstanceUID, an AccessionNumber or a PatientID")
        eligible: list[str] = []
        with self._transaction() as db:
            self._remember_flag(db, study_uid, accession, patient_id, source)
            if "mis" not in self.rules.pathology_marks:
                return []
            for study in db.execute(
                "SELECT study_uid, state FROM studies WHERE pathology = 0 AND (? IS NULL OR study_uid = ?)"
                " AND (? IS NULL OR accession = ?) AND (? IS NULL OR patient_id = ?)",
                (study_uid or None, study_uid, accession or None, accession, patient_id or None, patient_id),
            ).fetchall():
                db.execute("UPDATE studies SET pathology = 1 WHERE study_uid = ?", (study["study_uid"],))
                if study["state"] == StudyState.LOCAL:
                    self._settle(db, study["study_uid"])
                    eligible.append(study["study_uid"])
        return eligible

    def request_full_import(
        self, request_id: str, *, study_uid: str | None = None, patient_id: str | None = None, urgent: bool = False
    ) -> list[str]:
        """CAMI asks for a study's or a patient's full set: the matching studies held here go
        (urgent: as emergencies), and so do those arriving later. Idempotent per request_id;
        returns the studies this call queued."""
        if not (study_uid or patient_id):
            raise ValueError("a full-import request names a StudyInstanceUID or a PatientID")
        queued: list[str] = []
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM requests WHERE request_id = ?", (request_id,)).fetchone():
                return []
            db.execute(
                "INSERT INTO requests (request_id, study_uid, patient_id, urgent, received_at) VALUES (?, ?, ?, ?, ?)",
                (request_id, study_uid or None, patient_id or None, int(urgent), _ts(self._now())),
            )
            if study_uid:
                rows = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchall()
            else:
                rows = db.execute("SELECT * FROM studies WHERE patient_id = ?", (patient_id,)).fetchall()
            for study in rows:
                if patient_id and study["patient_id"] != patient_id:
                    continue
                state = StudyState(study["state"])
                if state == StudyState.DELIVERED and not self._pending(db, study["study_uid"])[0]:
                    continue  # CAMI has all of it already
                self._apply_request(db, study["study_uid"], request_id, urgent)
                if state == StudyState.LOCAL:
                    self._settle(db, study["study_uid"])
                    queued.append(study["study_uid"])
        return queued

    def send_now(self, study_uid: str, emergency: bool) -> StudyEntry:
        """``cami agent send``: the study goes at its turn (emergency: at once, any window), whatever
        its marks; a study waiting for a retry goes now. KeyError when the agent does not hold it."""
        with self._transaction() as db:
            study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if study is None:
                raise KeyError(study_uid)
            db.execute("UPDATE studies SET forced = 1 WHERE study_uid = ?", (study_uid,))
            if emergency:
                db.execute("UPDATE studies SET priority = ? WHERE study_uid = ?", (Priority.EMERGENCY, study_uid))
            state = StudyState(study["state"])
            if state == StudyState.RETRY:
                db.execute("UPDATE studies SET state = ?, next_attempt_at = NULL WHERE study_uid = ?",
                           (StudyState.QUEUED, study_uid))  # fmt: skip
            elif state == StudyState.HELD:
                self._requeue_held(db, study_uid)
            else:
                self._settle(db, study_uid)
            return self._entry(db, study_uid)

    def requeue(self, study_uid: str | None = None) -> list[str]:
        """``cami agent requeue``: held and retrying studies (one, or all) go again at their turn;
        returns those requeued (empty for a study in another state or unknown). A held study's
        refused objects are checked again; those CAMI would still refuse stay here and the rest goes."""
        requeued: list[str] = []
        with self._transaction() as db:
            if study_uid is None:
                rows = db.execute(
                    "SELECT study_uid, state FROM studies WHERE state IN (?, ?)", (StudyState.HELD, StudyState.RETRY)
                ).fetchall()
            else:
                rows = db.execute("SELECT study_uid, state FROM studies WHERE study_uid = ?", (study_uid,)).fetchall()
            for row in rows:
                if row["state"] == StudyState.RETRY:
                    db.execute("UPDATE studies SET state = ?, next_attempt_at = NULL WHERE study_uid = ?",
                               (StudyState.QUEUED, row["study_uid"]))  # fmt: skip
                elif row["state"] == StudyState.HELD:
                    self._requeue_held(db, row["study_uid"])
                else:
                    continue
                requeued.append(row["study_uid"])
        return requeued

    def _requeue_held(self, db: sqlite3.Connection, study_uid: str) -> None:
        """Objects CAMI would still refuse are left here (excluded); the rest goes as a new transfer."""
        for row in db.execute(
            "SELECT sop_uid, path FROM instances WHERE study_uid = ? AND problem IS NOT NULL", (study_uid,)
        ).fetchall():
            problems = agent_rules.file_problems((self.data_dir / row["path"]).read_bytes(), self.organisation)
            if problems:
                db.execute("UPDATE instances SET problem = ?, excluded = 1 WHERE sop_uid = ?",
                           (problems[0], row["sop_uid"]))  # fmt: skip
            else:
                db.execute("UPDATE instances SET problem = NULL, excluded = 0 WHERE sop_uid = ?", (row["sop_uid"],))
        self._queue(db, study_uid)  # a new transfer: the held one failed for good

    # -- sending -----------------------------------------------------------------------------------
    def next_study(self, now: datetime, window_open: bool) -> StudyEntry | None:
        """The study to send next: emergencies first (whatever the window), then, while the window
        is open, scheduled ones; oldest queued first; a retry only once its time came."""
        priorities = [Priority.EMERGENCY] + ([Priority.SCHEDULED] if window_open else [])
        with self._lock:
            for priority in priorities:
                row = self._db.execute(
                    "SELECT study_uid FROM studies WHERE priority = ?"
                    " AND (state = ? OR (state = ? AND (next_attempt_at IS NULL OR next_attempt_at <= ?)))"
                    " ORDER BY queued_at, study_uid LIMIT 1",
                    (priority, StudyState.QUEUED, StudyState.RETRY, _ts(now)),
                ).fetchone()
                if row is not None:
                    return self._entry(self._db, row["study_uid"])
        return None

    def start(self, study_uid: str) -> tuple[StudyEntry, list[HeldInstance]]:
        """A transfer attempt begins: ``sending``, attempt + 1, TransferStarted. The instances are
        those not yet committed (``sent`` marks those CAMI already stored: commit, do not resend)."""
        with self._transaction() as db:
            study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if study is None:
                raise KeyError(study_uid)
            if study["state"] not in (StudyState.QUEUED, StudyState.RETRY):
                raise ValueError(f"study {study_uid} is {study['state']}, not waiting to be sent")
            attempt = int(study["attempt"]) + 1
            db.execute(
                "UPDATE studies SET state = ?, attempt = ?, next_attempt_at = NULL WHERE study_uid = ?",
                (StudyState.SENDING, attempt, study_uid),
            )
            db.execute(
                "UPDATE instances SET transfer_id = ? WHERE study_uid = ? AND committed = 0 AND problem IS NULL",
                (study["transfer_id"], study_uid),
            )
            # the package is checked against the regional rules before it goes: what it lacks is reported
            missing: dict[str, None] = {}
            documents = False
            for row in db.execute("SELECT missing, sop_class_uid FROM instances WHERE study_uid = ?", (study_uid,)):
                missing.update(dict.fromkeys(json.loads(row["missing"])))
                documents = documents or row["sop_class_uid"] in REPORT_CLASSES
            if not documents:  # the protocol and conclusion (an SR or a PDF) belong to the package
                missing[REPORT] = None
            self._event(
                db,
                "TransferStarted",
                {
                    "transfer_id": study["transfer_id"],
                    "StudyInstanceUID": study_uid,
                    "attempt": attempt,
                    "missing": list(missing),
                },
            )
            rows = db.execute(
                "SELECT * FROM instances WHERE study_uid = ? AND transfer_id = ? AND committed = 0"
                " ORDER BY series_uid, received_at, sop_uid",
                (study_uid, study["transfer_id"]),
            ).fetchall()
            return self._entry(db, study_uid), [self._instance(row) for row in rows]

    def instance_sent(self, sop_instance_uid: str) -> None:
        """CAMI stored this instance (C-STORE success, a STOW part): the resume point. Only the
        version that is part of the study's current transfer counts (not one replaced meanwhile)."""
        with self._transaction() as db:
            db.execute(
                "UPDATE instances SET sent = 1 WHERE sop_uid = ? AND transfer_id = (SELECT transfer_id FROM studies"
                " WHERE studies.study_uid = instances.study_uid AND state = ?)",
                (sop_instance_uid, StudyState.SENDING),
            )

    def committed(self, study_uid: str, sop_instance_uids: Iterable[str], *, duration_ms: int) -> StudyEntry:
        """CAMI committed these instances. When every instance of the transfer is committed:
        TransferCompleted, and the study is ``delivered`` (or queued again for objects that
        arrived during the transfer). Otherwise it stays ``sending`` (the caller reports the failure)."""
        sops = list(sop_instance_uids)
        with self._transaction() as db:
            study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if study is None:
                raise KeyError(study_uid)
            transfer_id = study["transfer_id"]
            db.executemany(
                "UPDATE instances SET committed = 1, sent = 1 WHERE sop_uid = ? AND study_uid = ? AND transfer_id = ?",
                [(sop, study_uid, transfer_id) for sop in sops],
            )
            left = db.execute(
                "SELECT count(*) FROM instances WHERE study_uid = ? AND transfer_id = ? AND committed = 0",
                (study_uid, transfer_id),
            ).fetchone()[0]
            if left or study["state"] != StudyState.SENDING:
                return self._entry(db, study_uid)
            done = db.execute(
                "SELECT count(*) AS n, coalesce(sum(size), 0) AS bytes FROM instances"
                " WHERE study_uid = ? AND transfer_id = ?",
                (study_uid, transfer_id),
            ).fetchone()
            now = self._now()
            self._event(
                db,
                "TransferCompleted",
                {
                    "transfer_id": transfer_id,
                    "StudyInstanceUID": study_uid,
                    "attempt": int(study["attempt"]),
                    "instances_sent": int(done["n"]),
                    "bytes_sent": int(done["bytes"]),
                    "duration_ms": int(duration_ms),
                },
            )
            db.execute(
                "UPDATE studies SET state = ?, delivered_at = ?, last_error = NULL WHERE study_uid = ?",
                (StudyState.DELIVERED, _ts(now), study_uid),
            )
            self._settle(db, study_uid)  # objects that arrived meanwhile: a new transfer
            return self._entry(db, study_uid)

    def failed(
        self,
        study_uid: str,
        error: str,
        *,
        will_retry: bool,
        retry_at: datetime | None,
        resend: Iterable[str] = (),
    ) -> StudyEntry:
        """The attempt failed: ``retry`` at ``retry_at`` (now when None) or ``held``; TransferFailed.
        What CAMI did not commit stays to send; ``resend`` names instances to send again although
        CAMI stored them (e.g. a hash mismatch)."""
        resend = list(resend)
        with self._transaction() as db:
            study = db.execute("SELECT * FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
            if study is None:
                raise KeyError(study_uid)
            if study["transfer_id"] is None:
                raise ValueError(f"study {study_uid} has no transfer to fail")
            db.executemany(
                "UPDATE instances SET sent = 0, committed = 0 WHERE sop_uid = ? AND study_uid = ?",
                [(sop, study_uid) for sop in resend],
            )
            if will_retry:
                moment = retry_at or self._now()
                db.execute(
                    "UPDATE studies SET state = ?, next_attempt_at = ?, last_error = ?, held_reason = NULL"
                    " WHERE study_uid = ?",
                    (StudyState.RETRY, _ts(moment), error, study_uid),
                )
                self._failed_event(db, study_uid, error, will_retry=True, retry_at=moment)
            else:
                self._hold(db, study_uid, error, by_problem=False)
            return self._entry(db, study_uid)

    # -- reading -----------------------------------------------------------------------------------
    def _held(self, sop_uid: str) -> HeldInstance | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
        return None if row is None else self._instance(row)

    def _instance(self, row: sqlite3.Row) -> HeldInstance:
        return HeldInstance(
            sop_instance_uid=row["sop_uid"],
            sop_class_uid=row["sop_class_uid"],
            study_instance_uid=row["study_uid"],
            series_instance_uid=row["series_uid"],
            transfer_syntax_uid=row["transfer_syntax"],
            path=self.data_dir / row["path"],
            size=int(row["size"]),
            sha256=row["sha256"],
            sent=bool(row["sent"]),
            committed=bool(row["committed"]),
        )

    def _entry(self, db: sqlite3.Connection, study_uid: str) -> StudyEntry:
        row = db.execute(
            "SELECT s.*, (SELECT count(*) FROM instances i WHERE i.study_uid = s.study_uid) AS n,"
            " (SELECT coalesce(sum(size), 0) FROM instances i WHERE i.study_uid = s.study_uid) AS bytes"
            " FROM studies s WHERE s.study_uid = ?",
            (study_uid,),
        ).fetchone()
        if row is None:
            raise KeyError(study_uid)
        return self._study(row)

    @staticmethod
    def _study(row: sqlite3.Row) -> StudyEntry:
        return StudyEntry(
            study_instance_uid=row["study_uid"],
            patient_id=row["patient_id"],
            accession=row["accession"],
            state=StudyState(row["state"]),
            priority=Priority(row["priority"]),
            pathology=bool(row["pathology"]),
            full_import=bool(row["full_import"]),
            request_id=row["request_id"],
            transfer_id=row["transfer_id"],
            attempt=int(row["attempt"]),
            next_attempt_at=_dt(row["next_attempt_at"]),
            held_reason=row["held_reason"],
            last_error=row["last_error"],
            instances=int(row["n"]),
            bytes=int(row["bytes"]),
            queued_at=_dt(row["queued_at"]),
            delivered_at=_dt(row["delivered_at"]),
        )

    def study(self, study_uid: str) -> StudyEntry:
        """One study (KeyError when the agent does not hold it)."""
        with self._lock:
            return self._entry(self._db, study_uid)

    def instances(self, study_uid: str) -> list[HeldInstance]:
        """Every instance the agent holds of a study."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM instances WHERE study_uid = ? ORDER BY series_uid, received_at, sop_uid", (study_uid,)
            ).fetchall()
        return [self._instance(row) for row in rows]

    def missing(self, study_uid: str) -> list[str]:
        """Regional attributes absent from the study's package (reported, not blocking)."""
        with self._lock:
            rows = self._db.execute("SELECT missing FROM instances WHERE study_uid = ?", (study_uid,)).fetchall()
        names: dict[str, None] = {}
        for row in rows:
            names.update(dict.fromkeys(json.loads(row["missing"])))
        return list(names)

    def studies(self, states: Iterable[str] | None = None) -> list[StudyEntry]:
        wanted = None if states is None else [str(StudyState(state)) for state in states]
        query = (
            "SELECT s.*, (SELECT count(*) FROM instances i WHERE i.study_uid = s.study_uid) AS n,"
            " (SELECT coalesce(sum(size), 0) FROM instances i WHERE i.study_uid = s.study_uid) AS bytes"
            " FROM studies s"
        )
        params: list[str] = []
        if wanted is not None:
            if not wanted:
                return []
            query += f" WHERE s.state IN ({', '.join('?' for _ in wanted)})"
            params = wanted
        query += " ORDER BY s.received_at, s.study_uid"
        with self._lock:
            rows = self._db.execute(query, params).fetchall()
        return [self._study(row) for row in rows]

    def status(self) -> dict[str, Any]:
        """The figures ``cami agent status`` and the heartbeat show (timestamps aware datetimes):
        ``by_state`` (studies per state), ``queue_depth`` (studies waiting to go: queued, retry,
        sending), ``bytes_waiting`` (their bytes still to deliver), ``oldest_waiting``,
        ``emergency_waiting``, ``in_flight``, ``last_delivery_at``, ``held`` and ``retrying`` (with
        their reasons), ``events_pending`` (outbox)."""
        waiting = [str(state) for state in WAITING]
        marks = ", ".join("?" for _ in waiting)
        with self._lock:
            db = self._db
            by_state = {str(state): 0 for state in StudyState}
            for row in db.execute("SELECT state, count(*) AS n FROM studies GROUP BY state"):
                by_state[row["state"]] = int(row["n"])
            queue = db.execute(
                f"SELECT count(*) AS n, min(queued_at) AS oldest, sum(priority = ?) AS urgent FROM studies"
                f" WHERE state IN ({marks})",
                [Priority.EMERGENCY, *waiting],
            ).fetchone()
            queue_bytes = db.execute(
                f"SELECT coalesce(sum(i.size), 0) FROM instances i JOIN studies s ON s.study_uid = i.study_uid"
                f" WHERE s.state IN ({marks}) AND i.committed = 0 AND i.problem IS NULL",
                waiting,
            ).fetchone()[0]
            last = db.execute("SELECT max(delivered_at) FROM studies").fetchone()[0]
            held = [
                {"StudyInstanceUID": row["study_uid"], "reason": row["held_reason"]}
                for row in db.execute(
                    "SELECT study_uid, held_reason FROM studies WHERE state = ? ORDER BY study_uid", (StudyState.HELD,)
                )
            ]
            retrying = [
                {
                    "StudyInstanceUID": row["study_uid"],
                    "error": row["last_error"],
                    "attempt": int(row["attempt"]),
                    "next_attempt_at": _dt(row["next_attempt_at"]),
                }
                for row in db.execute(
                    "SELECT * FROM studies WHERE state = ? ORDER BY next_attempt_at", (StudyState.RETRY,)
                )
            ]
            events_pending = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        return {
            "by_state": by_state,
            "queue_depth": int(queue["n"]),
            "bytes_waiting": int(queue_bytes),
            "oldest_waiting": _dt(queue["oldest"]),
            "emergency_waiting": int(queue["urgent"] or 0),
            "in_flight": by_state[StudyState.SENDING],
            "last_delivery_at": _dt(last),
            "held": held,
            "retrying": retrying,
            "events_pending": int(events_pending),
        }

    def heartbeat_payload(
        self,
        agent_id: str,
        *,
        host: str | None = None,
        version: str | None = None,
        link_kbps: float | None = None,
        link_state: str | None = None,
    ) -> dict[str, Any]:
        """An AgentHeartbeat payload from the queue's figures (for :meth:`add_event`)."""
        figures = self.status()
        return {
            "agent_id": agent_id,
            "host": host,
            "agent_version": version,
            "queue_depth": figures["queue_depth"],
            "queue_bytes": figures["bytes_waiting"],
            "in_flight": figures["in_flight"],
            "link_kbps": link_kbps,
            "last_success_at": figures["last_delivery_at"],
            "oldest_waiting_at": figures["oldest_waiting"],
            "link_state": link_state,
            "held": len(figures["held"]),
            "emergency_waiting": figures["emergency_waiting"],
        }

    # -- outbox ------------------------------------------------------------------------------------
    def pending_events(self, limit: int = 100) -> list[OutboxEvent]:
        """Events not yet accepted by CAMI, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM outbox ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [
            OutboxEvent(
                seq=int(row["seq"]),
                event_id=row["event_id"],
                type=row["type"],
                occurred_at=datetime.fromisoformat(row["occurred_at"]),
                payload=_payload_from_json(row["payload"]),
            )
            for row in rows
        ]

    def events_delivered(self, up_to_seq: int) -> None:
        """CAMI accepted every event up to ``up_to_seq`` (inclusive)."""
        with self._transaction() as db:
            db.execute("DELETE FROM outbox WHERE seq <= ?", (up_to_seq,))

    def add_event(self, type: str, payload: dict[str, Any]) -> None:
        """An event no state change carries (AgentHeartbeat...), queued behind the others."""
        with self._transaction() as db:
            self._event(db, type, payload)

    # -- the poller's memory and the request cursor -------------------------------------------------
    def seen(self, study_uid: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT fingerprint FROM seen WHERE study_uid = ?", (study_uid,)).fetchone()
        return None if row is None else str(row["fingerprint"])

    def remember_seen(self, study_uid: str, fingerprint: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO seen (study_uid, fingerprint, seen_at) VALUES (?, ?, ?) ON CONFLICT (study_uid)"
                " DO UPDATE SET fingerprint = excluded.fingerprint, seen_at = excluded.seen_at",
                (study_uid, fingerprint, _ts(self._now())),
            )

    def request_cursor(self) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM settings WHERE key = 'request_cursor'").fetchone()
        return None if row is None else str(row["value"])

    def set_request_cursor(self, cursor: str) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('request_cursor', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (cursor,),
            )


def _an_intake(queue: TransferQueue) -> Intake:
    """The sources' face of the queue (checked by mypy, never called)."""
    return queue
