"""The query store: the rows DICOM queries read, in a row store behind one interface: SQLite
embedded (one host), or PostgreSQL, which nodes and workers on several hosts share.

Tables (``qm_`` prefix) and why they look the way they do:

``qm_versions``
    Every version of every instance, keyed by the archive index's natural key (study, series,
    SOP UID, version) and replaced only by a row of the same or a later log position: redelivery
    and a rebuild give the same rows. ``newest`` marks the newest version of each SOP UID, the
    one every query lists, by the archive index's own rule (``views.NEWEST_VERSION``; here
    ``received_at`` is the arrival in microseconds since the epoch). Clustered by the key
    (WITHOUT ROWID): "the instances of a series" is one range scan, and the rows are stored once.
    Indexed by SOP UID (the newest-version rule looks across studies).
``qm_series``
    One row per series of the newest versions: its attributes, count and size.
``qm_studies``
    One row per study: what a study-level query matches and returns, already shown under the
    surviving patient ID with the latest demographics, the names case-folded for matching.
    Indexes, one per query shape: (study date, time, UID) descending for "newest studies" and
    date ranges, the patient, the case-folded names (prefix matches are range scans),
    accession number.
``qm_study_keys``
    (kind, value, study) for the many-valued study attributes: modalities in study, sending
    organisations, recorded patient IDs (a merge finds a prior ID's studies here).
``qm_reports``, ``qm_demographics``, ``qm_merges``
    Report stages (for the report status), PatientUpdated values per attribute, merges per prior
    ID: the same rows and keys as the archive index tables.

:meth:`RowStore.apply` is the sink's one transaction: upsert the fold's rows, recompute the
newest version of each SOP UID they name, then recompute every touched study (and its series and
keys) from its newest instances with the pure :func:`projections.query_model.fold.summarise_study`.
A study is touched by its instances (old and new place of a moved instance), its reports, a
PatientUpdated of the patient it is shown under, and a merge of any patient ID it was recorded
under (or merged into such an ID). The SQL is plain: named ``:parameters``, upserts with
``ON CONFLICT``, window functions, NULLs ordered explicitly; what differs between engines
(connections, the parameter style, three details of the DDL) is left to the subclass.

Engines (:func:`open_query_store`):

``sqlite:///path/query.db``: :class:`SqliteQueryStore`
    One file (WAL): every ``cami serve`` and ``cami workers`` that uses it runs on its host.
``postgresql://user:password@host:5432/database`` (``postgres://``; libpq's options such as
``?sslmode=verify-full`` pass through; ``?schema=`` names the schema, default ``cami``): :class:`PostgresQueryStore`
    One schema of a database that nodes and workers on any host share
    (:mod:`projections.query_model.postgres`). Each ``apply`` is one transaction under the store's
    advisory lock, so writers of several processes and hosts take turns and none loses another's
    update; readers (a small pool per process) see the old rows or the new. A rebuild while
    serving fills a second schema (``<schema>_rebuild``) and swaps its tables in with one
    transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from projections import dead_letters
from projections.archive_index.fold import INSTANCES, MERGES, PATIENTS_TABLE, REPORTS_TABLE
from projections.archive_index.views import MAX_MERGE_HOPS, NEWEST_VERSION
from projections.query_model.fold import Patient, fold_name, summarise_series, summarise_study
from projections.warehouse.base import Warehouse
from streams.processing import DeadLetter, Row

if TYPE_CHECKING:
    from projections.query_model.postgres import PostgresUrl

#: instance columns, in order, of ``qm_versions`` (beside ``newest``, which the store maintains)
INSTANCE_COLUMNS = (
    "study_uid", "series_uid", "sop_uid", "version", "log_version", "received_at", "patient_id", "issuer",
    "patient_name", "birth_date", "sex", "study_date", "study_time", "study_id", "study_description",
    "accession_number", "referring_physician", "series_number", "series_description", "modality", "body_part",
    "instance_number", "sop_class_uid", "transfer_syntax_uid", "image_rows", "image_columns", "frames", "size",
    "organisation", "pathology", "emergency", "missing",
)  # fmt: skip
_INTEGER_COLUMNS = frozenset(
    ("version", "log_version", "received_at", "series_number", "instance_number", "image_rows", "image_columns",
     "frames", "size", "pathology", "emergency")
)  # fmt: skip
#: integers that may pass 32 bits (log positions, microseconds, bytes, values from the objects): BIGINT,
#: which SQLite reads as INTEGER; counts and flags stay INTEGER (PostgreSQL sums those as BIGINT)
_BIG_COLUMNS = _INTEGER_COLUMNS - {"pathology", "emergency"}
_NOT_NULL = frozenset(
    ("study_uid", "series_uid", "sop_uid", "version", "log_version", "received_at", "patient_id", "modality",
     "body_part", "sop_class_uid", "transfer_syntax_uid", "size", "organisation", "pathology", "emergency", "missing")
)  # fmt: skip


def _type(column: str) -> str:
    if column in _BIG_COLUMNS:
        return "BIGINT"
    return "INTEGER" if column in _INTEGER_COLUMNS else "TEXT"


def _versions_table() -> str:
    columns = ", ".join(f"{c} {_type(c)}{' NOT NULL' if c in _NOT_NULL else ''}" for c in INSTANCE_COLUMNS)
    return (
        f"CREATE TABLE IF NOT EXISTS qm_versions ({columns}, newest INTEGER NOT NULL DEFAULT 0,"
        " PRIMARY KEY (study_uid, series_uid, sop_uid, version)) WITHOUT ROWID"
    )


SERIES_COLUMNS = (
    "study_uid", "series_uid", "series_number", "series_description", "modality", "body_part", "instance_count",
    "size", "organisations", "missing", "last_received_us",
)  # fmt: skip
STUDY_COLUMNS = (
    "study_uid", "patient_id", "recorded_patient_id", "patient_ids", "issuer", "patient_name", "name_folded",
    "image_name_folded", "birth_date", "sex", "study_date", "study_time", "time_key", "study_id",
    "study_description", "accession_number", "referring_physician", "referring_folded", "modalities",
    "series_count", "instance_count", "size", "organisations", "pathology", "emergency", "first_received_us",
    "last_received_us", "newest_received_us", "newest_log_version", "report_status", "missing",
)  # fmt: skip

DDL = (
    _versions_table(),
    "CREATE INDEX IF NOT EXISTS qm_versions_sop ON qm_versions (sop_uid)",
    """CREATE TABLE IF NOT EXISTS qm_series (study_uid TEXT NOT NULL, series_uid TEXT NOT NULL,
        series_number BIGINT, series_description TEXT, modality TEXT NOT NULL, body_part TEXT NOT NULL,
        instance_count INTEGER NOT NULL, size BIGINT NOT NULL, organisations TEXT NOT NULL, missing TEXT NOT NULL,
        last_received_us BIGINT NOT NULL, PRIMARY KEY (study_uid, series_uid))""",
    """CREATE TABLE IF NOT EXISTS qm_studies (study_uid TEXT NOT NULL PRIMARY KEY, patient_id TEXT NOT NULL,
        recorded_patient_id TEXT NOT NULL, patient_ids TEXT NOT NULL, issuer TEXT, patient_name TEXT,
        name_folded TEXT, image_name_folded TEXT, birth_date TEXT, sex TEXT, study_date TEXT, study_time TEXT,
        time_key TEXT NOT NULL, study_id TEXT, study_description TEXT, accession_number TEXT,
        referring_physician TEXT, referring_folded TEXT, modalities TEXT NOT NULL, series_count INTEGER NOT NULL,
        instance_count INTEGER NOT NULL, size BIGINT NOT NULL, organisations TEXT NOT NULL,
        pathology INTEGER NOT NULL, emergency INTEGER NOT NULL, first_received_us BIGINT NOT NULL,
        last_received_us BIGINT NOT NULL, newest_received_us BIGINT NOT NULL, newest_log_version BIGINT NOT NULL,
        report_status TEXT NOT NULL, missing TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS qm_studies_newest ON qm_studies (study_date DESC, study_time DESC, study_uid)",
    "CREATE INDEX IF NOT EXISTS qm_studies_patient ON qm_studies (patient_id, study_date)",
    "CREATE INDEX IF NOT EXISTS qm_studies_name ON qm_studies (name_folded, study_date)",
    "CREATE INDEX IF NOT EXISTS qm_studies_image_name ON qm_studies (image_name_folded)",
    "CREATE INDEX IF NOT EXISTS qm_studies_accession ON qm_studies (accession_number)",
    """CREATE TABLE IF NOT EXISTS qm_study_keys (kind TEXT NOT NULL, value TEXT NOT NULL, study_uid TEXT NOT NULL,
        PRIMARY KEY (kind, value, study_uid))""",
    "CREATE INDEX IF NOT EXISTS qm_study_keys_study ON qm_study_keys (study_uid)",
    """CREATE TABLE IF NOT EXISTS qm_reports (study_uid TEXT NOT NULL, report_id TEXT NOT NULL, stage TEXT NOT NULL,
        seq BIGINT NOT NULL, log_version BIGINT NOT NULL, PRIMARY KEY (study_uid, report_id, stage, seq))""",
    """CREATE TABLE IF NOT EXISTS qm_demographics (patient_id TEXT NOT NULL, attribute TEXT NOT NULL,
        value TEXT NOT NULL, value_folded TEXT NOT NULL, log_version BIGINT NOT NULL,
        PRIMARY KEY (patient_id, attribute))""",
    """CREATE TABLE IF NOT EXISTS qm_merges (prior_patient_id TEXT NOT NULL PRIMARY KEY, patient_id TEXT NOT NULL,
        log_version BIGINT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS qm_merges_surviving ON qm_merges (patient_id)",
)
TABLES = (
    "qm_versions", "qm_series", "qm_studies", "qm_study_keys", "qm_reports", "qm_demographics",
    "qm_merges",
)  # fmt: skip

#: study_keys kinds
MODALITY, ORGANISATION, PATIENT = "modality", "organisation", "patient"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def moment(value: int) -> datetime:
    """Microseconds since the epoch -> an aware UTC datetime (as the warehouse returns them)."""
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def _upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """Insert, or replace the row of the same key unless it comes from a later log position (so
    an older redelivery never undoes a newer fact)."""
    names = ", ".join(columns)
    values = ", ".join(f":{c}" for c in columns)
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (
        f"INSERT INTO {table} ({names}) VALUES ({values}) ON CONFLICT ({', '.join(key)}) DO UPDATE SET {updates}"
        f" WHERE excluded.log_version >= {table}.log_version"
    )


_UPSERT_VERSION = _upsert("qm_versions", INSTANCE_COLUMNS, ("study_uid", "series_uid", "sop_uid", "version"))
_UPSERT_REPORT = _upsert(
    "qm_reports", ("study_uid", "report_id", "stage", "seq", "log_version"), ("study_uid", "report_id", "stage", "seq")
)
_UPSERT_DEMOGRAPHIC = _upsert(
    "qm_demographics", ("patient_id", "attribute", "value", "value_folded", "log_version"), ("patient_id", "attribute")
)
_UPSERT_MERGE = _upsert("qm_merges", ("prior_patient_id", "patient_id", "log_version"), ("prior_patient_id",))


def _version_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """An ``archive_instances`` row of the fold -> a ``qm_versions`` row."""
    study_date: date | None = values["study_date"]
    return {
        "study_uid": values["study_uid"],
        "series_uid": values["series_uid"],
        "sop_uid": values["sop_uid"],
        "version": values["version"],
        "log_version": values["log_version"],
        "received_at": micros(values["received_at"]),
        "patient_id": values["patient_id"],
        "issuer": values["issuer_of_patient_id"],
        "patient_name": values["patient_name"],
        "birth_date": values["patient_birth_date"],
        "sex": values["patient_sex"],
        "study_date": study_date.isoformat() if study_date is not None else None,
        "study_time": values["study_time"],
        "study_id": values["study_id"],
        "study_description": values["study_description"],
        "accession_number": values["accession_number"],
        "referring_physician": values["referring_physician"],
        "series_number": values["series_number"],
        "series_description": values["series_description"],
        "modality": values["modality"],
        "body_part": values["body_part"],
        "instance_number": values["instance_number"],
        "sop_class_uid": values["sop_class_uid"],
        "transfer_syntax_uid": values["transfer_syntax_uid"],
        "image_rows": values["rows"],
        "image_columns": values["columns"],
        "frames": values["frames"],
        "size": values["blob_size"],
        "organisation": values["organisation"],
        "pathology": int(bool(values["pathology"])),
        "emergency": int(bool(values["emergency"])),
        "missing": json.dumps(sorted(values["missing"])),
    }


class QueryStore(Protocol):
    """What the query model needs of a row store (one implementation per engine)."""

    #: ``sqlite`` or ``postgresql``
    backend: str

    def apply(self, rows: Sequence[Row]) -> None:
        """Write the fold's rows and recompute what they touch, in one transaction."""

    def select(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT with named ``:parameters``; rows as dicts keyed by column name."""

    def reset(self) -> None:
        """Drop every table and create them empty (a rebuild from offset 0 follows)."""

    def counts(self) -> dict[str, int]:
        """Rows per table."""

    def shadow(self) -> QueryStore:
        """A new, empty store of the same engine beside this one, for a rebuild while this one keeps
        answering (:mod:`projections.rebuild_online`); anything left by an earlier one is dropped."""

    def replace_with(self, rebuilt: QueryStore) -> None:
        """Make this store's tables hold exactly what ``rebuilt`` (one of its shadows) holds,
        in one transaction: readers see the old rows until it commits, then the new."""

    def discard(self) -> None:
        """Close this store and delete what it holds (a shadow once swapped in, or abandoned)."""

    def close(self) -> None: ...


class RowStore:
    """The query model's maintenance and reads over a DB-API connection (named parameters); a
    subclass supplies the connections (:meth:`_writer`, and :meth:`_reader` or a :meth:`select` of
    its own) and, where its engine needs other words, the DDL (:meth:`_ddl`)."""

    backend = "?"

    @contextmanager
    def _writer(self) -> Iterator[Any]:  # pragma: no cover - each engine has its own
        raise NotImplementedError
        yield

    def _reader(self) -> Any:  # pragma: no cover - each engine has its own
        raise NotImplementedError

    def _ddl(self) -> Sequence[str]:
        """The statements that create the tables (if missing), in this engine's words."""
        return DDL

    # -- reads ----------------------------------------------------------------------------------
    def select(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return _fetch_dicts(self._reader(), sql, parameters)

    # -- writes ---------------------------------------------------------------------------------
    def create(self) -> None:
        with self._writer() as db:
            for statement in self._ddl():
                db.execute(statement)

    def reset(self) -> None:
        with self._writer() as db:
            self._drop(db)
            for statement in self._ddl():
                db.execute(statement)

    def _drop(self, db: Any) -> None:
        for table in TABLES:
            db.execute(f"DROP TABLE IF EXISTS {table}")

    def counts(self) -> dict[str, int]:
        return {t: int(self.select(f"SELECT count(*) AS n FROM {t}")[0]["n"]) for t in TABLES}

    def apply(self, rows: Sequence[Row]) -> None:
        versions = [_version_row(r.values) for r in rows if r.table == INSTANCES]
        reports = [
            {k: r.values[k] for k in ("study_uid", "report_id", "stage", "seq", "log_version")}
            for r in rows
            if r.table == REPORTS_TABLE
        ]
        demographics = [
            {
                "patient_id": r.values["patient_id"],
                "attribute": r.values["attribute"],
                "value": r.values["value"],
                "value_folded": fold_name(r.values["value"]),
                "log_version": r.values["log_version"],
            }
            for r in rows
            if r.table == PATIENTS_TABLE
        ]
        merges = [
            {k: r.values[k] for k in ("prior_patient_id", "patient_id", "log_version")}
            for r in rows
            if r.table == MERGES
        ]
        if not (versions or reports or demographics or merges):
            return
        with self._writer() as db:
            db.executemany(_UPSERT_VERSION, versions)
            db.executemany(_UPSERT_REPORT, reports)
            db.executemany(_UPSERT_DEMOGRAPHIC, demographics)
            db.executemany(_UPSERT_MERGE, merges)
            studies = {v["study_uid"] for v in versions} | {r["study_uid"] for r in reports}
            studies |= self._newest_versions(db, {v["sop_uid"] for v in versions})
            if merges:
                studies |= self._studies_of_patients(db, _merged_into(db, {m["prior_patient_id"] for m in merges}))
            if demographics:
                updated = sorted({d["patient_id"] for d in demographics})
                studies |= {str(r[0]) for r in _rows_in(db, "SELECT study_uid FROM qm_studies", "patient_id", updated)}
            self._recompute(db, studies)

    def _newest_versions(self, db: Any, sops: set[str]) -> set[str]:
        """Mark the newest version of each of ``sops``; returns the studies that held the ones
        marked before (a moved instance leaves its old study)."""
        if not sops:
            return set()
        wanted = sorted(sops)
        before = {
            str(r[0]) for r in _rows_in(db, "SELECT study_uid FROM qm_versions WHERE newest = 1 AND", "sop_uid", wanted)
        }
        for chunk in _chunks(wanted):
            marks = _marks(chunk)
            db.execute(f"UPDATE qm_versions SET newest = 0 WHERE newest = 1 AND sop_uid IN ({marks})", _named(chunk))
            db.execute(
                f"""UPDATE qm_versions SET newest = 1
                    WHERE (study_uid, series_uid, sop_uid, version) IN (
                        SELECT study_uid, series_uid, sop_uid, version FROM (
                            SELECT study_uid, series_uid, sop_uid, version, ROW_NUMBER() OVER (
                                PARTITION BY sop_uid ORDER BY {NEWEST_VERSION}) AS rank
                            FROM qm_versions WHERE sop_uid IN ({marks})) AS ranked
                        WHERE rank = 1)""",
                _named(chunk),
            )
        return before

    def _studies_of_patients(self, db: Any, ids: set[str]) -> set[str]:
        rows = _rows_in(db, f"SELECT study_uid FROM qm_study_keys WHERE kind = '{PATIENT}' AND", "value", sorted(ids))
        return {str(r[0]) for r in rows}

    def _recompute(self, db: Any, studies: set[str]) -> None:
        """Rebuild the study, series and key rows of ``studies`` from their newest instances."""
        if not studies:
            return
        wanted = sorted(studies)
        columns = ", ".join(INSTANCE_COLUMNS)
        by_study: dict[str, list[dict[str, Any]]] = {}
        for found in _rows_in(db, f"SELECT {columns} FROM qm_versions WHERE newest = 1 AND", "study_uid", wanted):
            values = dict(zip(INSTANCE_COLUMNS, found, strict=True))
            by_study.setdefault(values["study_uid"], []).append(values)
        stages: dict[str, list[str]] = {}
        for study_uid, stage in _rows_in(db, "SELECT study_uid, stage FROM qm_reports", "study_uid", wanted):
            stages.setdefault(str(study_uid), []).append(str(stage))
        for table in ("qm_studies", "qm_series", "qm_study_keys"):
            for chunk in _chunks(wanted):
                db.execute(f"DELETE FROM {table} WHERE study_uid IN ({_marks(chunk)})", _named(chunk))
        newest_patients = {
            max(rows, key=lambda r: (r["received_at"], r["log_version"]))["patient_id"] for rows in by_study.values()
        }
        surviving = resolve_patients(db, newest_patients)
        demographics = _demographics(db, set(surviving.values()))
        study_rows: list[dict[str, Any]] = []
        series_rows: list[dict[str, Any]] = []
        keys: list[dict[str, str]] = []
        for study_uid, rows in by_study.items():
            recorded = max(rows, key=lambda r: (r["received_at"], r["log_version"]))["patient_id"]
            patient_id = surviving[recorded]
            study = summarise_study(
                rows, stages.get(study_uid, []), Patient(patient_id, demographics.get(patient_id, {}))
            )
            study_rows.append(study)
            by_series: dict[str, list[dict[str, Any]]] = {}
            for row in rows:
                by_series.setdefault(row["series_uid"], []).append(row)
            series_rows.extend(summarise_series(series) for series in by_series.values())
            for kind, column in ((MODALITY, "modalities"), (ORGANISATION, "organisations"), (PATIENT, "patient_ids")):
                keys.extend({"kind": kind, "value": v, "study_uid": study_uid} for v in json.loads(study[column]))
        db.executemany(_insert("qm_studies", STUDY_COLUMNS), study_rows)
        db.executemany(_insert("qm_series", SERIES_COLUMNS), series_rows)
        db.executemany(_insert("qm_study_keys", ("kind", "value", "study_uid")), keys)


def _fetch_dicts(db: Any, sql: str, parameters: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    cursor = db.execute(sql, dict(parameters or {}))
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


# -- patients: merges and demographics -----------------------------------------------------------------
def resolve_patients(db: Any, ids: Iterable[str]) -> dict[str, str]:
    """Each ID -> the surviving ID at the end of its merge chain (itself when never merged); a
    cycle stops where it closes, chains longer than ``MAX_MERGE_HOPS`` are not followed further."""
    resolved: dict[str, str] = {}
    for patient_id in ids:
        current, seen = patient_id, {patient_id}
        for _ in range(MAX_MERGE_HOPS):
            row = db.execute(
                "SELECT patient_id FROM qm_merges WHERE prior_patient_id = :id", {"id": current}
            ).fetchone()
            if row is None or row[0] in seen:
                break
            current = str(row[0])
            seen.add(current)
        resolved[patient_id] = current
    return resolved


def _merged_into(db: Any, ids: set[str]) -> set[str]:
    """``ids`` and every ID merged into one of them, directly or through others."""
    group, frontier = set(ids), set(ids)
    for _ in range(MAX_MERGE_HOPS):
        found = {
            str(r[0]) for r in _rows_in(db, "SELECT prior_patient_id FROM qm_merges", "patient_id", sorted(frontier))
        }
        frontier = found - group
        if not frontier:
            break
        group |= frontier
    return group


def _demographics(db: Any, ids: set[str]) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for patient_id, attribute, value in _rows_in(
        db, "SELECT patient_id, attribute, value FROM qm_demographics", "patient_id", sorted(ids)
    ):
        found.setdefault(str(patient_id), {})[str(attribute)] = str(value)
    return found


# -- SQL helpers ------------------------------------------------------------------------------------------
_CHUNK = 500


def _chunks(values: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def _marks(values: Sequence[str]) -> str:
    return ", ".join(f":k{i}" for i in range(len(values)))


def _named(values: Sequence[str]) -> dict[str, str]:
    return {f"k{i}": v for i, v in enumerate(values)}


def _rows_in(db: Any, select: str, column: str, values: Sequence[str]) -> list[tuple[Any, ...]]:
    """``select`` (ending in FROM ... or a WHERE ... AND) restricted to ``column IN values``."""
    joiner = " " if select.rstrip().upper().endswith("AND") else " WHERE "
    found: list[tuple[Any, ...]] = []
    for chunk in _chunks(values):
        found.extend(db.execute(f"{select}{joiner}{column} IN ({_marks(chunk)})", _named(chunk)).fetchall())
    return found


def _insert(table: str, columns: Sequence[str]) -> str:
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(f':{c}' for c in columns)})"


# -- SQLite ---------------------------------------------------------------------------------------------
class SqliteQueryStore(RowStore):
    """The query store in one SQLite file (WAL): one writer connection (the projection's sink),
    one reader connection per thread, so queries never wait for a write to commit.

    ``synchronous=NORMAL``: the store is a read model, rebuilt from the log if ever lost, and the
    projection commits its log position only after this transaction did (a crash re-applies).
    ``case_sensitive_like``: DICOM matching is case-sensitive except for person names, which are
    compared in their case-folded columns."""

    backend = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._write = self._connect()
        self.create()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA case_sensitive_like=ON")
        with self._connections_lock:
            self._connections.append(db)
        return db

    @contextmanager
    def _writer(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            db = self._write
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _reader(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._connect()
            self._local.db = db
        return db

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()

    # -- rebuild while serving ----------------------------------------------------------------------
    def shadow(self) -> SqliteQueryStore:
        path = self.path.with_name(f"{self.path.stem}.rebuild{self.path.suffix}")
        for file in _sqlite_files(path):  # a shadow left by an interrupted rebuild
            file.unlink(missing_ok=True)
        return SqliteQueryStore(path)

    def replace_with(self, rebuilt: QueryStore) -> None:
        """The rebuilt rows are copied in, not the file renamed: this store's readers (threads of
        this process, other processes) keep their connections, and a rename beside WAL files
        could pair the new file with the old one's log. Every table is emptied and refilled in one
        write transaction; in WAL mode readers go on seeing the old rows until it commits."""
        if not isinstance(rebuilt, SqliteQueryStore):
            raise TypeError(f"a SQLite query store is replaced from another one, not {type(rebuilt).__name__}")
        with rebuilt._write_lock:
            rebuilt._write.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the main file
        with self._write_lock:
            db = self._write
            db.execute("ATTACH DATABASE ? AS rebuilt", (str(rebuilt.path),))
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    for table in TABLES:
                        columns = ", ".join(
                            str(row[1]) for row in db.execute(f"PRAGMA rebuilt.table_info({table})").fetchall()
                        )
                        db.execute(f"DELETE FROM main.{table}")
                        db.execute(f"INSERT INTO main.{table} ({columns}) SELECT {columns} FROM rebuilt.{table}")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            finally:
                db.execute("DETACH DATABASE rebuilt")

    def discard(self) -> None:
        self.close()
        for file in _sqlite_files(self.path):
            file.unlink(missing_ok=True)


def _sqlite_files(path: Path) -> list[Path]:
    """The database file and the files SQLite keeps beside it."""
    return [path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))]


# -- PostgreSQL -----------------------------------------------------------------------------------------
class PostgresQueryStore(RowStore):
    """The query store in one schema of a PostgreSQL database, shared by nodes and workers on any
    host. :mod:`projections.query_model.postgres` holds the engine's side (loaded only here): the
    URL, the parameter style, the DDL's words, the connections and the errors.

    Writes: one transaction per :meth:`apply`, under the store's advisory lock (writers of every
    process take turns: :meth:`~projections.query_model.postgres.PostgresEngine.writing` says
    why). Reads: a small pool of autocommit connections, so the threads answering queries never
    wait for a write. A rebuild while serving fills ``<schema>_rebuild``; :meth:`replace_with`
    moves its tables in, in one transaction."""

    backend = "postgresql"

    def __init__(self, url: str | PostgresUrl) -> None:
        from projections.query_model import postgres

        self.url = url if isinstance(url, postgres.PostgresUrl) else postgres.parse_url(url)
        self._engine = postgres.PostgresEngine(self.url)
        self.create()

    @property
    def schema(self) -> str:
        return self.url.schema

    @contextmanager
    def _writer(self) -> Iterator[Any]:
        from psycopg.errors import InsufficientPrivilege

        from projections.query_model import postgres

        try:
            with self._engine.writing() as db:
                yield db
        except InsufficientPrivilege as exc:
            raise postgres.privilege_error(exc, self.url) from exc

    def _ddl(self) -> Sequence[str]:
        from projections.query_model.postgres import postgres_ddl, quoted

        return (f"CREATE SCHEMA IF NOT EXISTS {quoted(self.schema)}", *(postgres_ddl(s) for s in DDL))

    def select(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        return self._engine.read(lambda db: _fetch_dicts(db, sql, parameters))

    def _drop(self, db: Any) -> None:
        self._engine.lock_tables(db, TABLES)  # from the readers first: see lock_tables
        super()._drop(db)

    def close(self) -> None:
        self._engine.close()

    # -- rebuild while serving ----------------------------------------------------------------------
    def shadow(self) -> PostgresQueryStore:
        from projections.query_model.postgres import SHADOW_SUFFIX, quoted

        url = self.url.with_schema(f"{self.schema}{SHADOW_SUFFIX}")
        with self._writer() as db:  # a shadow left by an interrupted rebuild
            db.execute(f"DROP SCHEMA IF EXISTS {quoted(url.schema)} CASCADE")
        return PostgresQueryStore(url)

    def replace_with(self, rebuilt: QueryStore) -> None:
        """The live tables are dropped and the shadow's moved into this schema (``ALTER TABLE
        ... SET SCHEMA``, indexes and keys with them), in one transaction under this store's
        advisory lock (no ``apply`` is half done) and after every live table was taken from the
        readers (:meth:`~projections.query_model.postgres.PostgresEngine.lock_tables`): a query
        that runs meanwhile waits, then reads the new tables; one that began before ends on the old.
        Nothing is copied, however large the store; the shadow's schema is left empty."""
        from projections.query_model.postgres import quoted

        if not isinstance(rebuilt, PostgresQueryStore):
            raise TypeError(f"a PostgreSQL query store is replaced from another one, not {type(rebuilt).__name__}")
        if rebuilt.url.conninfo != self.url.conninfo or rebuilt.schema == self.schema:
            raise ValueError("a PostgreSQL query store is replaced from its shadow: another schema of its database")
        rebuilt.close()
        live, shadow = quoted(self.schema), quoted(rebuilt.schema)
        with self._writer() as db:
            self._engine.lock_tables(db, TABLES)
            for table in TABLES:
                db.execute(f"DROP TABLE IF EXISTS {live}.{table}")
            for table in TABLES:
                db.execute(f"ALTER TABLE {shadow}.{table} SET SCHEMA {live}")

    def discard(self) -> None:
        from projections.query_model.postgres import quoted

        try:
            with self._writer() as db:
                db.execute(f"DROP SCHEMA IF EXISTS {quoted(self.schema)} CASCADE")
        finally:
            self.close()


def open_query_store(url: str) -> QueryStore:
    """``sqlite:///path/query.db`` or ``postgresql://user:password@host:5432/database`` -> the store."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        path = (parts.netloc + parts.path) if parts.netloc else parts.path
        if not path:
            raise ValueError(f"query store URL {url!r} names no file")
        return SqliteQueryStore(Path(path))
    if parts.scheme.lower() in ("postgresql", "postgres"):
        return PostgresQueryStore(url)
    scheme = repr(parts.scheme) if parts.scheme else "missing"  # the URL itself may hold a password
    raise ValueError(
        f"query store URL scheme {scheme}: it must be sqlite:// (a file path) or"
        " postgresql://user:password@host:port/database"
    )


# -- the sink ---------------------------------------------------------------------------------------------
class QueryModelSink:
    """The ``query-model`` projection's sink: rows into the query store (one transaction per
    batch, idempotent by the tables' keys and log versions); dead letters beside every other
    projection's, in the warehouse's ``dead_letters`` table (opened when first needed)."""

    def __init__(self, store: QueryStore, warehouse: Warehouse | None = None) -> None:
        self.store = store
        self.warehouse = warehouse
        if warehouse is not None:
            warehouse.command(dead_letters.DDL)

    def write(self, rows: Sequence[Row]) -> None:
        self.store.apply(rows)

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None:
        if self.warehouse is None:
            raise RuntimeError("the query model's sink has no warehouse to record dead letters in")
        dead_letters.record(self.warehouse, letters)

    def reset(self) -> None:
        self.store.reset()

    def counts(self) -> dict[str, int]:
        return self.store.counts()

    def shadow(self) -> QueryModelSink:
        return QueryModelSink(self.store.shadow(), self.warehouse)

    def swap_in(self, rebuilt: QueryModelSink) -> None:
        self.store.replace_with(rebuilt.store)
        rebuilt.discard()

    def discard(self) -> None:
        self.store.discard()
