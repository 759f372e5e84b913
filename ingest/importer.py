"""Bulk import of folders, zip files and DICOMDIR media (``cami import PATH...``).

Discovery walks the paths without reading file contents (``stat`` only; a zip's central
directory and a DICOMDIR are read because they *are* the listing), so the total for the progress
bar is cheap. Then each candidate is read and, if it is a DICOM Part-10 file, goes through the
same write path as every other channel (:meth:`ingest.pipeline.Ingestor.store_file`): blob
first, then the event, then the outcome is journaled.

What is a candidate
  * every regular file under a folder, recursively (symbolic links to files inside the folder are
    followed, links to folders are not: no loops); a file reached twice (overlapping paths, links)
    is imported once. A symbolic link (to a file or a folder) that leads outside the folder given
    is never followed: it is an error naming the link, so media cannot pull in the importing
    machine's own files;
  * every member of a ``.zip`` file, read in place (also zips found inside folders); a zip inside a
    zip is not opened (skipped as ``nested-zip``). Members whose names are absolute or climb out
    with ``..``, and members that are symbolic links, are refused. Zip bombs are refused before
    anything is inflated, from the sizes the zip declares (reading never yields more than
    declared): a member over the size limit, a member over 1 MiB inflating more than the ratio
    limit, or a zip whose members add up to more than the total limit (see :class:`ImportLimits`);
  * on DICOMDIR media, the files the DICOMDIR references come first (found case-insensitively, as
    CD file systems often change the case); files the DICOMDIR does not list are imported too,
    and a referenced file that is missing from the media is an error. The DICOMDIR itself is a
    media index, not an image: skipped as ``dicomdir``.

Sniffing
  Only Part-10 files (``DICM`` at offset 128) are imported: the archive keeps files exactly as
  received, and a file without the Part-10 header does not say its transfer syntax. Such
  preamble-less data sets (old ACR-NEMA style exports) are recognised and skipped as
  ``no-part10-header`` so the operator can see them; empty and other files are skipped as
  ``empty`` / ``not-dicom``. Skipping is never fatal.

Outcomes (one per candidate): ``stored`` (a new instance or version: one InstanceReceived event),
``duplicate`` (these exact bytes were already held: no event), ``refused`` (the regional rules
said no; an InstanceRejected event records why), ``skipped`` (not imported, with a reason) and
``error`` (could not be read, or the archive could not store it right now). Everything but
``error`` is final and recorded in the journal.

Resuming
  The journal is a SQLite file ``$CAMI_HOME/imports/<run key>.db``; the run key is a hash of the
  resolved input paths. A file's outcome is written only after the pipeline answered, so after an
  interruption (Ctrl-C, ``kill -9``, power loss) re-running the same command skips what is done.
  A file stored but not yet journaled when the process died is simply imported again: identical
  bytes are recognised by the pipeline (``duplicate``, no second event). Errors are not journaled
  and are retried by the next run. A journaled file whose size or modification time (zip member:
  CRC) changed is imported again.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import struct
import threading
import time
import uuid
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ingest.pipeline import Arrival, Ingestor, Outcome
from ingest.statuses import Status
from schemas.events import Actor

#: bytes read to decide whether a file is DICOM: the preamble and the ``DICM`` marker
SNIFF_BYTES = 132
DICOMDIR_NAME = "DICOMDIR"
#: consecutive "archive unavailable" answers after which the import stops (re-run to resume)
MAX_CONSECUTIVE_UNAVAILABLE = 10
UNAVAILABLE = ("storage-unavailable", "log-unavailable")

STORED, DUPLICATE, REFUSED, SKIPPED, ERROR = "stored", "duplicate", "refused", "skipped", "error"
FINAL_OUTCOMES = (STORED, DUPLICATE, REFUSED, SKIPPED)


class ImportFailed(Exception):
    """The import cannot start (bad paths, another import of the same paths running)."""


# -- discovery ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    """One file to import: a file on disk or a member of a zip file."""

    #: identity in the journal: the real path, or ``<real path of the zip>!<member>``
    key: str
    #: as the operator would recognise it (the path as given, ``archive.zip!member`` for members)
    display: str
    size: int
    #: changes when the content may have changed: mtime in ns (files), CRC-32 (zip members)
    stamp: int
    path: Path
    member: str | None = None
    #: skip without reading (``dicomdir``, ``nested-zip``, ``not-a-regular-file``)
    skip: str | None = None
    #: listed in a DICOMDIR
    referenced: bool = False


@dataclass(frozen=True)
class Problem:
    """Something found during discovery that cannot be imported (counted as an error)."""

    display: str
    error: str


@dataclass(frozen=True)
class ImportLimits:
    """How far a file or zip member may inflate: past these a zip is refused as a possible bomb.

    Set by ``CAMI_IMPORT_MAX_FILE`` (bytes of one file or member, default 2 GiB),
    ``CAMI_IMPORT_MAX_RATIO`` (inflated / compressed size of a member over 1 MiB, default 100),
    ``CAMI_IMPORT_MAX_ZIP_TOTAL`` (inflated bytes of all members of one zip, default 64 GiB),
    read with every other setting by :class:`api.config.Settings`."""

    max_file: int = 2 << 30
    max_ratio: float = 100.0
    max_zip_total: int = 64 << 30
    #: members up to this size are not held to the ratio (a small blank image compresses well)
    ratio_floor: int = 1 << 20


def discover(paths: Sequence[Path], limits: ImportLimits | None = None) -> Iterator[Candidate | Problem]:
    """Every candidate under ``paths``, each file once, without reading file contents."""
    limits = limits or ImportLimits()
    seen: set[str] = set()
    for given in paths:
        yield from _discover_path(given, seen, limits)


def _discover_path(given: Path, seen: set[str], limits: ImportLimits) -> Iterator[Candidate | Problem]:
    try:
        st = given.stat()
    except OSError as exc:
        yield Problem(str(given), _os_error(exc))
        return
    if stat.S_ISDIR(st.st_mode):
        yield from _discover_tree(given, seen, limits)
    else:
        yield from _discover_file(given, st, seen, limits)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _link_outside(path: Path, root: str) -> Problem | None:
    """A Problem when ``path`` is a symbolic link whose target lies outside ``root`` (a real path)."""
    if not path.is_symlink():
        return None
    real = os.path.realpath(path)
    if _inside(real, root):
        return None
    return Problem(str(path), f"symbolic link to {real}, outside the imported folder: not followed (refused)")


def _discover_tree(root: Path, seen: set[str], limits: ImportLimits) -> Iterator[Candidate | Problem]:
    problems: list[Problem] = []
    real_root = os.path.realpath(root)

    def on_error(exc: OSError) -> None:
        problems.append(Problem(str(exc.filename or root), _os_error(exc)))

    for folder, dirs, files in os.walk(root, onerror=on_error):
        yield from problems
        problems.clear()
        dirs.sort()
        base = Path(folder)
        # links to folders are never walked; one that leads out of the media is reported
        for name in dirs:
            outside = _link_outside(base / name, real_root)
            if outside is not None:
                yield outside
        names = sorted(files)
        dicomdir = next((n for n in names if n.upper() == DICOMDIR_NAME), None)
        if dicomdir is not None:
            yield from _discover_dicomdir(base / dicomdir, seen, limits, real_root)
        for name in names:
            path = base / name
            outside = _link_outside(path, real_root)
            if outside is not None:
                yield outside
                continue
            try:
                st = path.stat()
            except OSError as exc:
                yield Problem(str(path), _os_error(exc))
                continue
            yield from _discover_file(path, st, seen, limits)
    yield from problems


def _discover_file(
    path: Path, st: os.stat_result, seen: set[str], limits: ImportLimits
) -> Iterator[Candidate | Problem]:
    real = os.path.realpath(path)
    if real in seen:
        return
    seen.add(real)
    if not stat.S_ISREG(st.st_mode):
        yield Candidate(real, str(path), 0, 0, path, skip="not-a-regular-file")
        return
    if path.name.upper() == DICOMDIR_NAME:
        yield Candidate(real, str(path), st.st_size, st.st_mtime_ns, path, skip="dicomdir")
        return
    if path.suffix.lower() == ".zip":
        yield from _discover_zip(path, real, seen, limits)
        return
    if st.st_size > limits.max_file:
        yield Problem(
            str(path), f"{st.st_size} bytes, over the import limit of {limits.max_file} (CAMI_IMPORT_MAX_FILE)"
        )
        return
    yield Candidate(real, str(path), st.st_size, st.st_mtime_ns, path)


def _unsafe_member_name(name: str) -> bool:
    """Absolute, drive-qualified or climbing (``..``) names, and control characters."""
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return True
    return ".." in parts or any(ord(ch) < 0x20 for ch in name)


def _zip_bomb(info: zipfile.ZipInfo, limits: ImportLimits) -> str | None:
    """Why a member would inflate too far (from its declared sizes; reading yields no more)."""
    if info.file_size > limits.max_file:
        return (
            f"inflates to {info.file_size} bytes, over the limit of {limits.max_file} (CAMI_IMPORT_MAX_FILE): "
            "refused as a possible zip bomb"
        )
    ratio = info.file_size / max(info.compress_size, 1)
    if info.file_size > limits.ratio_floor and ratio > limits.max_ratio:
        return (
            f"inflates {ratio:.0f} times ({info.compress_size} -> {info.file_size} bytes), over the limit of "
            f"{limits.max_ratio:g} (CAMI_IMPORT_MAX_RATIO): refused as a possible zip bomb"
        )
    return None


def _discover_zip(path: Path, real: str, seen: set[str], limits: ImportLimits) -> Iterator[Candidate | Problem]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (OSError, zipfile.BadZipFile, ValueError) as exc:
        yield Problem(str(path), f"not a readable zip file: {exc}")
        return
    total = sum(info.file_size for info in members)
    if total > limits.max_zip_total:
        yield Problem(
            str(path),
            f"members inflate to {total} bytes in all, over the limit of {limits.max_zip_total} "
            "(CAMI_IMPORT_MAX_ZIP_TOTAL): refused as a possible zip bomb",
        )
        return
    for info in members:
        if info.is_dir():
            continue
        display = f"{path}!{info.filename}"
        if _unsafe_member_name(info.filename):
            yield Problem(display, "zip member name is absolute or climbs out with '..': refused")
            continue
        if stat.S_ISLNK(info.external_attr >> 16):
            yield Problem(display, "zip member is a symbolic link: refused")
            continue
        bomb = _zip_bomb(info, limits)
        if bomb is not None:
            yield Problem(display, bomb)
            continue
        key = f"{real}!{info.filename}"
        if key in seen:
            continue
        seen.add(key)
        name = info.filename.rsplit("/", 1)[-1]
        skip = None
        if name.lower().endswith(".zip"):
            skip = "nested-zip"
        elif name.upper() == DICOMDIR_NAME:
            skip = "dicomdir"
        yield Candidate(key, display, info.file_size, info.CRC, path, member=info.filename, skip=skip)


def dicomdir_references(dicomdir: Path) -> list[tuple[str, ...]]:
    """The ReferencedFileID of every directory record, as path components (PS3.10 8.5)."""
    from pydicom import dcmread

    ds = dcmread(dicomdir, force=True)
    references: list[tuple[str, ...]] = []
    for record in ds.get("DirectoryRecordSequence", []):
        file_id = record.get("ReferencedFileID")
        if file_id is None:
            continue
        parts = [file_id] if isinstance(file_id, str) else list(file_id)
        components = tuple(str(p).strip() for p in parts if str(p).strip())
        if components and components not in references:
            references.append(components)
    return references


def _discover_dicomdir(
    dicomdir: Path, seen: set[str], limits: ImportLimits, real_root: str
) -> Iterator[Candidate | Problem]:
    try:
        references = dicomdir_references(dicomdir)
    except Exception as exc:  # a damaged index: the walk still finds the files
        yield Problem(str(dicomdir), f"DICOMDIR unreadable, files found by walking only: {exc}")
        return
    root = dicomdir.parent
    for components in references:
        if any(c in ("..", ".") or "/" in c for c in components):
            yield Problem(str(root.joinpath(*components)), "DICOMDIR references a path outside the media")
            continue
        path = resolve_case_insensitive(root, components)
        if path is None:
            yield Problem(str(root.joinpath(*components)), "listed in DICOMDIR but missing on the media")
            continue
        if not _inside(os.path.realpath(path), real_root):
            yield Problem(str(path), "DICOMDIR references a file outside the media (symbolic link): refused")
            continue
        try:
            st = path.stat()
        except OSError as exc:
            yield Problem(str(path), _os_error(exc))
            continue
        for item in _discover_file(path, st, seen, limits):
            if isinstance(item, Candidate) and item.skip is None and item.member is None:
                item = Candidate(item.key, item.display, item.size, item.stamp, item.path, referenced=True)
            yield item


def resolve_case_insensitive(root: Path, components: Sequence[str]) -> Path | None:
    """``root/components...``, matching each component regardless of case when not exact."""
    current = root
    for component in components:
        exact = current / component
        if exact.exists():
            current = exact
            continue
        try:
            match = next((entry for entry in os.listdir(current) if entry.upper() == component.upper()), None)
        except OSError:
            return None
        if match is None:
            return None
        current = current / match
    return current if current.is_file() else None


def _os_error(exc: OSError) -> str:
    return exc.strerror if exc.strerror else str(exc)


# -- sniffing ----------------------------------------------------------------------------------
def sniff(head: bytes) -> str | None:
    """``None`` for a Part-10 DICOM file, else why it is skipped (``head``: its first 132 bytes)."""
    if not head:
        return "empty"
    if len(head) >= SNIFF_BYTES and head[128:132] == b"DICM":
        return None
    if _looks_like_raw_dataset(head):
        return "no-part10-header"
    return "not-dicom"


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A data set without preamble: a little-endian group 0x0002/0x0008 tag, then a sane VR or length."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    if group not in (0x0002, 0x0008) or element > 0x0100:
        return False
    vr = head[4:6]
    if vr.isalpha() and vr.isupper():
        return True
    length: int = struct.unpack("<I", head[4:8])[0]
    return length < 256


# -- journal -----------------------------------------------------------------------------------
def run_key(paths: Iterable[Path]) -> str:
    """The journal's name: a hash of the resolved input paths (order and spelling do not matter)."""
    resolved = sorted({str(Path(p).resolve()) for p in paths})
    return hashlib.sha256("\0".join(resolved).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class FileResult:
    """What happened to one candidate."""

    candidate_key: str
    display: str
    outcome: str
    size: int = 0
    reason: str | None = None
    error: str | None = None
    sop_instance_uid: str | None = None


_JOURNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    key TEXT PRIMARY KEY,
    stamp INTEGER NOT NULL,
    size INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    sop_instance_uid TEXT,
    run_id TEXT NOT NULL,
    done_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    finished_at REAL,
    options TEXT NOT NULL
);
"""


class Journal:
    """Per import (run key): each file's final outcome, written after the pipeline answered."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        # WAL + NORMAL: a committed row survives the process being killed (the OS holds it);
        # a row lost to a power cut only means that file is imported again (a harmless duplicate)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(_JOURNAL_SCHEMA)
        self._lock_file: IO[bytes] | None = None

    def lock(self) -> None:
        """Hold an exclusive lock for this import (released by the OS if the process dies)."""
        import fcntl

        handle = open(self.path.with_suffix(".lock"), "wb")  # noqa: SIM115 - held for the run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise ImportFailed(f"another import of the same paths is running (journal {self.path})") from None
        self._lock_file = handle

    def done(self) -> dict[str, int]:
        """key -> stamp of every file with a final outcome."""
        with self._lock:
            return dict(self._conn.execute("SELECT key, stamp FROM files").fetchall())

    def record(self, candidate: Candidate, result: FileResult, run_id: str) -> None:
        if result.outcome not in FINAL_OUTCOMES:
            return
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    candidate.key,
                    candidate.stamp,
                    result.size,
                    result.outcome,
                    result.reason,
                    result.sop_instance_uid,
                    run_id,
                    time.time(),
                ),
            )

    def forget(self) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM files")

    def totals(self, keys: Iterable[str]) -> tuple[Counter[tuple[str, str]], int]:
        """(outcome, reason) counts and DICOM bytes over the journaled files among ``keys``."""
        wanted = set(keys)
        counts: Counter[tuple[str, str]] = Counter()
        dicom_bytes = 0
        with self._lock:
            rows = self._conn.execute("SELECT key, outcome, reason, size FROM files").fetchall()
        for key, outcome, reason, size in rows:
            if key in wanted:
                counts[(outcome, reason or "")] += 1
                if outcome in (STORED, DUPLICATE, REFUSED):
                    dicom_bytes += size
        return counts, dicom_bytes

    def start_run(self, run_id: str, options: dict[str, Any]) -> None:
        with self._lock:
            self._conn.execute(
                "INSERT INTO runs VALUES (?, ?, NULL, ?)", (run_id, time.time(), json.dumps(options, sort_keys=True))
            )

    def finish_run(self, run_id: str) -> None:
        with self._lock:
            self._conn.execute("UPDATE runs SET finished_at = ? WHERE run_id = ?", (time.time(), run_id))

    def runs(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT run_id FROM runs ORDER BY started_at").fetchall()]

    def close(self) -> None:
        with self._lock:
            self._conn.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None


# -- reading -----------------------------------------------------------------------------------
class _Reader:
    """Reads candidates; zip files are opened once per thread and kept open for the run."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._opened: list[zipfile.ZipFile] = []
        self._guard = threading.Lock()

    def _zip(self, path: Path) -> zipfile.ZipFile:
        cache: dict[Path, zipfile.ZipFile] | None = getattr(self._local, "zips", None)
        if cache is None:
            cache = self._local.zips = {}
        archive = cache.get(path)
        if archive is None:
            archive = cache[path] = zipfile.ZipFile(path)
            with self._guard:
                self._opened.append(archive)
        return archive

    def open(self, candidate: Candidate) -> IO[bytes]:
        if candidate.member is None:
            return open(candidate.path, "rb")
        return self._zip(candidate.path).open(candidate.member)

    def close(self) -> None:
        with self._guard:
            for archive in self._opened:
                archive.close()
            self._opened.clear()


# -- the import --------------------------------------------------------------------------------
@dataclass(frozen=True)
class ImportOptions:
    organisation: str
    pathology: bool = False
    emergency: bool = False
    #: a full import of a local archive (rather than the normal pathology-only flow); recorded
    full_import: bool = False
    workers: int = 2
    #: forget the journal and look at every file again
    restart: bool = False

    def describe(self) -> dict[str, Any]:
        return {
            "organisation": self.organisation,
            "pathology": self.pathology,
            "emergency": self.emergency,
            "full_import": self.full_import,
            "workers": self.workers,
        }


@dataclass
class Summary:
    run_id: str
    run_key: str
    journal: str
    paths: list[str]
    options: ImportOptions
    files_seen: int = 0
    total_bytes: int = 0
    resumed: int = 0
    dicomdir_referenced: int = 0
    #: cumulative over every run of this import (from the journal), plus this run's errors
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    dicom_bytes: int = 0
    errors: list[dict[str, str]] = field(default_factory=list)
    #: this run only
    this_run: Counter[str] = field(default_factory=Counter)
    bytes_this_run: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    aborted: str | None = None

    def count(self, outcome: str) -> int:
        return sum(n for (o, _), n in self.outcomes.items() if o == outcome)

    def by_reason(self, outcome: str) -> dict[str, int]:
        return dict(sorted((r, n) for (o, r), n in self.outcomes.items() if o == outcome))

    @property
    def complete(self) -> bool:
        return not self.interrupted and not self.aborted and not self.errors

    @property
    def exit_code(self) -> int:
        return 0 if self.complete else 1

    def to_dict(self) -> dict[str, Any]:
        seconds = max(self.seconds, 1e-9)
        files_this_run = sum(self.this_run.values())
        return {
            "run_id": self.run_id,
            "run_key": self.run_key,
            "journal": self.journal,
            "paths": self.paths,
            **self.options.describe(),
            "files_seen": self.files_seen,
            "bytes_seen": self.total_bytes,
            "resumed": self.resumed,
            "dicomdir_referenced": self.dicomdir_referenced,
            "stored": self.count(STORED),
            "duplicates": self.count(DUPLICATE),
            "refused": self.count(REFUSED),
            "refused_by_reason": self.by_reason(REFUSED),
            "skipped": self.count(SKIPPED),
            "skipped_by_reason": self.by_reason(SKIPPED),
            "errors": len(self.errors),
            "error_list": self.errors,
            "dicom_bytes": self.dicom_bytes,
            "this_run": {
                "files": files_this_run,
                **{o: self.this_run.get(o, 0) for o in (*FINAL_OUTCOMES, ERROR)},
                "bytes": self.bytes_this_run,
                "seconds": round(self.seconds, 3),
                "files_per_second": round(files_this_run / seconds, 1),
                "mb_per_second": round(self.bytes_this_run / 1e6 / seconds, 2),
            },
            "complete": self.complete,
            "interrupted": self.interrupted,
            "aborted": self.aborted,
            "exit_code": self.exit_code,
        }


class Importer:
    """Runs one import: discovery, the worker threads, the journal, the summary."""

    def __init__(
        self,
        ingestor: Ingestor,
        journal: Journal,
        options: ImportOptions,
        *,
        actor: Actor,
        source_node: str,
        run_id: str | None = None,
        limits: ImportLimits | None = None,
    ) -> None:
        self.ingestor = ingestor
        self.limits = limits or ImportLimits()
        self.journal = journal
        self.options = options
        self.run_id = run_id or f"import-{uuid.uuid4()}"
        self.arrival = Arrival(
            channel="import",
            source_node=source_node,
            organisation=options.organisation,
            actor=actor,
            pathology=options.pathology,
            emergency=options.emergency,
            correlation_id=self.run_id,
        )
        self._reader = _Reader()
        self._stop = threading.Event()

    def handle(self, candidate: Candidate) -> FileResult:
        """Read, sniff and store one candidate; never raises."""
        if candidate.skip is not None:
            return FileResult(candidate.key, candidate.display, SKIPPED, candidate.size, reason=candidate.skip)
        try:
            with self._reader.open(candidate) as handle:
                head = handle.read(SNIFF_BYTES)
                reason = sniff(head)
                if reason is not None:
                    return FileResult(candidate.key, candidate.display, SKIPPED, candidate.size, reason=reason)
                # read once, from the start, at most the size discovery saw (within the limit) and
                # one byte more to notice growth: one copy in memory, never more than the limit
                handle.seek(0)
                data = handle.read(min(candidate.size, self.limits.max_file) + 1)
                if len(data) > self.limits.max_file:
                    error = f"over the import limit of {self.limits.max_file} bytes (CAMI_IMPORT_MAX_FILE)"
                    return FileResult(candidate.key, candidate.display, ERROR, candidate.size, error=error)
                if len(data) > candidate.size:
                    data += handle.read(self.limits.max_file + 1 - len(data))  # grew since discovery
                    if len(data) > self.limits.max_file:
                        error = f"over the import limit of {self.limits.max_file} bytes (CAMI_IMPORT_MAX_FILE)"
                        return FileResult(candidate.key, candidate.display, ERROR, candidate.size, error=error)
        except (OSError, zipfile.BadZipFile, EOFError, RuntimeError, ValueError) as exc:
            message = _os_error(exc) if isinstance(exc, OSError) else f"{type(exc).__name__}: {exc}"
            return FileResult(candidate.key, candidate.display, ERROR, candidate.size, error=message)
        try:
            # media keep what other systems wrote: a stale file meta is no reason to lose a study
            outcome = self.ingestor.store_file(data, self.arrival, meta_must_match=False)
        except Exception as exc:  # the pipeline answers with statuses; this is a last resort
            return FileResult(candidate.key, candidate.display, ERROR, len(data), error=f"{type(exc).__name__}: {exc}")
        return _result(candidate, outcome, len(data))

    def plan(self, candidates: Sequence[Candidate]) -> list[Candidate]:
        """The candidates not yet done according to the journal (all of them with ``restart``)."""
        if self.options.restart:
            self.journal.forget()
        done = self.journal.done()
        return [c for c in candidates if done.get(c.key) != c.stamp]

    def run(
        self,
        candidates: Sequence[Candidate],
        summary: Summary,
        on_result: Callable[[Candidate, FileResult], None] | None = None,
        todo: Sequence[Candidate] | None = None,
    ) -> Summary:
        """Import the ``todo`` part of ``candidates`` (default: :meth:`plan`); ``on_result`` is
        called from this thread once per file, after its outcome is journaled."""
        started = time.monotonic()
        todo = self.plan(candidates) if todo is None else todo
        summary.resumed = len(candidates) - len(todo)
        self.journal.start_run(self.run_id, {**self.options.describe(), "paths": summary.paths})
        unavailable = 0
        workers = max(1, self.options.workers)
        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="import") as pool:
                pending: dict[Future[FileResult], Candidate] = {}
                queue = iter(todo)
                try:
                    while True:
                        while len(pending) < workers * 4 and not self._stop.is_set():
                            candidate = next(queue, None)
                            if candidate is None:
                                break
                            pending[pool.submit(self.handle, candidate)] = candidate
                        if not pending:
                            break
                        finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in finished:
                            candidate = pending.pop(future)
                            result = future.result()
                            self._finish(summary, candidate, result)
                            if result.reason in UNAVAILABLE:
                                unavailable += 1
                                if unavailable >= MAX_CONSECUTIVE_UNAVAILABLE and summary.aborted is None:
                                    summary.aborted = f"archive unavailable ({result.error}); re-run to resume"
                                    self._stop.set()
                            elif result.outcome != ERROR:
                                unavailable = 0
                            if on_result is not None:
                                on_result(candidate, result)
                except KeyboardInterrupt:
                    # the files in flight finish and are journaled; the rest waits for the next run
                    summary.interrupted = True
                    self._stop.set()
                    for future, candidate in list(pending.items()):
                        if not future.cancel():
                            self._finish(summary, candidate, future.result())
        finally:
            self._reader.close()
            self.journal.finish_run(self.run_id)
        summary.seconds = time.monotonic() - started
        summary.outcomes, summary.dicom_bytes = self.journal.totals(c.key for c in candidates)
        return summary

    def _finish(self, summary: Summary, candidate: Candidate, result: FileResult) -> None:
        self.journal.record(candidate, result, self.run_id)
        self._count(summary, result)

    def _count(self, summary: Summary, result: FileResult) -> None:
        summary.this_run[result.outcome] += 1
        summary.bytes_this_run += result.size
        if result.outcome == ERROR:
            summary.errors.append({"path": result.display, "error": result.error or result.reason or "?"})


def _result(candidate: Candidate, outcome: Outcome, size: int) -> FileResult:
    key, display = candidate.key, candidate.display
    if outcome.stored:
        kind = DUPLICATE if outcome.duplicate else STORED
        return FileResult(key, display, kind, size, sop_instance_uid=outcome.sop_instance_uid)
    if outcome.status == Status.OUT_OF_RESOURCES:
        return FileResult(key, display, ERROR, size, reason=outcome.reason, error=outcome.comment)
    reason = outcome.reason or f"status-{int(outcome.status):04x}"
    return FileResult(key, display, REFUSED, size, reason=reason, sop_instance_uid=outcome.sop_instance_uid)


def prepare(
    paths: Sequence[Path], on_found: Callable[[int], None] | None = None, limits: ImportLimits | None = None
) -> tuple[list[Candidate], list[Problem]]:
    """Discover every candidate (cheap: no file contents read); ``on_found`` sees the running count."""
    candidates: list[Candidate] = []
    problems: list[Problem] = []
    for item in discover(paths, limits):
        if isinstance(item, Problem):
            problems.append(item)
        else:
            candidates.append(item)
            if on_found is not None and len(candidates) % 500 == 0:
                on_found(len(candidates))
    return candidates, problems


def journal_path(home: Path, paths: Sequence[Path]) -> Path:
    return home / "imports" / f"{run_key(paths)}.db"


def new_summary(
    run_id: str,
    paths: Sequence[Path],
    options: ImportOptions,
    candidates: Sequence[Candidate],
    problems: Sequence[Problem],
    journal: Journal,
) -> Summary:
    summary = Summary(
        run_id=run_id,
        run_key=run_key(paths),
        journal=str(journal.path),
        paths=[str(Path(p).resolve()) for p in paths],
        options=options,
        files_seen=len(candidates),
        total_bytes=sum(c.size for c in candidates),
        dicomdir_referenced=sum(1 for c in candidates if c.referenced),
    )
    summary.errors.extend({"path": p.display, "error": p.error} for p in problems)
    return summary
