"""Two `cami workers` (Faust, same app id) share the partitions on a real Kafka broker; one is
killed with SIGKILL mid-stream; the survivor takes its partitions over and nothing is lost.

The workers run the archive index and the audit trail (the projection with state: its hash chains
must continue across the take-over) into one ClickHouse endpoint (the test-only chdb HTTP server, a
stand-in for a ClickHouse server since chdb cannot be shared between processes). At the end the
tables must equal, row by row, what a single embedded runner builds from the same log into a
second, fresh ClickHouse, and the audit check must find every chain intact against the log.

Faust's consumer session timeout is 60 s, so the broker notices the dead member only after about
a minute: the waits here are bounded but generous.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from projections.archive_index.fold import ArchiveIndex
from projections.audit.fold import AuditTrail
from projections.audit.verify import verify_against_log
from projections.replay import rebuild
from projections.status import FAUST_GROUP, projection_lag
from projections.warehouse import Warehouse, open_warehouse
from schemas.events import Event
from streams import open_event_log
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.support.chdb_http import ChdbHttpServer
from tests.support.events import synthetic_sequence
from tests.support.paths import ROOT

#: every table the two projections write, with the key that orders its rows
TABLES = {
    "archive_instances": "study_uid, series_uid, sop_uid, version",
    "archive_reports": "study_uid, report_id, stage, seq",
    "archive_patients": "patient_id, attribute",
    "archive_patient_merges": "prior_patient_id",
    "audit_trail": "aggregate_id, topic, partition, offset",
}


def snapshot(warehouse: Warehouse) -> dict[str, list[tuple[Any, ...]]]:
    return {t: warehouse.query(f"SELECT * FROM {t} FINAL ORDER BY {key}").rows for t, key in TABLES.items()}


def audited(warehouse: Warehouse, published: Sequence[Event]) -> int:
    """Audit entries of the events this test published (the session's broker is shared: other
    tests' events may already be in the topics, and the workers audit those too)."""
    ids = [str(e.envelope.event_id) for e in published]
    try:
        sql = "SELECT count() FROM audit_trail FINAL WHERE toString(event_id) IN {ids:Array(String)}"
        return int(warehouse.query(sql, {"ids": ids}).scalar())
    except Exception:  # the workers have not created the table yet
        return 0


def wait_for(what: str, condition: Callable[[], bool], workers: list[subprocess.Popen[str]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for worker in workers:
            if worker.poll() is not None:
                output = worker.stdout.read() if worker.stdout else ""
                raise AssertionError(f"a faust worker exited with {worker.returncode}:\n{output[-3000:]}")
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what}: not within {timeout} s")


def forget_group(bootstrap: str) -> None:
    """Deletes the workers' group and its committed offsets, so that they start as a fresh
    deployment does, from the beginning of the log: the session's broker is shared, and an earlier
    test's workers may have committed offsets for this group past events that the uninterrupted
    build below (from offset 0) folds."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for attempt in range(60):
        try:
            admin.delete_consumer_groups([FAUST_GROUP], request_timeout=30)[FAUST_GROUP].result()
            return
        except KafkaException as exc:
            code = exc.args[0].code()
            if code == KafkaError.GROUP_ID_NOT_FOUND:
                return
            # a broker just started has no group coordinator yet: it answers NOT_COORDINATOR until it
            # has (or nothing in time, while it loads its offsets topic)
            waiting = (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT)
            if code not in waiting or attempt == 59:
                raise  # e.g. NON_EMPTY_GROUP: another test's workers still live on this broker
            time.sleep(0.5)


def group_members(bootstrap: str) -> list[list[tuple[str, int]]]:
    """Each live member of the workers' group with the partitions it holds."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        described = admin.describe_consumer_groups([FAUST_GROUP], request_timeout=10)[FAUST_GROUP].result()
    except Exception:  # group not there yet / coordinator loading
        return []
    return [
        sorted((tp.topic, tp.partition) for tp in member.assignment.topic_partitions)
        for member in described.members
        if member.assignment is not None
    ]


@pytest.mark.kafka
@pytest.mark.slow
def test_two_faust_workers_share_partitions_and_survive_a_kill(kafka_server: Any, tmp_path: Path) -> None:
    bootstrap = kafka_server.bootstrap
    url = f"kafka://{bootstrap}"
    processors = [ArchiveIndex(), AuditTrail()]
    clickhouse = ChdbHttpServer(tmp_path / "clickhouse").start()

    def start(name: str) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CAMI_HOME": str(tmp_path / name),
            "CAMI_EVENT_LOG": url,
            "CAMI_BLOBS": f"file://{tmp_path}/{name}/blobs",
            "CAMI_CLICKHOUSE": clickhouse.url,
        }
        command = [sys.executable, "-m", "api.cli", "workers", "--processor", "archive-index", "--processor", "audit"]
        return subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    warehouse = open_warehouse(clickhouse.url)
    with open_event_log(url) as log:
        log.ensure_topics(archive_topics())
        forget_group(bootstrap)
        workers = [start("a"), start("b")]
        try:
            # both members joined and each holds partitions of its own
            wait_for(
                "two workers with partitions",
                lambda: len(members := group_members(bootstrap)) == 2 and all(members),
                workers,
                timeout=180,
            )
            members = group_members(bootstrap)
            assert not set(members[0]) & set(members[1]), "a partition assigned twice"

            events = synthetic_sequence(21, studies=30)
            publish_many(log, events)
            wait_for("first batch audited", lambda: audited(warehouse, events) == len(events), workers, timeout=180)

            # keep publishing; kill -9 worker A in the middle of the stream
            more: list[Event] = []
            for seed in range(30, 40):
                chunk = synthetic_sequence(seed, studies=3)
                publish_many(log, chunk)
                more += chunk
                if seed == 34:
                    os.killpg(workers[0].pid, signal.SIGKILL)
                    workers[0].wait(timeout=30)
                time.sleep(0.2)
            survivor = workers[1:]

            # the survivor takes every partition over, and its group has no lag left
            everything = sorted(members[0] + members[1])
            wait_for(
                "survivor owns all partitions", lambda: group_members(bootstrap) == [everything], survivor, timeout=180
            )
            wait_for(
                "survivor caught up",
                lambda: all(sum(lag.values()) == 0 for lag in projection_lag(log, processors).values()),
                survivor,
                timeout=300,
            )
            assert audited(warehouse, events + more) == len(events) + len(more)
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(worker.pid, signal.SIGKILL)
                        worker.wait()

        # what one uninterrupted runner builds from the same log, in a fresh ClickHouse
        with ChdbHttpServer(tmp_path / "expected") as reference:
            expected_warehouse = open_warehouse(reference.url)
            # from offset 0 without a consumer group: the session's broker is shared, and another
            # test's runner may have committed offsets for the projections' own groups
            rebuild(log, expected_warehouse, [ArchiveIndex(), AuditTrail()], align=False)
            expected = snapshot(expected_warehouse)
            expected_warehouse.close()
        actual = snapshot(warehouse)
        assert len(expected["archive_instances"]) > 100
        for table in TABLES:
            assert actual[table] == expected[table], f"{table} differs from an uninterrupted build"

        # the hash chains continued across the take-over: every entry checks out against the log
        report = verify_against_log(warehouse, log)
        assert report.ok, report.first_broken
        assert report.entries == report.log_events >= len(events) + len(more)
    warehouse.close()
    clickhouse.stop()
