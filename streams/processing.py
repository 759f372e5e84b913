"""Stream processors: pure functions over events, driven by either runner.

A :class:`Processor` is the pure part (``apply(event, source) -> rows``, no I/O). A :class:`Sink`
is the adapter that writes rows (ClickHouse, a file...) and must be idempotent, because delivery
is at-least-once: a batch may be applied again after a crash between ``write`` and ``commit``.

:func:`process_batch` is the one place that turns raw records into rows; the embedded runner
(:class:`EmbeddedRunner`) and the Faust agents (``streams.faust_app``) both call it, so the two
paths cannot drift apart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.codec import CodecError, decode
from schemas.events import Event
from streams.log import Consumer, EventLog, Record

log = logging.getLogger("cami.streams")


@dataclass(frozen=True, slots=True)
class Source:
    """Where an event was read from; rows keyed by it are idempotent under redelivery.

    ``raw`` is the event exactly as stored in the log (for hash chains over the bytes)."""

    topic: str
    partition: int
    offset: int
    raw: bytes = field(default=b"", compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    values: Mapping[str, Any]


class Processor(Protocol):
    #: stable name; the consumer group is ``cami.<name>``
    name: str
    topics: Sequence[str]

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        """Pure: the rows this event contributes. Must not do I/O."""
        ...


class PreparesBatches(Protocol):
    """Optional for a processor with state (the audit trail's hash chains): ``prepare`` is called
    with a batch's decoded events before any of them is applied. It is the edge where the
    processor may load, from its own store, the state those events need; ``apply`` stays pure."""

    def prepare(self, batch: Sequence[tuple[Event, Source]]) -> None: ...


class Sink(Protocol):
    def write(self, rows: Sequence[Row]) -> None:
        """Write rows durably; writing the same rows twice must not change the result."""
        ...


def group_id(processor: Processor) -> str:
    return f"cami.{processor.name}"


@dataclass
class BatchResult:
    rows: list[Row] = field(default_factory=list)
    events: int = 0
    #: records that could not be decoded (logged with their position, never fatal)
    undecodable: list[Source] = field(default_factory=list)


def process_batch(processor: Processor, records: Sequence[tuple[Source, bytes]]) -> BatchResult:
    result = BatchResult()
    decoded: list[tuple[Event, Source]] = []
    for source, value in records:
        try:
            decoded.append((decode(value), source))
        except CodecError as exc:
            # the log is the source of truth and written only by our codec; an undecodable
            # record is an operational alarm, but one bad record must not stop the archive
            log.error("skipping undecodable record %s/%s@%s: %s", source.topic, source.partition, source.offset, exc)
            result.undecodable.append(source)
    prepare = getattr(processor, "prepare", None)
    if prepare is not None and decoded:
        prepare(decoded)
    for event, source in decoded:
        result.events += 1
        result.rows.extend(processor.apply(event, source))
    return result


def record_source(record: Record) -> tuple[Source, bytes]:
    return Source(record.topic, record.partition, record.offset, record.value), record.value


class EmbeddedRunner:
    """Drives processors from an :class:`EventLog` in threads of this process.

    Each processor has its own consumer group, so each resumes from its own committed offsets.
    """

    def __init__(
        self,
        event_log: EventLog,
        bindings: Sequence[tuple[Processor, Sink]],
        batch_size: int = 500,
        linger: float = 0.25,
    ):
        self._log = event_log
        self._bindings = list(bindings)
        self._batch_size = batch_size
        #: how long a running processor gathers events before applying them: a few large sink
        #: writes instead of one per arriving event (read models stay well under a second behind)
        self._linger = linger
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.processed: dict[str, int] = {p.name: 0 for p, _ in self._bindings}
        self.errors: dict[str, str] = {}

    def run_once(
        self, processor: Processor, sink: Sink, consumer: Consumer, timeout: float = 0.2, linger: float = 0.0
    ) -> int:
        """Poll one batch, apply, write, commit. Returns the number of records handled."""
        records = consumer.poll(self._batch_size, timeout)
        if not records:
            return 0
        deadline = time.monotonic() + linger
        while len(records) < self._batch_size and (left := deadline - time.monotonic()) > 0:
            records += consumer.poll(self._batch_size - len(records), left)
        result = process_batch(processor, [record_source(r) for r in records])
        if result.rows:
            sink.write(result.rows)
        consumer.commit(records)  # only after the sink has the rows: at-least-once
        self.processed[processor.name] += len(records)
        return len(records)

    def catch_up(self, timeout: float = 120.0) -> dict[str, int]:
        """Process until every processor has committed up to the end of its topics as they were
        when the call began (used by the demo, replay, tests, and the ingest node's SOP index).

        Ends by offsets, not by an empty poll: on Kafka the first polls are empty while the
        consumer joins its group."""
        done: dict[str, int] = {}
        for processor, sink in self._bindings:
            group = group_id(processor)
            targets = {t: self._log.end_offsets(t) for t in processor.topics}
            deadline = time.monotonic() + timeout
            total = 0
            with self._log.consumer(group, processor.topics) as consumer:
                while not self._reached(group, targets):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{processor.name} did not catch up within {timeout} s")
                    total += self.run_once(processor, sink, consumer, timeout=0.5)
            done[processor.name] = total
        return done

    def _reached(self, group: str, targets: dict[str, dict[int, int]]) -> bool:
        for topic, ends in targets.items():
            committed = self._log.committed(group, topic)
            if any(committed.get(p, 0) < end for p, end in ends.items() if end > 0):
                return False
        return True

    def start(self) -> None:
        for processor, sink in self._bindings:
            thread = threading.Thread(
                target=self._loop, args=(processor, sink), name=f"cami-{processor.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _loop(self, processor: Processor, sink: Sink) -> None:
        with self._log.consumer(group_id(processor), processor.topics) as consumer:
            while not self._stop.is_set():
                try:
                    self.run_once(processor, sink, consumer, timeout=0.2, linger=self._linger)
                except Exception as exc:  # keep the thread alive; the batch was not committed
                    self.errors[processor.name] = str(exc)
                    log.exception("processor %s failed on a batch; retrying", processor.name)
                    self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()


Factory = Callable[[], Sequence[tuple[Processor, Sink]]]
