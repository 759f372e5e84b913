"""One line per change of the brokers' reachability instead of librdkafka's line per reconnection
(streams/kafka_client_log.py), with a scripted probe and clock."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import pytest
from confluent_kafka import KafkaError

from streams.kafka_client_log import KafkaClientLog, parse_broker_line, reason_of

FAIL = (
    "127.0.0.1:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)"
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Ports:
    """The probe: which ``host:port`` refuse connections now."""

    def __init__(self) -> None:
        self.refusing: set[str] = set()

    def __call__(self, address: str) -> str | None:
        return "connection refused" if address in self.refusing else None


@pytest.fixture()
def lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="cami.kafka")
    return caplog


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _client_log(bootstrap: str, ports: Ports, clock: Clock) -> KafkaClientLog:
    """Without its thread: the test runs the rounds (``check``)."""
    return KafkaClientLog(bootstrap, probe=ports, clock=clock, watch=False, started=True)


def test_an_outage_of_the_only_broker_is_two_lines_however_many_reports(lines: pytest.LogCaptureFixture) -> None:
    ports, clock = Ports(), Clock()
    client_log = _client_log("127.0.0.1:9092", ports, clock)
    ports.refusing.add("127.0.0.1:9092")
    for second in range(10):
        clock.now = 100.0 + second
        for _ in range(20):  # librdkafka: every client, every reconnection
            client_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "cami#producer-1", FAIL)
            client_log.error(KafkaError(KafkaError._TRANSPORT, FAIL))
        assert client_log.check() is True
    ports.refusing.clear()
    clock.now = 112.0
    assert client_log.check() is False
    assert client_log.check() is False
    assert _warnings(lines) == [
        "Kafka unreachable: no broker answers at 127.0.0.1:9092 (connection refused)",
        "Kafka reachable again after 12 s (127.0.0.1:9092 answers)",
    ]
    assert sum(1 for r in lines.records if r.levelno == logging.DEBUG) >= 400  # the reports, kept at debug


def test_a_report_about_a_broker_that_answers_is_stale_and_says_nothing(lines: pytest.LogCaptureFixture) -> None:
    ports, clock = Ports(), Clock()
    client_log = _client_log("127.0.0.1:9092", ports, clock)
    client_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "cami#consumer-3", FAIL)  # delivered late, say
    assert client_log.check() is False
    assert _warnings(lines) == []


def test_one_broker_of_three_down_is_named_with_how_many_still_answer(lines: pytest.LogCaptureFixture) -> None:
    ports, clock = Ports(), Clock()
    client_log = _client_log("b1:9092,b2:9092,b3:9092", ports, clock)
    ports.refusing.add("b2:9092")
    client_log.log(logging.INFO, "%s [%s] %s", "FAIL", "c", "b2:9092/2: Disconnected (after 12ms in state UP)")
    assert client_log.check() is True
    assert client_log.down == ["b2:9092"]
    clock.now += 5
    ports.refusing |= {"b1:9092", "b3:9092"}
    client_log.check()
    clock.now += 5
    ports.refusing = {"b1:9092", "b2:9092"}
    client_log.check()
    clock.now += 20
    ports.refusing.clear()
    client_log.check()
    assert _warnings(lines) == [
        "Kafka broker b2:9092 unreachable: disconnected (2 of 3 brokers answer)",
        "Kafka unreachable: no broker answers at b1:9092, b2:9092, b3:9092 (connection refused; disconnected)",
        "Kafka reachable again after 5 s (b3:9092 answers)",
        "Kafka broker b1:9092 reachable again after 25 s",
        "Kafka broker b2:9092 reachable again after 30 s",
    ]


def test_brokers_a_metadata_answer_named_are_watched_too(lines: pytest.LogCaptureFixture) -> None:
    ports, clock = Ports(), Clock()
    client_log = _client_log("kafka.region.local:9092", ports, clock)
    client_log.brokers(["10.0.0.5:9092", "10.0.0.6:9092"])
    ports.refusing.add("10.0.0.6:9092")
    client_log.check()
    assert _warnings(lines) == ["Kafka broker 10.0.0.6:9092 unreachable: connection refused (2 of 3 brokers answer)"]


def test_before_a_broker_answered_reports_are_only_recorded(lines: pytest.LogCaptureFixture) -> None:
    probed: list[str] = []

    def probe(address: str) -> str:
        probed.append(address)
        return "connection refused"

    client_log = KafkaClientLog("127.0.0.1:9", probe=probe, every=0.01)
    for _ in range(10):
        client_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "cami#producer-1", FAIL)
    client_log.close()
    assert probed == []  # nothing is probed for a log still waiting for its first broker
    assert _warnings(lines) == []


def test_other_messages_stay_at_debug_and_other_errors_are_not_repeated(lines: pytest.LogCaptureFixture) -> None:
    ports, clock = Ports(), Clock()
    client_log = _client_log("127.0.0.1:9092", ports, clock)
    client_log.log(logging.WARNING, "%s [%s] %s", "CONFWARN", "cami#producer-1", "Configuration property x is ignored")
    for _ in range(5):
        client_log.error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication failed"))
    clock.now += 301
    client_log.error(KafkaError(KafkaError._AUTHENTICATION, "SASL authentication failed"))
    client_log.error(KafkaError(KafkaError._FATAL, "idempotent producer fenced", fatal=True))
    assert _warnings(lines) == [
        "Kafka client error (_AUTHENTICATION): SASL authentication failed",
        "Kafka client error (_AUTHENTICATION): SASL authentication failed",
        "Kafka client failed for good (_FATAL): idempotent producer fenced",
    ]
    assert any("CONFWARN" in r.getMessage() for r in lines.records if r.levelno == logging.DEBUG)


@pytest.mark.parametrize(
    ("line", "parsed"),
    [
        (FAIL, ("127.0.0.1:9092", "connection refused")),
        (
            "GroupCoordinator: 127.0.0.1:9092: Disconnected: connection closed by peer: receive 0 after POLLIN"
            " (after 1083ms in state UP)",
            ("127.0.0.1:9092", "disconnected: connection closed by peer"),
        ),
        (
            "ssl://[::1]:9093/1: Connect to ipv6#[::1]:9093 failed: Connection refused",
            ("[::1]:9093", "connection refused"),
        ),
        ("1/1 brokers are down", None),
    ],
)
def test_librdkafka_lines_name_the_broker_and_why(line: str, parsed: tuple[str, str] | None) -> None:
    assert parse_broker_line(line) == parsed


def test_a_reason_without_detail_is_still_a_reason() -> None:
    assert reason_of("") == "unreachable"
    assert reason_of("Receive failed: Connection reset by peer") == "connection reset by peer"


def test_a_report_starts_the_watch_which_ends_once_every_broker_answers(lines: pytest.LogCaptureFixture) -> None:
    ports = Ports()
    ports.refusing.add("127.0.0.1:9092")
    client_log = KafkaClientLog("127.0.0.1:9092", probe=ports, every=0.01, started=True)
    try:
        client_log.log(logging.ERROR, "%s [%s] %s", "FAIL", "cami#producer-1", FAIL)
        _until(lambda: client_log.down == ["127.0.0.1:9092"])
        ports.refusing.clear()
        _until(lambda: client_log._thread is None)
    finally:
        client_log.close()
    messages = _warnings(lines)
    assert len(messages) == 2 and messages[0].startswith("Kafka unreachable") and "reachable again" in messages[1]


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)
