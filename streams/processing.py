"""Stream processors: pure functions over events, driven by either runner.

A :class:`Processor` is the pure part (``apply(event, source) -> rows``, no I/O). A :class:`Sink`
is the adapter that writes rows (ClickHouse, a file...) and must be idempotent, because delivery
is at-least-once: a batch may be applied again after a crash between ``write`` and ``commit``.

:func:`deliver` is the one place that turns raw records into rows and writes them; the embedded
runner (:class:`EmbeddedRunner`), the Faust agents (``streams.faust_app``) and ``cami replay``
all call it, so the paths cannot drift apart. Its rule: a processor's position never moves past
an event that was neither written nor recorded as a dead letter (see :func:`deliver`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
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

    def columns(self, *, offset: bool = True) -> dict[str, Any]:
        """The row columns that say where the event came from: topic, partition and, for tables
        keyed by the log position, the offset (a table with its own version column leaves it out)."""
        found: dict[str, Any] = {"topic": self.topic, "partition": self.partition}
        if offset:
            found["offset"] = self.offset
        return found


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


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event a processor could not apply: it is recorded, with why, before the processor's
    position moves past it, so it is never lost silently (``cami status`` lists it, ``cami
    replay`` retries it)."""

    processor: str
    source: Source
    #: empty for a record that could not be decoded
    event_id: str
    event_type: str
    error: str


class DeadLetterSink(Protocol):
    """Optional for a sink: where its processor's unprocessable events are recorded durably."""

    def write_dead_letters(self, letters: Sequence[DeadLetter]) -> None: ...


class ConsumerLost(Exception):
    """A consumer could not be rewound after a failed batch: close it and join the group again
    (a new member starts at the committed offsets)."""


class BatchNotApplied(Exception):
    """A batch could be neither written nor set aside (an outage, or nowhere to record a bad
    event): nothing of it may be committed; it is delivered again."""


@dataclass
class BatchResult:
    rows: list[Row] = field(default_factory=list)
    events: int = 0
    #: records that could not be decoded (logged with their position, never fatal)
    undecodable: list[Source] = field(default_factory=list)
    #: events set aside with their error (only by :func:`deliver`)
    dead_letters: list[DeadLetter] = field(default_factory=list)


class SharedDecoding:
    """The events most recently decoded by any processor of one runner, by log position: the
    processors of a runner read the same records within a linger of each other, and decoding an
    InstanceReceived once instead of once per processor is most of their CPU per event. Events
    are immutable, so they can be shared (as ``cami replay`` shares them). Bounded; a miss (a
    processor far behind the others) decodes again. A hit must carry the same bytes."""

    def __init__(self, capacity: int = 2048) -> None:
        self._capacity = capacity
        self._events: OrderedDict[tuple[str, int, int], tuple[bytes, Event]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, source: Source, value: bytes) -> Event:
        key = (source.topic, source.partition, source.offset)
        with self._lock:
            known = self._events.get(key)
            if known is not None:
                self._events.move_to_end(key)
        if known is not None and known[0] == value:
            return known[1]
        event = decode(value)  # outside the lock: processors decode side by side
        with self._lock:
            self._events[key] = (value, event)
            self._events.move_to_end(key)
            while len(self._events) > self._capacity:
                self._events.popitem(last=False)
        return event


def decode_records(
    records: Sequence[tuple[Source, bytes]],
    decoder: Callable[[Source, bytes], Event] | None = None,
) -> tuple[list[tuple[Event, Source]], list[tuple[Source, str]]]:
    """The batch's events, and apart the records that could not be decoded, with the error. The
    log is the source of truth and written only by our codec; an undecodable record is an
    operational alarm (logged with its position), but one bad record must not stop the archive.
    ``decoder`` (a :class:`SharedDecoding`) may answer from events another processor decoded."""
    decoded: list[tuple[Event, Source]] = []
    undecodable: list[tuple[Source, str]] = []
    for source, value in records:
        try:
            decoded.append((decoder(source, value) if decoder is not None else decode(value), source))
        except CodecError as exc:
            log.error("undecodable record %s/%s@%s: %s", source.topic, source.partition, source.offset, exc)
            undecodable.append((source, str(exc)))
    return decoded, undecodable


