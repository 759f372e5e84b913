"""Embedded event log: one SQLite file in WAL mode with ``synchronous=FULL``.

The default when no Kafka broker is configured (``cami demo``, a single-node pilot). It keeps
Kafka's semantics where the archive relies on them: topics with partitions chosen by the same
murmur2 partitioner, per-partition offsets, consumer groups with committed offsets, replay from
zero, and ``append`` returning only after the transaction (and so the event) is on disk.

Appends from many threads are *group-committed*: one writer thread takes whatever is queued,
writes it in one transaction and fsyncs once, so concurrent C-STORE handlers share the cost of
durability instead of paying one fsync each. Several processes may append to the same file
(SQLite's write lock serialises them; offsets are allocated inside the write transaction).

Limitation: a consumer group has one active member in embedded mode (it reads every partition);
scaling out by partitions is what the Kafka backend is for.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from streams.health import Health
from streams.log import Consumer, EventLog, EventLogError, Position, Record, TopicSpec
from streams.partitioning import partition_for

_SCHEMA = """
CREATE TABLE IF NOT EXISTS topics (
    name TEXT PRIMARY KEY,
    partitions INTEGER NOT NULL,
    retention_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    headers BLOB,
    PRIMARY KEY (topic, partition, offset)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS group_offsets (
    group_id TEXT NOT NULL,
    topic TEXT NOT NULL,
    partition INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    committed_at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, topic, partition)
) WITHOUT ROWID;
"""

#: how long a writer waits for another process's write lock before failing the append
_BUSY_TIMEOUT_MS = 30_000
#: most appends written in one transaction
_MAX_BATCH = 2_000


@dataclass(slots=True)
class _Pending:
    topic: str
    key: bytes
    value: bytes
    headers: bytes | None
    future: Future[Position]


def _encode_headers(headers: Sequence[tuple[str, bytes]]) -> bytes | None:
    if not headers:
        return None
    parts = []
    for name, value in headers:
        raw = name.encode()
        parts.append(len(raw).to_bytes(2, "big") + raw + len(value).to_bytes(4, "big") + value)
    return b"".join(parts)


def _decode_headers(blob: bytes | None) -> tuple[tuple[str, bytes], ...]:
    out: list[tuple[str, bytes]] = []
    i = 0
    data = blob or b""
    while i < len(data):
        n = int.from_bytes(data[i : i + 2], "big")
        name = data[i + 2 : i + 2 + n].decode()
        i += 2 + n
        m = int.from_bytes(data[i : i + 4], "big")
        out.append((name, data[i + 4 : i + 4 + m]))
        i += 4 + m
    return tuple(out)


class EmbeddedEventLog(EventLog):
    backend = "embedded"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(_SCHEMA)
        self._local = threading.local()
        self._queue: queue.Queue[_Pending | None] = queue.Queue()
        self._appended = threading.Condition()
        #: batches this process appended, per topic: a consumer woken by an append to another
        #: topic goes back to waiting without reading the file (:meth:`appends_to`)
        self._appends: dict[str, int] = {}
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="cami-eventlog-writer", daemon=True)
        self._writer.start()

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    # -- topics --------------------------------------------------------------------------------
    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        conn = self._reader()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT OR IGNORE INTO topics(name, partitions, retention_ms) VALUES (?, ?, ?)",
                [(t.name, t.partitions, t.retention_ms) for t in topics],
            )

    def _partition_counts(self, conn: sqlite3.Connection) -> dict[str, int]:
        return dict(conn.execute("SELECT name, partitions FROM topics").fetchall())

    def partitions(self, topic: str) -> list[int]:
        count = self._partition_counts(self._reader()).get(topic)
        if count is None:
            raise EventLogError(f"unknown topic {topic!r}")
        return list(range(count))

    # -- append (group commit) -------------------------------------------------------------------
    def append_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Future[Position]:
        future: Future[Position] = Future()
        if self._closed:
            future.set_exception(EventLogError("event log is closed"))
            return future
        self._queue.put(_Pending(topic, bytes(key), bytes(value), _encode_headers(headers), future))
        return future

    def _write_loop(self) -> None:
        conn = self._connect()
        partitions: dict[str, int] = {}
        while True:
            first = self._queue.get()
            if first is None:
                break
            batch = [first]
            stop = False
            while len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._write_batch(conn, batch, partitions)
            if stop:
                break
        conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending], partitions: dict[str, int]) -> None:
        results: list[tuple[_Pending, Position | Exception]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            next_offsets: dict[tuple[str, int], int] = {}
            now_ms = int(time.time() * 1000)
            rows = []
            for item in batch:
                if item.topic not in partitions:
                    partitions.update(self._partition_counts(conn))
                count = partitions.get(item.topic)
                if count is None:
                    results.append((item, EventLogError(f"unknown topic {item.topic!r}")))
                    continue
                partition = partition_for(item.key, count)
                slot = (item.topic, partition)
                if slot not in next_offsets:
                    row = conn.execute(
                        "SELECT MAX(offset) FROM events WHERE topic = ? AND partition = ?", slot
                    ).fetchone()
                    next_offsets[slot] = 0 if row[0] is None else row[0] + 1
                offset = next_offsets[slot]
                next_offsets[slot] = offset + 1
                rows.append((item.topic, partition, offset, item.key, item.value, now_ms, item.headers))
                results.append((item, Position(item.topic, partition, offset)))
            conn.executemany(
                "INSERT INTO events(topic, partition, offset, key, value, timestamp_ms, headers)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            conn.execute("COMMIT")
        except Exception as exc:  # the whole batch failed: nobody gets a success
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            failure = EventLogError(f"append failed: {exc}")
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(failure)
            return
        for item, outcome in results:
            if isinstance(outcome, Exception):
                item.future.set_exception(outcome)
            else:
                item.future.set_result(outcome)
        with self._appended:
            for item, outcome in results:
                if not isinstance(outcome, Exception):
                    self._appends[item.topic] = self._appends.get(item.topic, 0) + 1
            self._appended.notify_all()

    def data_version(self) -> int:
        """A number that changes whenever another connection (the writer thread, another process)
        commits to the file: a consumer that has read everything reads again only when it moved."""
        return int(self._reader().execute("PRAGMA data_version").fetchone()[0])

    def appends_to(self, topics: Sequence[str]) -> tuple[int, ...]:
        """Per topic, how many batches this process has appended to it (changes on each)."""
        with self._appended:
            return tuple(self._appends.get(t, 0) for t in topics)

    def wait_for_append(self, timeout: float) -> None:
        """Block until this process appends something or ``timeout`` passes (consumer wake-up)."""
        with self._appended:
            self._appended.wait(timeout)

    # -- reading -------------------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        rows = (
            self._reader()
            .execute(
                "SELECT offset, key, value, timestamp_ms, headers FROM events"
                " WHERE topic = ? AND partition = ? AND offset >= ? ORDER BY offset LIMIT ?",
                (topic, partition, offset, max_records),
            )
            .fetchall()
        )
        return [
            Record(topic, partition, off, key, value, ts, _decode_headers(headers))
            for off, key, value, ts, headers in rows
        ]

    def end_offsets(self, topic: str) -> dict[int, int]:
        ends = dict.fromkeys(self.partitions(topic), 0)
        for partition, last in self._reader().execute(
            "SELECT partition, MAX(offset) FROM events WHERE topic = ? GROUP BY partition", (topic,)
        ):
            ends[partition] = last + 1
        return ends

    def committed(self, group: str, topic: str) -> dict[int, int]:
        return dict(
            self._reader()
            .execute(
                "SELECT partition, next_offset FROM group_offsets WHERE group_id = ? AND topic = ?",
                (group, topic),
            )
            .fetchall()
        )

    def commit_offsets(self, group: str, offsets: dict[tuple[str, int], int]) -> None:
        conn = self._reader()
        now_ms = int(time.time() * 1000)
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO group_offsets(group_id, topic, partition, next_offset, committed_at_ms)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT(group_id, topic, partition)"
                " DO UPDATE SET next_offset = excluded.next_offset, committed_at_ms = excluded.committed_at_ms",
                [(group, t, p, off, now_ms) for (t, p), off in offsets.items()],
            )

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        return EmbeddedConsumer(self, group, topics)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout=30)
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- health ----------------------------------------------------------------------------------
    def health(self, topics: Sequence[str] = (), timeout: float = 2.0) -> Health:
        where = f"SQLite {self.path}"
        if self._closed or not self._writer.is_alive():
            return Health.down(f"{where}: the writer thread has stopped")
        try:
            # a connection of its own, which may not create the file (a missing file is a lost
            # log, not a new one) and waits at most ``timeout`` for the write lock
            conn = sqlite3.connect(
                f"{self.path.absolute().as_uri()}?mode=rw", uri=True, timeout=timeout, isolation_level=None
            )
            try:
                conn.execute("BEGIN IMMEDIATE")  # the write lock an append takes: the file takes one now
                known = {name for (name,) in conn.execute("SELECT name FROM topics")}
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except sqlite3.Error as exc:
            return Health.down(f"{where}: {exc}")
        missing = [t for t in topics if t not in known]
        if missing:
            return Health.down(f"{where}: no topic {', '.join(missing)}")
        return Health.ok(where)


#: how often a waiting consumer looks at the file for what other processes appended (seconds)
OTHERS_EVERY = 0.05


class EmbeddedConsumer(Consumer):
    def __init__(self, log: EmbeddedEventLog, group: str, topics: Sequence[str]) -> None:
        self._log = log
        self._group = group
        self._slots = [(t, p) for t in topics for p in log.partitions(t)]
        self._positions: dict[tuple[str, int], int] = {}
        for topic in topics:
            committed = log.committed(group, topic)
            for t, p in self._slots:
                if t == topic:
                    self._positions[(t, p)] = committed.get(p, 0)
        self._topics = tuple(dict.fromkeys(topics))
        self._next_slot = 0
        #: the file's data_version when this member last found every partition read to its end
        self._drained_at: int | None = None
        #: this process's appends to our topics, and when the file was last looked at: an append
        #: by this process to another topic wakes every consumer, and only those it concerns read
        #: (another process's appends are seen by the look every ``OTHERS_EVERY`` seconds)
        self._appends_seen: tuple[int, ...] | None = None
        self._looked_at = 0.0

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        deadline = time.monotonic() + timeout
        while True:
            appends = self._log.appends_to(self._topics)
            now = time.monotonic()
            behind = self._drained_at is None  # the last read stopped short of an end
            if behind or appends != self._appends_seen or now - self._looked_at >= OTHERS_EVERY:
                self._appends_seen, self._looked_at = appends, now
                records = self._fetch(max_records)
                if records:
                    return records
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            # same-process appends wake us at once; other processes' within 50 ms
            self._log.wait_for_append(min(0.05, remaining))

    def _fetch(self, max_records: int) -> list[Record]:
        # taken before reading, so that a commit landing during the reads is seen next time
        version = self._log.data_version()
        if version == self._drained_at:  # nothing committed since everything was read
            return []
        out: list[Record] = []
        n = len(self._slots)
        # round-robin over partitions so one busy partition does not starve the others
        for i in range(n):
            if len(out) >= max_records:
                break
            slot = self._slots[(self._next_slot + i) % n]
            got = self._log.read(slot[0], slot[1], self._positions[slot], max_records - len(out))
            if got:
                self._positions[slot] = got[-1].offset + 1
                out.extend(got)
        self._next_slot = (self._next_slot + 1) % max(n, 1)
        # fewer than asked: every partition was read to its end
        self._drained_at = version if len(out) < max_records else None
        return out

    def commit(self, records: Sequence[Record] | None = None) -> None:
        if records is None:
            offsets = dict(self._positions)
        else:
            offsets = {}
            for r in records:
                slot = (r.topic, r.partition)
                offsets[slot] = max(offsets.get(slot, 0), r.offset + 1)
        if offsets:
            self._log.commit_offsets(self._group, offsets)

    def rewind(self) -> None:
        self._drained_at = None
        for topic in {t for t, _ in self._slots}:
            committed = self._log.committed(self._group, topic)
            for slot in self._slots:
                if slot[0] == topic:
                    self._positions[slot] = committed.get(slot[1], 0)

    def seek_to_beginning(self) -> None:
        self._drained_at = None
        for slot in self._positions:
            self._positions[slot] = 0

    def assignment(self) -> list[tuple[str, int]]:
        return list(self._slots)

    def close(self) -> None:
        self._positions = {}
        self._slots = []
