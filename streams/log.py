"""The event log: the archive's source of truth.

One small interface with two backends (Kafka, embedded SQLite). Both give the same guarantees,
and the contract tests in ``tests/contract/test_event_log.py`` hold each to them:

* ``append`` returns only once the event is durable (Kafka: delivery report after ``acks=all``;
  embedded: the SQLite transaction is committed with ``synchronous=FULL``).
* events with the same key land in the same partition and keep their order;
* consumers in a group resume from the group's committed offsets; what was polled but not
  committed is delivered again (at-least-once);
* any reader can start from offset 0 (replay).
"""

from __future__ import annotations

import abc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from streams.health import Health


class EventLogError(Exception):
    """The log could not do what was asked; nothing was acknowledged."""


class EventLogUnavailable(EventLogError):
    """The log is unreachable or timed out; the caller must not report success."""


@dataclass(frozen=True, slots=True)
class Record:
    """One event as stored in the log."""

    topic: str
    partition: int
    offset: int
    key: bytes
    value: bytes
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class Position:
    """Where an appended event landed."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic as the archive needs it. ``retention_ms=-1`` keeps events forever."""

    name: str
    partitions: int
    retention_ms: int = -1
    config: Mapping[str, str] = field(default_factory=dict)


class Consumer(abc.ABC):
    """A member of a consumer group. Offsets are committed only when the caller says so."""

    @abc.abstractmethod
    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        """Next records for this member; an empty list when nothing arrived within ``timeout``."""

    @abc.abstractmethod
    def commit(self, records: Sequence[Record] | None = None) -> None:
        """Commit the position after ``records`` (or after everything polled so far)."""

    @abc.abstractmethod
    def rewind(self) -> None:
        """Go back to the group's committed position on every partition this member read from:
        what was polled since the last commit is delivered again (a batch that failed is retried,
        never skipped by the next poll)."""

    @abc.abstractmethod
    def seek_to_beginning(self) -> None:
        """Start again from offset 0 of every assigned partition (replay)."""

    @abc.abstractmethod
    def assignment(self) -> list[tuple[str, int]]:
        """The (topic, partition) pairs this member currently reads."""

    @abc.abstractmethod
    def close(self) -> None:
        """Leave the group without committing anything further."""

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog(abc.ABC):
    """Append-only, partitioned, durable log of encoded events."""

    #: a short name for messages and test reports ("kafka", "embedded")
    backend: str = "?"
    #: told (topic, seconds) after each durable :meth:`append` (the archive's metrics)
    on_append: Callable[[str, float], None] | None = None

    @abc.abstractmethod
    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        """Create the topics that do not exist yet (idempotent)."""

    @abc.abstractmethod
    def append_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Future[Position]:
        """Start appending; the future resolves once the event is durable, or fails."""

    def append(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
        timeout: float = 30.0,
    ) -> Position:
        """Append one event and return only once it is durable."""
        started = time.perf_counter()
        future = self.append_async(topic, key, value, headers)
        try:
            position = future.result(timeout=timeout)
        except TimeoutError as exc:
            raise EventLogUnavailable(f"append to {topic!r} not confirmed within {timeout} s") from exc
        if self.on_append is not None:
            self.on_append(topic, time.perf_counter() - started)
        return position

    def append_many(self, topic: str, items: Iterable[tuple[bytes, bytes]], timeout: float = 60.0) -> list[Position]:
        """Append several events (key, value); returns once all are durable, in input order."""
        futures = [self.append_async(topic, key, value) for key, value in items]
        try:
            return [f.result(timeout=timeout) for f in futures]
        except TimeoutError as exc:
            raise EventLogUnavailable(f"append to {topic!r} not confirmed within {timeout} s") from exc

    @abc.abstractmethod
    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        """Records of one partition from ``offset`` on, without any group (audits, replay tools)."""

    @abc.abstractmethod
    def partitions(self, topic: str) -> list[int]:
        """The partition numbers of a topic."""

    @abc.abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Per partition, the offset the next appended event will get."""

    @abc.abstractmethod
    def committed(self, group: str, topic: str) -> dict[int, int]:
        """Per partition, the group's committed offset (partitions never committed are absent)."""

    @abc.abstractmethod
    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        """Join ``group`` reading ``topics``; starts at committed offsets, else at the beginning."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush what is pending and release resources."""

    @abc.abstractmethod
    def health(self, topics: Sequence[str] = (), timeout: float = 2.0) -> Health:
        """Whether an append to ``topics`` would be durable now (readiness probes): answered
        within about ``timeout`` seconds, never raised. ``down`` when the log cannot take one
        (unreachable, a topic missing, a partition without a leader or short of in-sync replicas),
        ``degraded`` when it can with less redundancy than configured."""

    def scan(
        self,
        ends: Mapping[str, Mapping[int, int]],
        batch_size: int = 1000,
        starts: Mapping[str, Mapping[int, int]] | None = None,
    ) -> Iterator[list[Record]]:
        """Every record from ``starts`` (per topic, per partition; default offset 0) up to (not
        including) ``ends``, in batches, each partition in offset order; no consumer group
        (rebuilds, audits)."""
        positions = {
            (t, p): _start(starts, t, p)
            for t, per_partition in ends.items()
            for p, end in per_partition.items()
            if end > _start(starts, t, p)
        }
        while positions:
            for slot in list(positions):  # round-robin: no partition waits for another
                topic, partition = slot
                end = ends[topic][partition]
                start = positions[slot]
                records = [
                    r for r in self.read(topic, partition, start, min(batch_size, end - start)) if r.offset < end
                ]
                if not records:
                    raise EventLogError(f"{topic}/{partition}: no events from offset {start} though it ends at {end}")
                positions[slot] = records[-1].offset + 1
                if positions[slot] >= end:
                    del positions[slot]
                yield records

    def lag(self, group: str, topic: str) -> int:
        """Events in ``topic`` not yet committed by ``group``."""
        ends = self.end_offsets(topic)
        done = self.committed(group, topic)
        return sum(end - done.get(p, 0) for p, end in ends.items())

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _start(starts: Mapping[str, Mapping[int, int]] | None, topic: str, partition: int) -> int:
    return starts.get(topic, {}).get(partition, 0) if starts else 0
