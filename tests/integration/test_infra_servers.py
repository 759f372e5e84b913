"""The infra/ scripts start real servers that keep their data across a crash (SIGKILL) and a restart.

Each test starts its own server on free ports in a temporary directory (the session-wide servers in
conftest.py are shared and must not be killed).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from confluent_kafka import Consumer, KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests.support.kafka_topics import consume_all
from tests.support.servers import KafkaServer, MinioServer, ServerError, free_port

# ---- Kafka -----------------------------------------------------------------------------------------


@pytest.fixture
def kafka(tmp_path: Path) -> Iterator[KafkaServer]:
    server = KafkaServer(tmp_path / "kafka")
    server.start()
    yield server
    server.stop()


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    futures[topic].result(timeout=30)


def _produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> tuple[int, int]:
    """Produce one record with acks=all and return (partition, offset) from its delivery report."""
    reports: list[Message] = []
    errors: list[KafkaError] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            errors.append(err)
        else:
            reports.append(msg)

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, key=key, value=value, on_delivery=on_delivery)
    remaining = producer.flush(30)
    assert remaining == 0, "record not delivered within 30 s"
    assert not errors, errors
    assert len(reports) == 1
    partition, offset = reports[0].partition(), reports[0].offset()
    assert partition is not None and offset is not None
    return partition, offset


def _port_accepts(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.kafka
def test_kafka_broker_runs_with_the_configured_settings(kafka: KafkaServer) -> None:
    assert kafka.is_running()
    assert kafka.bootstrap == f"127.0.0.1:{kafka.port}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    assert [b.port for b in admin.list_topics(timeout=10).brokers.values()] == [kafka.port]

    # num.partitions=6 is the broker default for new topics.
    topic = "infra-defaults"
    admin.create_topics([NewTopic(topic, num_partitions=-1, replication_factor=-1)])[topic].result(timeout=30)
    # the controller has the topic once the call returns; the metadata a broker answers with may
    # lag it by a moment
    deadline = time.monotonic() + 30
    while topic not in (listed := admin.list_topics(timeout=10).topics) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(listed[topic].partitions) == 6

    # auto.create.topics.enable=false: producing to an unknown topic fails and creates nothing.
    errors: list[KafkaError | None] = []
    producer = Producer({"bootstrap.servers": kafka.bootstrap, "message.timeout.ms": 2000})
    producer.produce("infra-never-created", b"x", on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(15) == 0
    assert len(errors) == 1 and errors[0] is not None
    assert "infra-never-created" not in admin.list_topics(timeout=10).topics

    # group.min.session.timeout.ms=1000: a consumer with a 1 s session timeout may join.
    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": "infra-short-session",
            "session.timeout.ms": 1000,
            "heartbeat.interval.ms": 300,
        }
    )
    assigned: list[Any] = []
    try:
        consumer.subscribe([topic], on_assign=lambda _c, partitions: assigned.extend(partitions))
        deadline = time.monotonic() + 30
        while not assigned and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            assert msg is None or msg.error() is None, msg.error() if msg else None
    finally:
        consumer.close()
    assert len(assigned) == 6

    # slf4j 2 + log4j2 on the class path: the broker really logs, into its data dir.
    server_log = (kafka.data_dir / "logs" / "server.log").read_text()
    assert "Kafka Server started" in server_log


@pytest.mark.kafka
def test_kafka_record_survives_sigkill_and_restart(kafka: KafkaServer) -> None:
    topic = "infra-durability"
    _create_topic(kafka.bootstrap, topic, partitions=1)
    first = _produce(kafka.bootstrap, topic, b"study-1", b"before crash")
    assert first == (0, 0)
    assert consume_all(kafka.bootstrap, topic, expected=1) == [(b"study-1", b"before crash")]

    kafka.kill()
    assert not kafka.is_running()
    assert not _port_accepts(kafka.port)

    kafka.restart()
    assert kafka.is_running()
    assert topic in AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10).topics
    second = _produce(kafka.bootstrap, topic, b"study-2", b"after restart")
    assert second == (0, 1)
    assert consume_all(kafka.bootstrap, topic, expected=2) == [
        (b"study-1", b"before crash"),
        (b"study-2", b"after restart"),
    ]


@pytest.mark.kafka
def test_kafka_graceful_stop_then_start_keeps_data(kafka: KafkaServer) -> None:
    topic = "infra-graceful"
    _create_topic(kafka.bootstrap, topic, partitions=3)
    _produce(kafka.bootstrap, topic, b"k", b"v")

    kafka.stop()
    assert not kafka.is_running()
    kafka.stop()  # stopping a stopped broker is a no-op

    kafka.start()
    metadata = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=10)
    assert len(metadata.topics[topic].partitions) == 3
    assert consume_all(kafka.bootstrap, topic, expected=1) == [(b"k", b"v")]


@pytest.mark.kafka
def test_kafka_start_on_a_busy_port_fails_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = KafkaServer(tmp_path / "kafka", port=port)
        with pytest.raises(ServerError, match=f"port {port} is already in use"):
            server.start()
        assert not server.is_running()


# ---- MinIO -----------------------------------------------------------------------------------------


@pytest.fixture
def minio(tmp_path: Path) -> Iterator[MinioServer]:
    server = MinioServer(tmp_path / "minio", port=free_port())
    server.start()
    yield server
    server.stop()


def _s3(server: MinioServer) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


@pytest.mark.s3
def test_minio_object_survives_sigkill_and_restart(minio: MinioServer) -> None:
    assert minio.is_running()
    assert minio.endpoint == f"http://127.0.0.1:{minio.port}"
    body = uuid.uuid4().bytes * 4096  # 64 KiB
    s3 = _s3(minio)
    s3.create_bucket(Bucket="cami-infra")
    s3.put_object(Bucket="cami-infra", Key="blobs/ab/cdef", Body=body)
    assert s3.get_object(Bucket="cami-infra", Key="blobs/ab/cdef")["Body"].read() == body

    minio.kill()
    assert not minio.is_running()
    assert not _port_accepts(minio.port)

    minio.restart()
    assert minio.is_running()
    s3 = _s3(minio)
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["cami-infra"]
    assert s3.get_object(Bucket="cami-infra", Key="blobs/ab/cdef")["Body"].read() == body


@pytest.mark.s3
def test_minio_rejects_wrong_credentials(minio: MinioServer) -> None:
    s3 = boto3.client(
        "s3",
        endpoint_url=minio.endpoint,
        aws_access_key_id=minio.access_key,
        aws_secret_access_key="not-the-secret",
        region_name="us-east-1",
    )
    with pytest.raises(s3.exceptions.ClientError) as excinfo:
        s3.list_buckets()
    assert excinfo.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


@pytest.mark.s3
def test_minio_graceful_stop_then_start_keeps_data(minio: MinioServer) -> None:
    s3 = _s3(minio)
    s3.create_bucket(Bucket="cami-graceful")
    s3.put_object(Bucket="cami-graceful", Key="k", Body=b"v")

    minio.stop()
    assert not minio.is_running()
    minio.start()
    assert _s3(minio).get_object(Bucket="cami-graceful", Key="k")["Body"].read() == b"v"
