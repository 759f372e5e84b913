"""The readiness rules without servers: what Kafka's metadata means for appends, the projection lag
threshold (``CAMI_READY_MAX_LAG``), how checks are run (at once, bounded, never twice at a time,
answers reused for a second) and that no credential leaves in a detail."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from confluent_kafka.admin import BrokerMetadata, ClusterMetadata, PartitionMetadata, TopicMetadata

from api.config import DEFAULT_READY_MAX_LAG, ConfigError, Settings
from api.http.health import Readiness, check_projections, mask, overall
from api.http.metrics import read_channel
from streams.kafka import cluster_health


# -- Kafka's metadata ----------------------------------------------------------------------------
def _cluster(brokers: list[int], partitions: dict[str, list[tuple[int, list[int], list[int]]]]) -> ClusterMetadata:
    """``partitions``: per topic, (leader, replicas, in-sync replicas) of each partition."""
    meta = ClusterMetadata()
    for broker_id in brokers:
        broker = BrokerMetadata()
        broker.id, broker.host, broker.port = broker_id, f"b{broker_id}", 9092
        meta.brokers[broker_id] = broker
    for name, described in partitions.items():
        topic = TopicMetadata()
        topic.topic = name
        for number, (leader, replicas, isrs) in enumerate(described):
            partition = PartitionMetadata()
            partition.id, partition.leader, partition.replicas, partition.isrs = number, leader, replicas, isrs
            topic.partitions[number] = partition
        meta.topics[name] = topic
    return meta


def test_all_replicas_in_sync_is_ok_and_names_the_brokers() -> None:
    meta = _cluster([1, 2, 3], {"cami.dicom": [(1, [1, 2, 3], [1, 2, 3]), (2, [2, 3, 1], [2, 3, 1])]})
    health = cluster_health(meta, ["cami.dicom"], min_insync=2)
    assert health.status == "ok"
    assert health.detail == "3 broker(s) up (b1:9092, b2:9092, b3:9092)"


def test_a_broker_down_with_enough_replicas_in_sync_is_degraded() -> None:
    meta = _cluster([1, 2], {"cami.dicom": [(1, [1, 2, 3], [1, 2]), (2, [2, 3, 1], [2, 1])]})
    health = cluster_health(meta, ["cami.dicom"], min_insync=2)
    assert health.status == "degraded"
    assert "broker(s) 3 down" in health.detail
    assert "2 partition(s) under-replicated: cami.dicom/0, cami.dicom/1" in health.detail


def test_fewer_in_sync_than_min_insync_or_no_leader_takes_no_append() -> None:
    meta = _cluster([1], {"cami.dicom": [(1, [1, 2, 3], [1]), (-1, [2, 3, 1], [])]})
    health = cluster_health(meta, ["cami.dicom"], min_insync=2)
    assert health.status == "down"
    assert "2 partition(s) take no append (no leader or fewer than 2 replica(s) in sync)" in health.detail
    # with min.insync 1 the partition that has a leader still takes appends; the leaderless does not
    assert "1 partition(s) take no append" in cluster_health(meta, ["cami.dicom"], min_insync=1).detail


def test_a_missing_topic_is_down() -> None:
    meta = _cluster([1], {"cami.dicom": [(1, [1], [1])]})
    health = cluster_health(meta, ["cami.dicom", "cami.reports"])
    assert (health.status, health.detail) == ("down", "1 broker(s) up (b1:9092); no topic cami.reports")


# -- projection lag ------------------------------------------------------------------------------
def test_lag_up_to_the_threshold_is_ready_beyond_it_unready() -> None:
    def lag(behind: int) -> Any:
        return lambda: {"archive-index": {"cami.dicom": behind, "cami.patients": 0}, "audit": {"cami.access": 1}}

    ok = check_projections(lag(10), max_lag=10)
    assert ok["status"] == "ok"
    assert ok["lag"] == {"archive-index": 10, "audit": 1}
    assert ok["max_lag"] == 10
    behind = check_projections(lag(11), max_lag=10)
    assert behind["status"] == "down"
    assert behind["detail"] == "archive-index is 11 events behind, more than CAMI_READY_MAX_LAG=10"
    off = check_projections(lag(10**9), max_lag=None)
    assert (off["status"], off["max_lag"]) == ("ok", None)
    assert check_projections(lambda: {"audit": {"cami.access": 0}}, max_lag=0)["detail"] == "up to date"


def test_unreadable_lag_is_down() -> None:
    def unreadable() -> Any:
        raise RuntimeError("offsets unreadable")

    result = check_projections(unreadable, max_lag=10)
    assert (result["status"], result["detail"], result["lag"]) == ("down", "lag unknown (offsets unreadable)", {})


@pytest.mark.parametrize(
    ("value", "expected"), [("", DEFAULT_READY_MAX_LAG), ("off", None), (" OFF ", None), ("0", 0), ("250", 250)]
)
def test_ready_max_lag_setting(value: str, expected: int | None) -> None:
    env = {"CAMI_HOME": "/tmp/cami-health-settings", "CAMI_READY_MAX_LAG": value}
    assert Settings.from_env(env).ready_max_lag == expected


@pytest.mark.parametrize("value", ["-1", "ten", "1e4", "²"])
def test_a_bad_ready_max_lag_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="CAMI_READY_MAX_LAG"):
        Settings.from_env({"CAMI_HOME": "/tmp/cami-health-settings", "CAMI_READY_MAX_LAG": value})


# -- running the checks ----------------------------------------------------------------------------
def _ok(detail: str = "fine") -> dict[str, Any]:
    return {"status": "ok", "detail": detail}


def test_overall_status() -> None:
    assert overall({"a": _ok(), "b": _ok()}) == "ready"
    assert overall({"a": _ok(), "b": {"status": "degraded", "detail": ""}}) == "degraded"
    assert overall({"a": {"status": "degraded", "detail": ""}, "b": {"status": "down", "detail": ""}}) == "unready"


def test_a_hung_check_is_down_within_the_wait_and_never_started_twice() -> None:
    release = threading.Event()
    started = []

    def hung() -> dict[str, Any]:
        started.append(1)
        release.wait(10)
        return _ok("came back")

    readiness = Readiness({"hung": hung, "quick": _ok}, wait=0.2, cache_seconds=0)
    try:
        for _ in range(3):
            began = time.monotonic()
            report = readiness.report()
            assert time.monotonic() - began < 1
            assert report == {
                "status": "unready",
                "checks": {"hung": {"status": "down", "detail": "no answer within 0.2 s"}, "quick": _ok()},
            }
        assert len(started) == 1  # the running one is waited for again, not joined by another
    finally:
        release.set()
    time.sleep(0.05)
    assert readiness.report()["status"] == "ready"
    assert len(started) == 2


def test_a_failing_check_is_down_with_its_reason_masked() -> None:
    def failing() -> dict[str, Any]:
        raise ConnectionError("cannot reach clickhouse://cami:s3cret@ch1:8123/cami")

    report = Readiness({"warehouse": failing}, cache_seconds=0).report()
    assert report["checks"]["warehouse"] == {
        "status": "down",
        "detail": "ConnectionError: cannot reach clickhouse://cami:***@ch1:8123/cami",
    }


def test_answers_are_reused_for_the_cache_time() -> None:
    now = [100.0]
    calls = []

    def counted() -> dict[str, Any]:
        calls.append(1)
        return _ok()

    readiness = Readiness({"log": counted}, cache_seconds=1.0, clock=lambda: now[0])
    for _ in range(5):
        readiness.report()
    assert len(calls) == 1
    now[0] += 1.0
    readiness.report()
    assert len(calls) == 2


def test_mask_keeps_the_user_and_hides_the_password() -> None:
    assert mask("at https://u:p@host:1/x and kafka://b1:9092") == "at https://u:***@host:1/x and kafka://b1:9092"


def test_probes_are_not_reads() -> None:
    assert read_channel("/healthz") is None
    assert read_channel("/readyz") is None
