"""One contract, two backends: the embedded SQLite log and a real Apache Kafka broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from streams import EventLog, EventLogError, Record, TopicSpec, open_event_log
from streams.partitioning import partition_for
from tests.support.paths import ROOT


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite://{tmp_path}/events.db"
    server: Any = request.getfixturevalue("kafka_server")
    return f"kafka://{server.bootstrap}?delivery_timeout_ms=10000"


@pytest.fixture
def log(log_url: str) -> Iterator[EventLog]:
    with open_event_log(log_url) as event_log:
        yield event_log


@pytest.fixture
def topic(log: EventLog) -> str:
    name = f"test.{uuid.uuid4().hex[:12]}"
    log.ensure_topics([TopicSpec(name, partitions=3)])
    return name


def drain(consumer: Any, expected: int, timeout: float = 30.0) -> list[Record]:
    """Poll until ``expected`` records arrived (or fail with what did)."""
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(consumer.poll(500, 0.5))
    assert len(got) == expected, f"expected {expected} records, got {len(got)}"
    return got


def test_append_is_readable_back_with_key_value_and_headers(log: EventLog, topic: str) -> None:
    pos = log.append(topic, b"1.2.3", b"\x00\xffbinary", headers=[("event_type", b"InstanceReceived")])
    assert pos.topic == topic
    assert pos.partition == partition_for(b"1.2.3", 3)
    [record] = log.read(topic, pos.partition, pos.offset, 10)
    assert (record.key, record.value, record.offset) == (b"1.2.3", b"\x00\xffbinary", pos.offset)
    assert ("event_type", b"InstanceReceived") in record.headers
    assert record.timestamp_ms > 0


def test_order_is_kept_per_key_and_keys_map_to_kafka_partitions(log: EventLog, topic: str) -> None:
    keys = [f"1.2.840.{k}".encode() for k in range(8)]
    items = [(key, f"{key.decode()}#{i}".encode()) for i in range(40) for key in keys]
    positions = log.append_many(topic, items)
    for (key, _), pos in zip(items, positions, strict=True):
        assert pos.partition == partition_for(key, 3)  # same partition on both backends, as Java
    with log.consumer(f"g-{uuid.uuid4().hex}", [topic]) as consumer:
        records = drain(consumer, len(items))
    per_key: dict[bytes, list[int]] = defaultdict(list)
    for r in records:
        per_key[r.key].append(int(r.value.split(b"#")[1]))
    assert set(per_key) == set(keys)
    for key, sequence in per_key.items():
        assert sequence == list(range(40)), f"order broken for {key!r}"


def test_group_resumes_from_committed_offsets(log: EventLog, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex}"
    log.append_many(topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(30)])
    with log.consumer(group, [topic]) as first:
        records = drain(first, 30)
        first.commit(records)
    assert log.committed(group, topic) == log.end_offsets(topic)
    assert log.lag(group, topic) == 0
    log.append_many(topic, [(f"k{i}".encode(), f"late{i}".encode()) for i in range(5)])
    assert log.lag(group, topic) == 5
    with log.consumer(group, [topic]) as second:
        later = drain(second, 5)
        assert sorted(r.value for r in later) == sorted(f"late{i}".encode() for i in range(5))
        assert second.poll(100, 1.0) == []


def test_rewind_delivers_again_what_was_polled_since_the_last_commit(log: EventLog, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex}"
    log.append_many(topic, [(f"k{i}".encode(), f"v{i}".encode()) for i in range(20)])
    with log.consumer(group, [topic]) as consumer:
        first = drain(consumer, 20)
        done = [r for r in first if r.offset < 3]  # a few applied per partition, the rest failed
        consumer.commit(done)
        consumer.rewind()
        again = drain(consumer, 20 - len(done))
        assert {(r.partition, r.offset) for r in again} == {(r.partition, r.offset) for r in first} - {
            (r.partition, r.offset) for r in done
        }
        consumer.commit(again)
        consumer.rewind()  # nothing polled since the commit: nothing comes back
        assert consumer.poll(100, 1.0) == []
    assert log.lag(group, topic) == 0


def test_replay_from_zero_returns_every_event_again(log: EventLog, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex}"
    sent = [(f"k{i % 4}".encode(), f"v{i}".encode()) for i in range(25)]
    log.append_many(topic, sent)
    with log.consumer(group, [topic]) as consumer:
        first = drain(consumer, 25)
        consumer.commit(first)
        consumer.seek_to_beginning()
        again = drain(consumer, 25)
    assert sorted(r.value for r in again) == sorted(v for _, v in sent)
    # and without any group at all, partition by partition
    by_read = [r for p in log.partitions(topic) for r in log.read(topic, p, 0, 1000)]
    assert sorted(r.value for r in by_read) == sorted(v for _, v in sent)


def test_unknown_topic_is_refused(log: EventLog) -> None:
    with pytest.raises(EventLogError):
        log.append(f"no.such.topic.{uuid.uuid4().hex[:8]}", b"k", b"v", timeout=20)


def _spawn(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.support.logproc", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _read_lines(proc: subprocess.Popen[str], prefix: str, count: int, timeout: float = 60) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while len(lines) < count:
        assert time.monotonic() < deadline, f"only {len(lines)} of {count} {prefix!r} lines"
        line = proc.stdout.readline()
        assert line, f"process ended after {len(lines)} {prefix!r} lines"
        if line.startswith(prefix):
            lines.append(line.strip())
    return lines


def test_a_member_that_has_read_everything_sees_new_events_from_this_and_other_processes(
    log: EventLog, log_url: str, topic: str
) -> None:
    """An idle member does not read the log again until something was committed to it (the
    embedded log checks SQLite's data_version): appends by this process and by another one still
    reach it, and a rewind delivers again what it had read."""
    group = f"g-{uuid.uuid4().hex}"
    log.append_many(topic, [(f"k{i}".encode(), f"before-{i}".encode()) for i in range(6)])
    with log.consumer(group, [topic]) as member:
        assert len(drain(member, 6)) == 6
        assert member.poll(500, 0.3) == []  # read to the end: the next polls find nothing new
        log.append(topic, b"k1", b"same-process")
        assert [r.value for r in drain(member, 1)] == [b"same-process"]
        proc = _spawn("append", log_url, topic, "3")
        try:
            assert len(_read_lines(proc, "acked ", 3)) == 3
        finally:
            os.killpg(proc.pid, signal.SIGKILL)  # it waits after its appends
            proc.wait()
        assert sorted(r.value for r in drain(member, 3)) == [b"event-0", b"event-1", b"event-2"]
        member.rewind()  # nothing committed: everything comes back
        assert len(drain(member, 10)) == 10


def test_uncommitted_events_are_redelivered_after_a_consumer_crash(log: EventLog, log_url: str, topic: str) -> None:
    group = f"g-{uuid.uuid4().hex}"
    log.append_many(topic, [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(40)])
    proc = _spawn("consume", log_url, group, topic, "15")
    try:
        got = _read_lines(proc, "got ", 15)
        _read_lines(proc, "committed", 1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # crash: no close, no further commit
        proc.wait()
    committed = log.committed(group, topic)
    assert sum(committed.values()) == 15
    del got
    with log.consumer(group, [topic]) as survivor:
        redelivered = drain(survivor, 25, timeout=60)
    for r in redelivered:  # nothing committed comes back; everything uncommitted does
        assert r.offset >= committed.get(r.partition, 0)
    assert len({(r.partition, r.offset) for r in redelivered}) == 25


def test_acknowledged_events_survive_kill_9_of_the_writer(
    log_url: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    topic = f"test.{uuid.uuid4().hex[:12]}"
    with open_event_log(log_url) as setup:
        setup.ensure_topics([TopicSpec(topic, partitions=3)])
    proc = _spawn("append", log_url, topic, "100000")
    try:
        acked = _read_lines(proc, "acked ", 300)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # mid-stream: more appends were in flight
        proc.wait()
    if "kafka" in request.node.callspec.id:
        # and the broker itself crashes too: kill -9, restart on the same data
        server: Any = request.getfixturevalue("kafka_server")
        server.kill()
        server.restart()
    with open_event_log(log_url) as after:
        stored = {
            (r.partition, r.offset): (r.key, r.value)
            for p in after.partitions(topic)
            for r in after.read(topic, p, 0, 200_000)
        }
    for line in acked:
        _, partition, offset, key, value = line.split()
        assert stored.get((int(partition), int(offset))) == (key.encode(), value.encode()), line


def test_scan_returns_everything_up_to_the_given_ends_in_partition_order(log: EventLog, topic: str) -> None:
    sent = [(f"k{i % 5}".encode(), f"v{i}".encode()) for i in range(120)]
    log.append_many(topic, sent)
    ends = {topic: log.end_offsets(topic)}
    log.append_many(topic, [(b"k0", b"after-the-ends")])  # not part of the scan
    seen: dict[int, list[int]] = defaultdict(list)
    values = []
    for batch in log.scan(ends, batch_size=7):
        for record in batch:
            seen[record.partition].append(record.offset)
            values.append(record.value)
    assert sorted(values) == sorted(v for _, v in sent)
    for partition, offsets in seen.items():
        assert offsets == list(range(ends[topic][partition]))


def test_scan_from_given_starts_returns_only_what_lies_between(log: EventLog, topic: str) -> None:
    """A rebuild's catch-up pass: from the offsets a previous pass ended at to the new ends."""
    log.append_many(topic, [(f"k{i % 5}".encode(), f"old{i}".encode()) for i in range(60)])
    starts = {topic: log.end_offsets(topic)}
    newer = [(f"k{i % 5}".encode(), f"new{i}".encode()) for i in range(45)]
    log.append_many(topic, newer)
    ends = {topic: log.end_offsets(topic)}
    seen: dict[int, list[int]] = defaultdict(list)
    values = []
    for batch in log.scan(ends, batch_size=4, starts=starts):
        for record in batch:
            seen[record.partition].append(record.offset)
            values.append(record.value)
    assert sorted(values) == sorted(v for _, v in newer)
    for partition, offsets in seen.items():
        assert offsets == list(range(starts[topic].get(partition, 0), ends[topic][partition]))
    assert list(log.scan(ends, starts=ends)) == []  # nothing between a position and itself


def test_health_says_an_append_would_be_durable_and_names_a_missing_topic(log: EventLog, topic: str) -> None:
    healthy = log.health([topic], timeout=5)
    assert healthy.status == "ok", healthy.detail
    missing = log.health([topic, "test.no-such-topic"], timeout=5)
    assert missing.status == "down"
    assert "test.no-such-topic" in missing.detail
