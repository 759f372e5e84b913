"""Reading a Kafka topic as a plain client would, for the tests of the infrastructure itself
(no CAMI code in between)."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer, KafkaException


def consume_all(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0, *, commit: bool = False
) -> list[tuple[bytes, bytes]]:
    """(key, value) of the topic's records from the beginning, read by a fresh group until
    ``expected`` arrived or ``timeout_s`` passed; with ``commit`` the group's offsets are committed
    at the end (which makes the broker create ``__consumer_offsets``)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"infra-test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
        }
    )
    records: list[tuple[bytes, bytes]] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout_s
        while len(records) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                raise KafkaException(msg.error())
            key, value = msg.key(), msg.value()
            assert isinstance(value, bytes)
            records.append((key if isinstance(key, bytes) else b"", value))
        if commit:
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return records
