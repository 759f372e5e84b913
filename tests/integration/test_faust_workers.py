"""Two `cami workers` (Faust, same app id) share the partitions on a real Kafka broker; one is
killed with SIGKILL mid-stream; the survivor takes its partitions over and nothing is lost.

Each worker writes the catalogue projection's rows to its own JSON-lines file. A row carries the
event's log position (topic, partition, offset); rows are deduplicated by it (at-least-once: the
survivor re-applies what the dead worker wrote but had not committed). The union must equal
exactly the rows the pure projection gives for every published event.

Faust's consumer session timeout is 60 s, so the broker notices the dead member only after about
a minute: the waits here are bounded but generous.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from projections.catalogue import EventCatalogue
from projections.status import FAUST_GROUP, projection_lag
from schemas.events import Event
from streams import open_event_log
from streams.log import Position
from streams.processing import Source
from streams.publisher import publish_many
from streams.topics import archive_topics
from tests.conftest import ROOT
from tests.integration.test_replay import synthetic_sequence

Key = tuple[str, int, int]


def expected(events: list[Event], positions: list[Position]) -> dict[Key, dict[str, Any]]:
    processor = EventCatalogue()
    out = {}
    for event, pos in zip(events, positions, strict=True):
        [row] = processor.apply(event, Source(pos.topic, pos.partition, pos.offset))
        values = {k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.values.items()}
        out[(pos.topic, pos.partition, pos.offset)] = {"table": row.table, **json.loads(json.dumps(values))}
    return out


def rows_in(path: Path) -> dict[Key, dict[str, Any]]:
    if not path.exists():
        return {}
    rows = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line:
            row = json.loads(line)
            rows[(row["topic"], row["partition"], row["offset"])] = row
    return rows


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
    outputs = [tmp_path / "worker-a.jsonl", tmp_path / "worker-b.jsonl"]

    def start(name: str, output: Path) -> subprocess.Popen[str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CAMI_HOME": str(tmp_path / name),
            "CAMI_EVENT_LOG": url,
            "CAMI_BLOBS": f"file://{tmp_path}/{name}/blobs",
        }
        return subprocess.Popen(
            [sys.executable, "-m", "api.cli", "workers", "--processor", "catalogue", "--jsonl", str(output)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    with open_event_log(url) as log:
        log.ensure_topics(archive_topics())
        workers = [start("a", outputs[0]), start("b", outputs[1])]
        try:
            # both members joined and each holds partitions
            wait_for(
                "two workers with partitions",
                lambda: len(members := group_members(bootstrap)) == 2 and all(members),
                workers,
                timeout=180,
            )
            members = group_members(bootstrap)
            assert not set(members[0]) & set(members[1]), "a partition assigned twice"

            events = synthetic_sequence(21, studies=30)
            positions = publish_many(log, events)
            want = expected(events, positions)
            wait_for(
                "first batch projected by both workers",
                lambda: set(want) <= rows_in(outputs[0]).keys() | rows_in(outputs[1]).keys(),
                workers,
                timeout=180,
            )
            assert rows_in(outputs[0]) and rows_in(outputs[1]), "one worker got no data partitions"

            # keep publishing; kill -9 worker A in the middle of the stream
            more: list[Event] = []
            more_positions: list[Position] = []
            for seed in range(30, 40):
                chunk = synthetic_sequence(seed, studies=3)
                more_positions += publish_many(log, chunk)
                more += chunk
                if seed == 34:
                    os.killpg(workers[0].pid, signal.SIGKILL)
                    workers[0].wait(timeout=30)
                time.sleep(0.2)
            want.update(expected(more, more_positions))
            survivor = workers[1:]
            after_kill = set(expected(more[len(more) // 2 :], more_positions[len(more) // 2 :]))

            wait_for(
                "survivor caught up",
                lambda: set(want) <= rows_in(outputs[0]).keys() | rows_in(outputs[1]).keys(),
                survivor,
                timeout=300,
            )
            # the survivor holds every partition now, and its group has no lag
            wait_for("survivor owns all partitions", lambda: len(group_members(bootstrap)) == 1, survivor, timeout=120)
            assert len(group_members(bootstrap)[0]) == len(members[0]) + len(members[1])
            wait_for(
                "offsets committed",
                lambda: sum(projection_lag(log, [EventCatalogue()])["catalogue"].values()) == 0,
                survivor,
                timeout=60,
            )
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    try:
                        worker.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(worker.pid, signal.SIGKILL)
                        worker.wait()

    a, b = rows_in(outputs[0]), rows_in(outputs[1])
    union = {**a, **b}
    assert union.keys() == want.keys()  # nothing lost, nothing extra
    for key, row in want.items():
        assert union[key] == row
    # events published after the kill were projected by the survivor
    assert after_kill <= b.keys()