def process_batch(processor: Processor, records: Sequence[tuple[Source, bytes]]) -> BatchResult:
    result = BatchResult()
    decoded, undecodable = decode_records(records)
    result.undecodable.extend(source for source, _ in undecodable)
    prepare = getattr(processor, "prepare", None)
    if prepare is not None and decoded:
        prepare(decoded)
    for event, source in decoded:
        result.events += 1
        result.rows.extend(processor.apply(event, source))
    return result


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def deliver(
    processor: Processor,
    sink: Sink,
    records: Sequence[tuple[Source, bytes]],
    *,
    settle: bool = False,
    prepare: bool = True,
    decoder: Callable[[Source, bytes], Event] | None = None,
) -> BatchResult:
    """Apply a batch and write its rows so that afterwards every event is either written or
    recorded as a dead letter; only then may the caller commit past the batch. Raises
    :class:`BatchNotApplied` (or the sink's error) when that cannot be said: the caller must not
    commit and delivers the batch again, with backoff.

    The rule that tells a bad event from an outage:

    * ``apply`` raising is the event's fault (it is pure: no I/O can fail in it): dead letter.
    * the batch's rows refused by the sink: they are written again event by event. If some
      events' rows are accepted, the sink is up and the refused ones are bad: dead letters. If
      every event is refused, it is an outage (warehouse down, a table being recreated): raise,
      nothing is set aside. A batch whose events are *all* bad looks the same, so after repeated
      failures the caller passes ``settle=True``: the refused events are then dead-lettered, which
      still needs the warehouse to accept the dead letters (during an outage it does not).
    * a dead letter needs a sink that records them (:class:`DeadLetterSink`); without one a bad
      event is retried, never skipped. Undecodable records are set aside the same way, or, for
      a sink without dead letters, logged and skipped as before (they carry no event to apply).
    """
    decoded, undecodable = decode_records(records, decoder)
    return deliver_decoded(processor, sink, decoded, undecodable, settle=settle, prepare=prepare)


def deliver_decoded(
    processor: Processor,
    sink: Sink,
    decoded: Sequence[tuple[Event, Source]],
    undecodable: Sequence[tuple[Source, str]] = (),
    *,
    settle: bool = False,
    prepare: bool = True,
) -> BatchResult:
    """:func:`deliver` for records already decoded (a rebuild decodes each record once for every
    projection); ``undecodable`` are the records that could not be, with the codec's error."""
    result = BatchResult()
    result.undecodable = [source for source, _ in undecodable]
    letters = [DeadLetter(processor.name, source, "", "", f"undecodable: {error}") for source, error in undecodable]
    prepare_batch = getattr(processor, "prepare", None) if prepare else None
    if prepare_batch is not None and decoded:
        prepare_batch(decoded)  # loads state from the processor's store: a failure is an outage
    per_event: list[tuple[Event, Source, list[Row]]] = []
    for event, source in decoded:
        try:
            rows = list(processor.apply(event, source))
        except Exception as exc:
            log.error("%s cannot apply %s at %s/%s@%s: %s", processor.name, event.type, *_where(source), exc)
            letters.append(DeadLetter(processor.name, source, str(event.envelope.event_id), event.type, _error(exc)))
            continue
        result.events += 1
        per_event.append((event, source, rows))
    rows = [row for _, _, event_rows in per_event for row in event_rows]
    if rows:
        try:
            sink.write(rows)
            result.rows = rows
        except Exception as batch_error:
            refused = _write_one_by_one(processor, sink, per_event, result, probe=None if settle else 3)
            if refused is None:
                message = f"{processor.name}: the sink refused every event's rows: {batch_error}"
                raise BatchNotApplied(message) from batch_error
            letters.extend(refused)
    dead = getattr(sink, "write_dead_letters", None)
    if letters and dead is None:
        unplaceable = [letter for letter in letters if letter.event_id]
        if unplaceable:
            raise BatchNotApplied(
                f"{processor.name}: {len(unplaceable)} event(s) cannot be applied and this sink keeps no dead"
                f" letters; first: {unplaceable[0].error}"
            )
        letters = []  # undecodable records only: logged above, as this sink always did
    if letters:
        assert dead is not None
        dead(letters)  # durable before the caller commits past them; fails during an outage
        result.dead_letters = letters
    return result


def _where(source: Source) -> tuple[str, int, int]:
    return source.topic, source.partition, source.offset


def _write_one_by_one(
    processor: Processor,
    sink: Sink,
    per_event: Sequence[tuple[Event, Source, list[Row]]],
    result: BatchResult,
    probe: int | None,
) -> list[DeadLetter] | None:
    """After a failed batch write: each event's rows alone. Returns the events refused, or None
    when the sink refused every event (an outage), or the first ``probe`` ones with none accepted
    (no need to knock once per event on a warehouse that is down)."""
    refused: list[DeadLetter] = []
    written = 0
    for event, source, rows in per_event:
        if not rows:
            continue
        if probe is not None and not written and len(refused) >= probe:
            return None
        try:
            sink.write(rows)
            result.rows.extend(rows)
            written += 1
        except Exception as exc:
            refused.append(DeadLetter(processor.name, source, str(event.envelope.event_id), event.type, _error(exc)))
    if not written and probe is not None:
        return None
    if refused and written:
        log.error("%s: %d event(s) refused by the sink while others were written", processor.name, len(refused))
    return refused


