"""Kafka not up yet, Kafka gone for a while: the archive waits for a broker at start (bounded,
one line when it begins and one when it ends) and says an outage in two lines, not in librdkafka's
dozens a second; ``cami serve`` started before its broker comes up and stores an instance."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from confluent_kafka.admin import AdminClient

from schemas.codec import decode
from streams import EventLogUnavailable, TopicSpec, open_event_log
from streams.topics import DICOM, archive_topics
from tests.support.cli import CAMI, run_cami
from tests.support.servers import KafkaServer, free_port, free_ports
from tests.support.storage_scp import SENDERS
from tests.support.studies import outcomes, storescu, write_study


def _env(home: Path, event_log: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    env.update({"CAMI_HOME": str(home), "CAMI_EVENT_LOG": event_log, "CAMI_PARTITIONS": "2", **extra})
    return env


def _kafka_lines(caplog: pytest.LogCaptureFixture, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("cami.kafka") and r.levelno >= level]


@pytest.mark.kafka
def test_an_outage_of_ten_seconds_is_a_few_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="cami.kafka")
    server = KafkaServer(tmp_path / "kafka")
    server.start()
    try:
        with open_event_log(f"kafka://{server.bootstrap}?delivery_timeout_ms=2000") as log:
            log.ensure_topics([TopicSpec("outage-lines", 2)])
            consumer = log.consumer("outage-lines-reader", ["outage-lines"])
            log.append("outage-lines", b"1.2.3", b"before")
            deadline = time.monotonic() + 60
            while not consumer.poll(100, 0.5):  # the consumer is connected and fetching
                assert time.monotonic() < deadline
            assert _kafka_lines(caplog) == []

            server.kill()
            outage = time.monotonic()
            failed = 0
            while time.monotonic() - outage < 10:  # the producer and the consumer keep trying
                consumer.poll(100, 0.5)
                try:
                    log.append("outage-lines", b"1.2.3", b"during", timeout=3)
                except EventLogUnavailable:
                    failed += 1
            assert failed
            during = _kafka_lines(caplog)
            server.restart()
            deadline = time.monotonic() + 120
            while not any("reachable again" in line for line in _kafka_lines(caplog)):
                assert time.monotonic() < deadline, _kafka_lines(caplog)
                consumer.poll(100, 0.5)
            log.append("outage-lines", b"1.2.3", b"after", timeout=60)
            consumer.close()
        lines = _kafka_lines(caplog)
        reports = [m for m in (r.getMessage() for r in caplog.records) if m.startswith("librdkafka")]
        assert len(reports) >= 20, "librdkafka reported the outage (at debug)"
        # one line for the outage, with librdkafka's account of it (connection refused, disconnected...)
        assert len(during) == 1 and during[0].startswith(
            f"Kafka unreachable: no broker answers at {server.bootstrap} ("
        )
        assert len(lines) <= 4, lines
        assert lines[-1].startswith("Kafka reachable again after ")
    finally:
        server.stop()


@pytest.mark.kafka
def test_a_topic_prefix_keeps_the_archives_names_off_the_broker(tmp_path: Path) -> None:
    server = KafkaServer(tmp_path / "kafka")
    server.start()
    try:
        with open_event_log(f"kafka://{server.bootstrap}?topic_prefix=itest") as log:
            log.ensure_topics(archive_topics(2))
            position = log.append(DICOM, b"1.2.3", b"first")
            assert position.topic == DICOM
            [record] = log.read(DICOM, position.partition, 0, 10)
            assert (record.topic, record.value) == (DICOM, b"first")
            assert [r.topic for batch in log.scan({DICOM: log.end_offsets(DICOM)}) for r in batch] == [DICOM]
            with log.consumer("cami.itest-projection", [DICOM]) as consumer:
                deadline = time.monotonic() + 60
                polled = []
                while not polled:
                    assert time.monotonic() < deadline
                    polled = consumer.poll(10, 0.5)
                assert [r.topic for r in polled] == [DICOM]
                assert {t for t, _ in consumer.assignment()} == {DICOM}
                consumer.commit(polled)
            assert log.lag("cami.itest-projection", DICOM) == 0
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        topics = set(admin.list_topics(timeout=10).topics)
        assert "itest.dicom" in topics and not {t for t in topics if t.startswith("cami.")}
        groups = {g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid}
        assert "itest.itest-projection" in groups and "cami.itest-projection" not in groups
    finally:
        server.stop()


def test_serve_gives_up_on_a_broker_that_never_comes_in_one_clear_line(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = _env(tmp_path / "home", f"kafka://{address}", CAMI_KAFKA_WAIT="5", CAMI_HL7_PORT="0")
    started = time.monotonic()
    result = run_cami("serve", "--dicom-port", "0", "--http-port", "0", env=env, timeout=120)
    took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) <= 3, result.stderr  # waiting..., gave up..., the error
    assert lines[-1].startswith(f"cami serve: Kafka at {address} is unreachable: no broker answered within 5 s (")
    assert "CAMI_EVENT_LOG" in lines[-1] and "connection refused" in lines[-1]
    assert sum(f"cami.kafka: waiting for Kafka at {address}" in line for line in lines) == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert 4 < took < 30


@pytest.mark.kafka
@pytest.mark.slow
def test_serve_started_before_kafka_waits_for_it_and_stores(tmp_path: Path) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    home = tmp_path / "home"
    home.mkdir()
    (home / "senders.toml").write_text(SENDERS, encoding="utf-8")
    dicom_port, http_port = free_ports(2)
    env = _env(
        home,
        f"kafka://{kafka.bootstrap}",
        CAMI_DICOM_PORT=str(dicom_port),
        CAMI_HTTP_PORT=str(http_port),
        CAMI_HL7_PORT="off",
        TCP_NODELAY="1",
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as output:
        serve = subprocess.Popen([str(CAMI), "serve"], env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        time.sleep(6)
        assert serve.poll() is None, log_path.read_text()
        kafka.start()  # some seconds later
        deadline = time.monotonic() + 180
        while not _answers(http_port):
            assert serve.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
        [sent] = write_study(tmp_path / "study", 1, ["1.2.840.10008.1.2.1"])
        result = storescu("127.0.0.1", dicom_port, [sent.path], calling="OKB_CT1")
        assert outcomes(result.stderr) == {str(sent.path): "Success"}, result.stderr
        with open_event_log(f"kafka://{kafka.bootstrap}") as log:
            events = [decode(r.value) for p in log.partitions(DICOM) for r in log.read(DICOM, p, 0, 100)]
        assert [e.payload["SOPInstanceUID"] for e in events if e.type == "InstanceReceived"] == [sent.sop_instance_uid]
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)
        kafka.stop()
    output = log_path.read_text()
    # the web server's own start lines (uvicorn, at info) are not about Kafka
    before_up = [line for line in output.split("CAMI DICOM", 1)[0].splitlines() if " uvicorn." not in line]
    said = Counter(
        "waiting"
        if f"waiting for Kafka at {kafka.bootstrap}" in line
        else "answered"
        if "answered after" in line
        else ""
        for line in before_up
    )
    assert said["waiting"] == 1 and said["answered"] == 1, output
    assert len(before_up) <= 4, output  # no line per reconnection
    assert "Traceback" not in output and "ERROR cami.kafka" not in output, output


def _answers(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=2).status_code == 200
    except httpx.TransportError:
        return False
