"""Kafka event log on confluent-kafka (librdkafka).

Producer: idempotent, ``acks=all``, Java-compatible ``murmur2_random`` partitioner; ``append``
returns when the delivery report arrives, which with ``acks=all`` means every in-sync replica
has the event. A background thread serves delivery callbacks (``poll``) so many appends can be
in flight at once. Consumers never auto-commit: a processor commits after it has applied what it
polled, which is what makes delivery at-least-once.

Start: the first request that needs the cluster (creating the topics, as every ``cami`` command
does) waits up to ``start_wait`` seconds (``CAMI_KAFKA_WAIT``) for a broker that is not up yet,
saying so in one line when it begins and one when it got through; after that it fails with
:class:`KafkaUnreachable`, one line naming the bootstrap addresses. Later outages are not waited
for: an append then fails within ``delivery_timeout_ms`` and the sender is told so.

The clients' own log lines and errors all go to one :class:`~streams.kafka_client_log.KafkaClientLog`,
which logs one line per change of the brokers' reachability instead of one per reconnection.
Topic and group names go through :class:`~streams.topics.TopicNames` (the ``topic_prefix``).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka import Consumer as _KafkaConsumer
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec  # type: ignore[attr-defined]

from streams.errors import OperatorError
from streams.health import Health
from streams.kafka_client_log import KafkaClientLog, tcp_probe
from streams.log import Consumer, EventLog, EventLogError, EventLogUnavailable, Position, Record, TopicSpec
from streams.topics import ARCHIVE_PREFIX, TopicNames

log = logging.getLogger("cami.kafka")

#: seconds the first request waits for a broker that is not up yet (``CAMI_KAFKA_WAIT``)
DEFAULT_START_WAIT = 120.0
#: seconds a look-up of end offsets waits for partitions without a leader to get one
LEADER_WAIT_SECONDS = 60.0


class KafkaUnreachable(EventLogUnavailable, OperatorError):
    """No broker answered within the start wait: the message names the bootstrap addresses."""


class KafkaEventLog(EventLog):
    backend = "kafka"

    def __init__(
        self,
        bootstrap: str,
        *,
        replication_factor: int = 1,
        min_insync_replicas: int | None = None,
        delivery_timeout_ms: int = 15_000,
        client_id: str = "cami",
        extra_config: Mapping[str, Any] | None = None,
        topic_prefix: str = ARCHIVE_PREFIX,
        start_wait: float = DEFAULT_START_WAIT,
    ) -> None:
        self.bootstrap = bootstrap
        self.replication_factor = replication_factor
        self.min_insync_replicas = min_insync_replicas
        #: the archive's topic and group names as this log names them on the brokers
        self.names = TopicNames(topic_prefix)
        self.start_wait = start_wait
        self._reached = False
        self._reach_lock = threading.Lock()
        #: where every client's log lines and errors go: one line per change of reachability, once
        #: a broker has answered (before, :meth:`wait_for_broker` says what happens)
        self.client_log = KafkaClientLog(bootstrap)
        self._common: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            # librdkafka's own log lines go through Python logging instead of raw stderr
            "logger": self.client_log,
            "error_cb": self.client_log.error,
        }
        self._common.update(extra_config or {})
        self._producer = Producer(
            {
                **self._common,
                "enable.idempotence": True,
                "acks": "all",
                "partitioner": "murmur2_random",
                # a C-STORE waits for its event: do not hold it back to build batches (batches form
                # anyway while earlier requests are in flight)
                "linger.ms": 0.2,
                # how long an append may wait for the broker before it fails (the sender then
                # gets a failure status, never a success for an event that is not durable)
                "message.timeout.ms": delivery_timeout_ms,
            }
        )
        self._admin = AdminClient(self._common)
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="cami-kafka-delivery", daemon=True)
        self._poller.start()
        self._reader_lock = threading.Lock()
        self._reader: _KafkaConsumer | None = None
        self._reader_at: tuple[str, int, int] | None = None
        #: non-subscribed consumers used only to look up a group's committed offsets
        self._offsets_lock = threading.Lock()
        self._offset_readers: dict[str, _KafkaConsumer] = {}

    def _poll_loop(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    # -- topics ----------------------------------------------------------------------------------
    def ensure_topics(self, topics: Iterable[TopicSpec]) -> None:
        wanted = [self.names.physical(spec.name) for spec in topics]
        specs = dict(zip(wanted, topics, strict=True))
        existing = set(self._metadata(None).topics)
        new = []
        for name, spec in specs.items():
            if name in existing:
                continue
            config = {"retention.ms": str(spec.retention_ms), **spec.config}
            if self.min_insync_replicas is not None:
                config["min.insync.replicas"] = str(self.min_insync_replicas)
            new.append(NewTopic(name, spec.partitions, self.replication_factor, config=config))
        if new:
            for name, future in self._admin.create_topics(new, operation_timeout=30).items():
                try:
                    future.result()
                except KafkaException as exc:
                    if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                        raise EventLogError(f"cannot create topic {name}: {exc}") from exc
        # wait until every partition has a leader, so the first append does not race creation
        deadline = time.monotonic() + 30
        for name in wanted:
            while True:
                meta = self._metadata(name).topics.get(name)
                if (
                    meta is not None
                    and meta.error is None
                    and meta.partitions
                    and all(p.leader >= 0 for p in meta.partitions.values())
                ):
                    break
                if time.monotonic() > deadline:
                    raise EventLogUnavailable(f"topic {name} has no leader after 30 s")
                time.sleep(0.1)

    def _metadata(self, topic: str | None) -> Any:
        """The cluster's metadata (``topic``: a name on the brokers); the first call waits for a
        broker (:meth:`wait_for_broker`)."""
        if not self._reached:
            self.wait_for_broker()
        try:
            meta = self._admin.list_topics(topic=topic, timeout=10)
        except KafkaException as exc:
            raise EventLogUnavailable(f"Kafka at {self.bootstrap} is unreachable: {exc}") from exc
        self.client_log.brokers(f"{b.host}:{b.port}" for b in meta.brokers.values())
        return meta

    def wait_for_broker(self, timeout: float | None = None) -> None:
        """Return once a broker answers, waiting up to ``timeout`` seconds (default
        ``start_wait``) for one that is not up yet: one line when the wait begins, one when it
        ends; :class:`KafkaUnreachable` when no broker answered."""
        wait = self.start_wait if timeout is None else timeout
        with self._reach_lock:
            if self._reached:
                return
            started = time.monotonic()
            deadline = started + wait
            waiting = False
            for attempt in itertools.count():
                tried = time.monotonic()
                try:
                    # short first tries: the line that says it waits comes at once
                    meta = self._admin.list_topics(timeout=max(0.5, min(deadline - tried, 10.0, 2.0**attempt)))
                    break
                except KafkaException as exc:
                    why = self._why_unreachable(exc)
                if time.monotonic() >= deadline - 0.05:
                    if waiting:
                        log.error("gave up waiting for Kafka at %s after %.0f s", self.bootstrap, wait)
                    within = f" within {wait:g} s" if wait >= 1 else ""
                    raise KafkaUnreachable(
                        f"Kafka at {self.bootstrap} is unreachable: no broker answered{within} ({why});"
                        " start the brokers or correct the addresses in CAMI_EVENT_LOG"
                        " (CAMI_KAFKA_WAIT says how long to wait for them)"
                    )
                if not waiting:
                    waiting = True
                    where = self.bootstrap
                    log.warning("waiting for Kafka at %s (up to %g s, CAMI_KAFKA_WAIT): %s", where, wait, why)
                time.sleep(max(0.0, min(tried + 1.0, deadline) - time.monotonic()))
            if waiting:
                log.warning("Kafka at %s answered after %.0f s", self.bootstrap, time.monotonic() - started)
            self.client_log.brokers(f"{b.host}:{b.port}" for b in meta.brokers.values())
            self.client_log.start()
            self._reached = True

    def _why_unreachable(self, exc: KafkaException) -> str:
        """What the bootstrap addresses do when connected to (``connection refused``...), else
        librdkafka's words."""
        refused = [f"{address}: {why}" for address in self.bootstrap.split(",") if (why := tcp_probe(address))]
        return "; ".join(refused) or _why(exc)

    def partitions(self, topic: str) -> list[int]:
        name = self.names.physical(topic)
        meta = self._metadata(name).topics.get(name)
        if meta is None or meta.error is not None:
            raise EventLogError(f"unknown topic {name!r}")
        return sorted(meta.partitions)

    # -- append ------------------------------------------------------------------------------------
    def append_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Future[Position]:
        future: Future[Position] = Future()
        if self._closed.is_set():
            future.set_exception(EventLogError("event log is closed"))
            return future

        def delivered(err: KafkaError | None, msg: Message) -> None:
            if err is not None:
                future.set_exception(EventLogUnavailable(f"append to {topic!r} failed: {err.str()}"))
            else:
                self.client_log.start()  # (a process that only appends has reached a broker now)
                future.set_result(Position(topic, msg.partition() or 0, msg.offset() or 0))

        name = self.names.physical(topic)
        while True:
            try:
                self._producer.produce(name, value=value, key=key, headers=list(headers), on_delivery=delivered)
                break
            except BufferError:
                time.sleep(0.01)  # the local queue is full; the poller thread drains it
            except KafkaException as exc:
                future.set_exception(EventLogError(f"append to {topic!r} refused: {exc}"))
                break
        return future

    def append(
        self,
        topic: str,
        key: bytes,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
        timeout: float = 30.0,
    ) -> Position:
        started = time.perf_counter()
        future = self.append_async(topic, key, value, headers)
        # serve delivery reports from this thread too, rather than waiting for the poller's turn
        # (librdkafka allows poll() from several threads; whichever serves the report resolves it)
        deadline = time.monotonic() + timeout
        while not future.done():
            if time.monotonic() > deadline:
                raise EventLogUnavailable(f"append to {topic!r} not confirmed within {timeout} s")
            self._producer.poll(0.001)
        position = future.result()
        if self.on_append is not None:
            self.on_append(topic, time.perf_counter() - started)
        return position

    def append_many(self, topic: str, items: Iterable[tuple[bytes, bytes]], timeout: float = 60.0) -> list[Position]:
        """Bulk path (imports, replays, benchmarks): one light callback per event, no Future each."""
        batch = list(items)
        positions: list[Position | None] = [None] * len(batch)
        errors: list[str] = []
        reported = [0]

        def on_delivery(index: int) -> Callable[[KafkaError | None, Message], None]:
            def delivered(err: KafkaError | None, msg: Message) -> None:
                reported[0] += 1
                if err is not None:
                    errors.append(err.str())
                else:
                    positions[index] = Position(topic, msg.partition() or 0, msg.offset() or 0)

            return delivered

        name = self.names.physical(topic)
        for index, (key, value) in enumerate(batch):
            while True:
                try:
                    self._producer.produce(name, value=value, key=key, on_delivery=on_delivery(index))
                    break
                except BufferError:
                    self._producer.poll(0.01)
                except KafkaException as exc:
                    raise EventLogError(f"append to {topic!r} refused: {exc}") from exc
        deadline = time.monotonic() + timeout
        while reported[0] < len(batch):
            if errors:
                raise EventLogUnavailable(f"{len(errors)} appends to {topic!r} failed, e.g. {errors[0]}")
            if time.monotonic() > deadline:
                raise EventLogUnavailable(f"appends to {topic!r} not confirmed within {timeout} s")
            self._producer.poll(0.01)
        if errors:
            raise EventLogUnavailable(f"{len(errors)} appends to {topic!r} failed, e.g. {errors[0]}")
        return [p for p in positions if p is not None]

    # -- reading -------------------------------------------------------------------------------------
    def _group_consumer(self, group: str, **extra: Any) -> _KafkaConsumer:
        return _KafkaConsumer(
            {
                **self._common,
                "group.id": self.names.physical(group),
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                **extra,
            }
        )

    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._group_consumer(f"cami-reader-{uuid.uuid4()}")
            reader = self._reader
            name = self.names.physical(topic)
            low, high = reader.get_watermark_offsets(TopicPartition(name, partition), timeout=10)
            start = max(offset, low)
            if start >= high:
                return []
            # a sequential reader (replay, audit) continues where it stopped: keep the assignment
            # and what librdkafka already prefetched instead of seeking again
            if self._reader_at != (topic, partition, start):
                reader.assign([TopicPartition(name, partition, start)])
            out: list[Record] = []
            deadline = time.monotonic() + 30
            want = min(max_records, high - start)
            while len(out) < want and time.monotonic() < deadline:
                for msg in reader.consume(num_messages=want - len(out), timeout=1.0):
                    if msg.error() is None:
                        out.append(_record(msg, self.names))
            self._reader_at = (topic, partition, out[-1].offset + 1) if out else None
            if not out:  # records are there (start < high) but none came: not the end of the partition
                raise EventLogUnavailable(f"{topic}[{partition}]: no record from offset {start} within 30 s")
            return out

    def scan(
        self,
        ends: Mapping[str, Mapping[int, int]],
        batch_size: int = 1000,
        starts: Mapping[str, Mapping[int, int]] | None = None,
    ) -> Iterator[list[Record]]:
        """All partitions assigned at once and streamed to their ends (one fetch pipeline instead
        of a seek per read)."""
        first = {
            (t, p): (starts or {}).get(t, {}).get(p, 0) for t, per_partition in ends.items() for p in per_partition
        }
        pending = {
            (t, p): end for t, per_partition in ends.items() for p, end in per_partition.items() if end > first[(t, p)]
        }
        if not pending:
            return
        scanner = self._group_consumer(f"cami-scan-{uuid.uuid4()}")
        try:
            scanner.assign([TopicPartition(self.names.physical(t), p, first[(t, p)]) for t, p in pending])
            idle_since = time.monotonic()
            while pending:
                batch = []
                for msg in scanner.consume(num_messages=batch_size, timeout=1.0):
                    if msg.error() is not None:
                        continue
                    record = _record(msg, self.names)
                    end = pending.get((record.topic, record.partition))
                    if end is None or record.offset >= end:
                        continue
                    batch.append(record)
                    if record.offset >= end - 1:
                        del pending[(record.topic, record.partition)]
                if batch:
                    idle_since = time.monotonic()
                    yield batch
                elif time.monotonic() - idle_since > 30:
                    raise EventLogUnavailable(f"scan stalled with {len(pending)} partitions unfinished")
        finally:
            scanner.close()

    def end_offsets(self, topic: str) -> dict[int, int]:
        def ask() -> dict[int, int]:
            latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
            name = self.names.physical(topic)
            request = {TopicPartition(name, p): latest for p in self.partitions(topic)}
            result = {}
            for tp, future in self._admin.list_offsets(request, request_timeout=10).items():
                offset = future.result().offset
                if offset < 0:
                    # a partition whose leader is gone (a broker just died, no new leader elected
                    # yet) answers OFFSET_INVALID instead of an error: never taken as "empty",
                    # which would make a replay skip the partition
                    raise KafkaException(KafkaError(KafkaError.LEADER_NOT_AVAILABLE, f"{tp.topic}[{tp.partition}]"))
                result[tp.partition] = offset
            return result

        # long enough for the cluster to elect new leaders after a broker is lost (its session
        # timeout, 9 s by default, and the election)
        return _retrying(ask, f"end offsets of {topic}", timeout=LEADER_WAIT_SECONDS)

    def committed(self, group: str, topic: str) -> dict[int, int]:
        # Consumer.committed() rather than AdminClient.list_consumer_group_offsets(): the admin
        # call crashes librdkafka 2.16 (segfault in rd_kafka_cgrp_op) when the group coordinator
        # answers "load in progress", as a freshly started broker does
        def ask() -> dict[int, int]:
            partitions = [TopicPartition(self.names.physical(topic), p) for p in self.partitions(topic)]
            with self._offsets_lock:
                reader = self._offset_readers.get(group)
                if reader is None:
                    reader = self._group_consumer(group)
                    self._offset_readers[group] = reader
                result = reader.committed(partitions, timeout=10)
            return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

        return _retrying(ask, f"committed offsets of {group} on {topic}")

    def consumer(self, group: str, topics: Sequence[str]) -> Consumer:
        return KafkaGroupConsumer(self, group, topics)

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._producer.flush(30)
        self._closed.set()
        self.client_log.close()
        self._poller.join(timeout=5)
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        with self._offsets_lock:
            for reader in self._offset_readers.values():
                reader.close()
            self._offset_readers.clear()

    # -- health (readiness probes) -----------------------------------------------------------------
    def health(self, topics: Sequence[str] = (), timeout: float = 2.0) -> Health:
        """One metadata request, read by :func:`cluster_health` (``topics`` as the code names them)."""
        try:
            meta = self._admin.list_topics(timeout=timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            why = error.str() if error is not None else str(exc)
            return Health.down(f"Kafka {self.bootstrap}: no broker answered within {timeout:g} s ({why})")
        return cluster_health(meta, [self.names.physical(t) for t in topics], self.min_insync_replicas or 1)


def cluster_health(meta: Any, topics: Sequence[str], min_insync: int = 1) -> Health:
    """What the cluster's metadata says of appends to ``topics``: ``down`` without a topic, or
    with a partition that has no leader or fewer in-sync replicas than ``min_insync`` (an
    ``acks=all`` append to it fails); ``degraded`` with a replica out of sync, or a broker that
    holds replicas missing from the brokers up; the brokers up are named."""
    up = {broker.id: f"{broker.host}:{broker.port}" for broker in meta.brokers.values()}
    missing: list[str] = []
    unwritable: list[str] = []
    out_of_sync: list[str] = []
    holders: set[int] = set()
    for name in topics:
        topic = meta.topics.get(name)
        if topic is None or topic.error is not None:
            missing.append(name)
            continue
        for partition in sorted(topic.partitions.values(), key=lambda p: p.id):
            holders.update(partition.replicas)
            where = f"{name}/{partition.id}"
            if partition.leader < 0 or len(partition.isrs) < min_insync:
                unwritable.append(where)
            elif len(partition.isrs) < len(partition.replicas):
                out_of_sync.append(where)
    gone = sorted(holders - set(up))
    brokers = f"{len(up)} broker(s) up ({', '.join(sorted(up.values()))})"
    if gone:
        brokers += f", broker(s) {', '.join(map(str, gone))} down"
    if missing:
        return Health.down(f"{brokers}; no topic {', '.join(missing)}")
    if unwritable:
        why = f"no leader or fewer than {min_insync} replica(s) in sync"
        return Health.down(f"{brokers}; {len(unwritable)} partition(s) take no append ({why}): {_few(unwritable)}")
    if out_of_sync:
        return Health.degraded(f"{brokers}; {len(out_of_sync)} partition(s) under-replicated: {_few(out_of_sync)}")
    if gone:
        return Health.degraded(brokers)
    return Health.ok(brokers)


def _few(names: Sequence[str], shown: int = 5) -> str:
    """The first few of ``names`` and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


T = TypeVar("T")

#: states that pass by themselves (the admin API does not always mark them retriable)
_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.NOT_COORDINATOR,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError._TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
}


def _retrying(ask: Callable[[], T], what: str, timeout: float = 15.0) -> T:
    """Admin look-ups meet transient states (a new partition's leader not elected yet, a broker
    restarting); retry those for a bounded time, fail clearly otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return ask()
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            transient = error is not None and (error.retriable() or error.code() in _TRANSIENT)
            if not transient or time.monotonic() > deadline:
                raise EventLogUnavailable(f"{what}: {exc}") from exc
            time.sleep(0.2)


def _bytes(value: str | bytes | None) -> bytes:
    if value is None:
        return b""
    return value.encode() if isinstance(value, str) else value


def _why(exc: KafkaException) -> str:
    """librdkafka's reason in a few words (``Local: Broker transport failure``...)."""
    error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    return error.str() if error is not None else str(exc)


def _record(msg: Message, names: TopicNames) -> Record:
    _, ts = msg.timestamp()
    return Record(
        topic=names.logical(msg.topic() or ""),
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=_bytes(msg.key()),
        value=_bytes(msg.value()),
        timestamp_ms=ts,
        headers=tuple((str(h[0]), _bytes(h[1])) for h in (msg.headers() or [])),
    )


class KafkaGroupConsumer(Consumer):
    def __init__(self, log: KafkaEventLog, group: str, topics: Sequence[str]) -> None:
        settings = {
            # a crashed worker's partitions move to the survivors within seconds
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
            "partition.assignment.strategy": "cooperative-sticky",
        }
        self._consumer = log._group_consumer(group, **settings)
        #: names on the brokers <-> the archive's; the sets below hold the archive's names
        self._names = log.names
        self._rewind = False
        self._assigned: set[tuple[str, int]] = set()
        self._polled: dict[tuple[str, int], int] = {}
        physical = [self._names.physical(t) for t in topics]
        self._consumer.subscribe(physical, on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _slot(self, tp: TopicPartition) -> tuple[str, int]:
        return self._names.logical(tp.topic), tp.partition

    def _partition(self, topic: str, partition: int, offset: int | None = None) -> TopicPartition:
        name = self._names.physical(topic)
        return TopicPartition(name, partition) if offset is None else TopicPartition(name, partition, offset)

    def _on_assign(self, consumer: _KafkaConsumer, partitions: list[TopicPartition]) -> None:
        if self._rewind:
            for tp in partitions:
                tp.offset = OFFSET_BEGINNING
        self._assigned.update(self._slot(tp) for tp in partitions)
        consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: _KafkaConsumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._assigned.discard(self._slot(tp))
            self._polled.pop(self._slot(tp), None)
        consumer.incremental_unassign(partitions)

    def poll(self, max_records: int = 500, timeout: float = 1.0) -> list[Record]:
        out: list[Record] = []
        for msg in self._consumer.consume(num_messages=max_records, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.fatal():
                    raise EventLogError(f"consumer failed: {err.str()}")
                continue  # transient (e.g. partition EOF, rebalance): librdkafka recovers itself
            record = _record(msg, self._names)
            self._polled[(record.topic, record.partition)] = record.offset + 1
            out.append(record)
        return out

    def commit(self, records: Sequence[Record] | None = None) -> None:
        if records is None:
            offsets = dict(self._polled)
        else:
            offsets = {}
            for r in records:
                slot = (r.topic, r.partition)
                offsets[slot] = max(offsets.get(slot, 0), r.offset + 1)
        # a partition taken away by a rebalance is no longer ours to commit; its new owner
        # re-reads from the last commit (at-least-once)
        owned = [self._partition(t, p, off) for (t, p), off in offsets.items() if (t, p) in self._assigned]
        if not owned:
            return
        try:
            self._consumer.commit(offsets=owned, asynchronous=False)
        except KafkaException as exc:
            raise EventLogError(f"commit failed: {exc}") from exc

    def rewind(self) -> None:
        # only partitions this member has fetched from can be behind their commit (and only those
        # accept a seek: librdkafka refuses one on a partition whose fetcher has not started)
        slots = [self._partition(t, p) for t, p in self._polled if (t, p) in self._assigned]
        if not slots:
            return
        try:
            committed = self._consumer.committed(slots, timeout=10)
            for tp in committed:
                start = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                self._consumer.seek(TopicPartition(tp.topic, tp.partition, start))
        except KafkaException as exc:
            raise EventLogError(f"rewind to the committed offsets failed: {exc}") from exc
        for tp in slots:
            self._polled.pop(self._slot(tp), None)

    def seek_to_beginning(self) -> None:
        self._rewind = True
        for topic, partition in list(self._assigned):
            self._consumer.seek(self._partition(topic, partition, OFFSET_BEGINNING))

    def assignment(self) -> list[tuple[str, int]]:
        return sorted(self._assigned)

    def close(self) -> None:
        self._consumer.close()
