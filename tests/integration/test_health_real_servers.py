"""``/readyz`` on a real Kafka broker and a real MinIO (the pilot combination, ClickHouse embedded):
ready; MinIO killed -> 503 naming the blob store, the event log and the warehouse ok; MinIO back ->
ready; Kafka killed -> 503 naming the event log; Kafka back -> ready. The servers are this module's
own (they are killed), started once for its tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from api.http.health import CACHE_SECONDS
from tests.support.readside import ReadSide
from tests.support.servers import KafkaServer, MinioServer

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.slow]

STUDY = "1.2.826.0.1.3680043.8.498.1718"


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaServer]:
    with KafkaServer(tmp_path_factory.mktemp("kafka")) as server:
        yield server


@pytest.fixture(scope="module")
def minio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio")) as server:
        yield server


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory, kafka: KafkaServer, minio: MinioServer) -> Iterator[ReadSide]:
    env = {
        "CAMI_EVENT_LOG": f"kafka://{kafka.bootstrap}?delivery_timeout_ms=5000",
        # fail fast while S3 is down, as a pilot configures it
        "CAMI_BLOBS": f"s3://cami-health?endpoint={minio.endpoint}&connect_timeout=1&read_timeout=2&max_attempts=1",
        "CAMI_S3_ACCESS_KEY": minio.access_key,
        "CAMI_S3_SECRET_KEY": minio.secret_key,
    }
    with ReadSide.start(tmp_path_factory.mktemp("health"), env=env) as running:
        running.store_study(STUDY, 2)
        running.wait_indexed(STUDY, 2)
        yield running


def _readyz(side: ReadSide, expected: int, timeout: float = 90.0) -> dict[str, Any]:
    """``/readyz`` once it answers ``expected`` (servers take a while to go and to come back)."""
    deadline = time.monotonic() + timeout
    with side.client() as anonymous:
        while True:
            started = time.monotonic()
            answer = anonymous.get("/readyz")
            assert time.monotonic() - started < 5, "a probe must not hang with its backend"
            if answer.status_code == expected or time.monotonic() > deadline:
                assert answer.status_code == expected, answer.text
                body: dict[str, Any] = answer.json()
                return body
            time.sleep(CACHE_SECONDS / 2)


def _states(report: dict[str, Any]) -> dict[str, str]:
    return {name: check["status"] for name, check in report["checks"].items()}


def test_ready_on_kafka_and_minio(side: ReadSide, kafka: KafkaServer, minio: MinioServer) -> None:
    report = _readyz(side, 200)
    assert report["status"] == "ready", report
    assert set(_states(report).values()) == {"ok"}
    checks = report["checks"]
    assert f"1 broker(s) up ({kafka.bootstrap})" in checks["event_log"]["detail"]
    assert f"s3://cami-health at {minio.endpoint}" in checks["blobs"]["detail"]
    assert minio.secret_key not in str(report)


def test_minio_killed_then_back(side: ReadSide, minio: MinioServer) -> None:
    minio.kill()
    try:
        report = _readyz(side, 503)
        assert report["status"] == "unready"
        states = _states(report)
        assert states["blobs"] == "down", report
        assert (states["event_log"], states["warehouse"]) == ("ok", "ok"), report
        assert "unreachable" in report["checks"]["blobs"]["detail"]
    finally:
        minio.restart()
    assert _readyz(side, 200)["status"] == "ready"


def test_kafka_killed_then_back(side: ReadSide, kafka: KafkaServer) -> None:
    kafka.kill()
    try:
        report = _readyz(side, 503)
        assert report["status"] == "unready"
        states = _states(report)
        assert states["event_log"] == "down", report
        assert (states["blobs"], states["warehouse"]) == ("ok", "ok"), report
        assert kafka.bootstrap in report["checks"]["event_log"]["detail"]
    finally:
        kafka.restart()
    assert _readyz(side, 200)["status"] == "ready"