def record_source(record: Record) -> tuple[Source, bytes]:
    return Source(record.topic, record.partition, record.offset, record.value), record.value


#: consecutive failures of a batch after which events the sink refuses on their own are set aside
SETTLE_AFTER = 4


def backoff(failures: int) -> float:
    """Seconds to wait before the next attempt at a batch that failed ``failures`` times."""
    return float(min(0.25 * 2 ** max(failures - 1, 0), 30.0))


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
        self._decoding = SharedDecoding()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.processed: dict[str, int] = {p.name: 0 for p, _ in self._bindings}
        self.errors: dict[str, str] = {}
        #: events each processor set aside as dead letters since this runner started
        self.dead_lettered: dict[str, int] = {p.name: 0 for p, _ in self._bindings}
        #: consecutive failed attempts at the current batch, per processor
        self.failures: dict[str, int] = {p.name: 0 for p, _ in self._bindings}

    def run_once(
        self, processor: Processor, sink: Sink, consumer: Consumer, timeout: float = 0.2, linger: float = 0.0
    ) -> int:
        """Poll one batch, apply, write (or dead-letter), commit. Returns the number of records
        handled. If the batch cannot be applied, the consumer is rewound to the committed position
        before the error is raised: the next call gets the same records again, so a failed batch
        is retried and never committed past by a later one."""
        records = consumer.poll(self._batch_size, timeout)
        if not records:
            return 0
        try:
            if linger > 0 and len(records) < self._batch_size:
                # let the batch gather, then take it in one poll: polling throughout the linger
                # would read the log again on every append, taking CPU from the ingest path
                time.sleep(linger)
                records += consumer.poll(self._batch_size - len(records), 0)
            settle = self.failures.get(processor.name, 0) >= SETTLE_AFTER
            sources = [record_source(r) for r in records]
            result = deliver(processor, sink, sources, settle=settle, decoder=self._decoding)
            consumer.commit(records)  # only after the sink has the rows (or the dead letters)
        except BaseException as exc:
            self.failures[processor.name] = self.failures.get(processor.name, 0) + 1
            self.errors[processor.name] = _error(exc)
            try:
                consumer.rewind()
            except Exception as rewind_error:  # its position is unknown: it must not poll again
                raise ConsumerLost(f"{processor.name}: {rewind_error}") from exc
            raise
        self.failures[processor.name] = 0
        self.errors.pop(processor.name, None)
        self.processed[processor.name] = self.processed.get(processor.name, 0) + len(records)
        if result.dead_letters:
            self.dead_lettered[processor.name] = self.dead_lettered.get(processor.name, 0) + len(result.dead_letters)
        return len(records)

    def catch_up(self, timeout: float = 120.0) -> dict[str, int]:
        """Process until every processor has committed up to the end of its topics as they were
        when the call began (used by the demo, replay, tests, and the ingest node's SOP index).
        A failing batch is retried with backoff until ``timeout``; then the last error is raised.

        Ends by offsets, not by an empty poll: on Kafka the first polls are empty while the
        consumer joins its group."""
        done: dict[str, int] = {}
        for processor, sink in self._bindings:
            group = group_id(processor)
            targets = {t: self._log.end_offsets(t) for t in processor.topics}
            deadline = time.monotonic() + timeout
            total = 0
            while not self._reached(group, targets):
                with self._log.consumer(group, processor.topics) as consumer:
                    while not self._reached(group, targets):
                        try:
                            total += self.run_once(processor, sink, consumer, timeout=0.5)
                        except Exception as exc:
                            wait = backoff(self.failures.get(processor.name, 1))
                            if time.monotonic() + wait > deadline:
                                raise
                            log.warning("%s: batch not applied (%s); retrying in %.2f s", processor.name, exc, wait)
                            time.sleep(wait)
                            if isinstance(exc, ConsumerLost):
                                break
                            continue
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{processor.name} did not catch up within {timeout} s")
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
        while not self._stop.is_set():
            try:
                consumer = self._log.consumer(group_id(processor), processor.topics)
            except Exception:
                log.exception("processor %s cannot join its group; retrying", processor.name)
                self._stop.wait(1.0)
                continue
            with consumer:
                while not self._stop.is_set():
                    try:
                        self.run_once(processor, sink, consumer, timeout=0.2, linger=self._linger)
                    except Exception as exc:  # keep the thread alive; the batch was not committed
                        wait = backoff(self.failures.get(processor.name, 1))
                        log.exception("processor %s failed on a batch; retrying in %.2f s", processor.name, wait)
                        self._stop.wait(wait)
                        if isinstance(exc, ConsumerLost):
                            break  # join again: the new member starts at the committed offsets

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()


Factory = Callable[[], Sequence[tuple[Processor, Sink]]]
