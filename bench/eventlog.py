"""Event log throughput: CAMI's two backends against raw confluent-kafka, in one run.

    python bench/eventlog.py [--events 100000] [--bootstrap HOST:PORT] [--json]

Without ``--bootstrap`` a Kafka broker is started on loopback (infra/kafka.sh) and stopped at
the end. The anchor is plain confluent-kafka (same broker, same bytes, same keys, acks=all,
idempotent) producing with ``produce()``/``flush()`` and consuming with ``consume()``; every
CAMI figure is printed as a ratio to it. Measured:

* bulk append: all events in flight at once, done when every one is acknowledged durable;
* single append: one event at a time, each waiting for its acknowledgement (what one C-STORE
  handler sees); reported as events/s and mean latency;
* consume: a fresh consumer group reads everything back (and commits, for CAMI).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from confluent_kafka import Consumer, Producer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from schemas.codec import encode  # noqa: E402
from schemas.events import new_event  # noqa: E402
from streams import EventLog, TopicSpec, open_event_log  # noqa: E402

console = Console(stderr=True)
PARTITIONS = 6


def make_events(count: int) -> list[tuple[bytes, bytes]]:
    """Realistic InstanceReceived events: ~100 instances per study, keyed by study UID."""
    out = []
    studies = [f"1.2.826.0.1.3680043.8.498.{uuid.uuid4().int % 10**20}" for _ in range(max(1, count // 100))]
    template = new_event(
        "InstanceReceived",
        {
            "StudyInstanceUID": studies[0],
            "SeriesInstanceUID": studies[0] + ".1",
            "SOPInstanceUID": studies[0] + ".1.1",
            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
            "TransferSyntaxUID": "1.2.840.10008.1.2.1",
            "PatientID": "P-123456",
            "PatientName": "Кузнецов^Алексей^Петрович",
            "PatientBirthDate": "19650412",
            "PatientSex": "M",
            "Modality": "CT",
            "StudyDate": "20261124",
            "AccessionNumber": "A-2026-000123",
            "PerformingPhysician": {"code": "D-0042", "name": "Орлова^Мария"},
            "blob": {"sha256": "ab" * 32, "size": 526_000, "store": "s3://cami"},
            "channel": "dicom",
        },
        aggregate_id=studies[0],
        source_node="OKB_CT1",
        organisation="1.2.643.5.1.13.13.12.2.50.1001",
    )
    value = encode(template)  # the same bytes for every event: we measure the log, not the codec
    for i in range(count):
        out.append((studies[i % len(studies)].encode(), value))
    return out


def timed(fn: Callable[[], int]) -> tuple[int, float]:
    start = time.perf_counter()
    n = fn()
    return n, time.perf_counter() - start


# -- anchor: raw confluent-kafka ------------------------------------------------------------------
def raw_produce(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> int:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "partitioner": "murmur2_random",
        }
    )
    failures: list[Any] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(err)

    for key, value in events:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    producer.flush(120)
    if failures:
        raise RuntimeError(f"raw producer: {len(failures)} failed deliveries, e.g. {failures[0]}")
    return len(events)


def raw_single(bootstrap: str, topic: str, events: list[tuple[bytes, bytes]]) -> int:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 2,
            "partitioner": "murmur2_random",
        }
    )
    for key, value in events:
        producer.produce(topic, value=value, key=key)
        producer.flush(30)
    return len(events)


class FirstRecord:
    """Remembers when the first record arrived, so the group join is not counted as reading."""

    at: float | None = None

    @classmethod
    def seen(cls) -> None:
        if cls.at is None:
            cls.at = time.perf_counter()


def raw_consume(bootstrap: str, topic: str, expected: int) -> int:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 300
    while got < expected and time.monotonic() < deadline:
        batch = sum(1 for m in consumer.consume(1000, 1.0) if m.error() is None)
        if batch:
            FirstRecord.seen()
            got += batch
    consumer.close()
    return got


# -- CAMI ------------------------------------------------------------------------------------------
def cami_produce(log: EventLog, topic: str, events: list[tuple[bytes, bytes]]) -> int:
    return len(log.append_many(topic, events, timeout=300))


def cami_single(log: EventLog, topic: str, events: list[tuple[bytes, bytes]]) -> int:
    for key, value in events:
        log.append(topic, key, value)
    return len(events)


def cami_consume(log: EventLog, topic: str, expected: int) -> int:
    got = 0
    deadline = time.monotonic() + 300
    with log.consumer(f"bench-{uuid.uuid4()}", [topic]) as consumer:
        while got < expected and time.monotonic() < deadline:
            records = consumer.poll(1000, 1.0)
            if records:
                FirstRecord.seen()
                consumer.commit(records)
                got += len(records)
    return got


def run(args: argparse.Namespace) -> dict[str, Any]:
    events = make_events(args.events)
    single = events[: args.single]
    results: dict[str, dict[str, float]] = {}

    def measure(
        name: str, produce: Callable[[], int], single_fn: Callable[[], int], consume: Callable[[], int]
    ) -> None:
        with console.status(f"{name}: bulk append of {len(events)} events"):
            n, secs = timed(produce)
        assert n == len(events), f"{name}: {n} of {len(events)} appended"
        with console.status(f"{name}: {len(single)} single appends"):
            m, single_secs = timed(single_fn)
        with console.status(f"{name}: consuming"):
            FirstRecord.at = None
            started = time.perf_counter()
            c, _ = timed(consume)
            finished = time.perf_counter()
        assert c >= len(events), f"{name}: consumed {c} of {len(events)}"
        first = FirstRecord.at or started
        consume_secs = max(finished - first, 1e-9)
        results[name] = {
            "append_per_s": n / secs,
            "single_append_per_s": m / single_secs,
            "single_append_ms": single_secs / m * 1000,
            "consume_per_s": c / consume_secs,
            "first_record_s": first - started,
        }
        console.print(f"{name}: done")

    with tempfile.TemporaryDirectory(prefix="cami-bench-") as tmp:
        server = None
        bootstrap = args.bootstrap
        if not bootstrap:
            from tests.support.servers import KafkaServer

            server = KafkaServer(Path(tmp) / "kafka")
            with console.status("starting Kafka"):
                server.start()
            bootstrap = server.bootstrap
        try:
            with open_event_log(f"kafka://{bootstrap}") as kafka_log:
                topics = {name: f"bench.{name}.{uuid.uuid4().hex[:8]}" for name in ("raw", "cami")}
                kafka_log.ensure_topics([TopicSpec(t, PARTITIONS) for t in topics.values()])
                measure(
                    "confluent-kafka (anchor)",
                    lambda: raw_produce(bootstrap, topics["raw"], events),
                    lambda: raw_single(bootstrap, topics["raw"], single),
                    lambda: raw_consume(bootstrap, topics["raw"], len(events)),
                )
                measure(
                    "CAMI kafka",
                    lambda: cami_produce(kafka_log, topics["cami"], events),
                    lambda: cami_single(kafka_log, topics["cami"], single),
                    lambda: cami_consume(kafka_log, topics["cami"], len(events)),
                )
            with open_event_log(f"sqlite://{tmp}/events.db") as embedded:
                embedded.ensure_topics([TopicSpec("bench", PARTITIONS)])
                measure(
                    "CAMI embedded",
                    lambda: cami_produce(embedded, "bench", events),
                    lambda: cami_single(embedded, "bench", single),
                    lambda: cami_consume(embedded, "bench", len(events)),
                )
        finally:
            if server is not None:
                server.stop()
    anchor = results["confluent-kafka (anchor)"]
    ratios = {
        name: {k: r[k] / anchor[k] for k in ("append_per_s", "single_append_per_s", "consume_per_s")}
        for name, r in results.items()
    }
    return {
        "events": len(events),
        "single_appends": len(single),
        "event_bytes": len(events[0][1]),
        "results": results,
        "ratio_to_anchor": ratios,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000, help="events per bulk run (default 100000)")
    parser.add_argument("--single", type=int, default=500, help="events appended one at a time (default 500)")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting one")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    table = Table(
        title=f"event log: {report['events']} events of {report['event_bytes']} bytes, "
        f"{report['single_appends']} single appends; ratio = CAMI / raw confluent-kafka"
    )
    for col in ("backend", "bulk append/s", "ratio", "single append/s", "ms each", "ratio", "consume/s", "ratio"):
        table.add_column(col, justify="right")
    for name, r in report["results"].items():
        q = report["ratio_to_anchor"][name]
        table.add_row(
            name,
            f"{r['append_per_s']:,.0f}",
            f"{q['append_per_s']:.2f}",
            f"{r['single_append_per_s']:,.0f}",
            f"{r['single_append_ms']:.2f}",
            f"{q['single_append_per_s']:.2f}",
            f"{r['consume_per_s']:,.0f}",
            f"{q['consume_per_s']:.2f}",
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
