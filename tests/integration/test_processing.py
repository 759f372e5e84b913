"""The same pure processor driven by the embedded runner and by the Faust app on real Kafka."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from projections.catalogue import EventCatalogue
from schemas.codec import encode
from schemas.events import Event
from streams import open_event_log
from streams.processing import EmbeddedRunner, Row, Source, group_id
from streams.publisher import publish_many
from streams.sinks import MemorySink
from streams.topics import DICOM, archive_topics
from tests.support.events import synthetic_events
from tests.support.paths import ROOT


def expected_rows(events: list[Event], positions: list[Any]) -> dict[str, dict[str, Any]]:
    """What the pure function says, keyed by event id."""
    processor = EventCatalogue()
    rows = {}
    for event, pos in zip(events, positions, strict=True):
        [row] = processor.apply(event, Source(pos.topic, pos.partition, pos.offset))
        rows[event.envelope.event_id] = dict(row.values)
    return rows


class CrashingSink(MemorySink):
    """Fails once after writing, before the runner can commit (a crash at the worst moment)."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    def write(self, rows: Any) -> None:
        super().write(rows)
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("simulated crash after write, before commit")


def test_embedded_runner_applies_the_pure_function_at_least_once(tmp_path: Path) -> None:
    with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
        log.ensure_topics(archive_topics(3))
        events = synthetic_events(60)
        positions = publish_many(log, events)
        want = expected_rows(events, positions)

        sink = CrashingSink()
        runner = EmbeddedRunner(log, [(EventCatalogue(), sink)], batch_size=25)
        # the failed write is not committed: the runner writes the batch again (event by event)
        # before it commits, so one catch-up ends with everything applied
        runner.catch_up()

        got: dict[str, dict[str, Any]] = {}
        for row in sink.rows:
            got[row.values["event_id"]] = dict(row.values)
        assert got == want
        assert len(sink.rows) > len(want)  # the uncommitted batch really was delivered twice
        processor = EventCatalogue()
        assert all(log.lag(group_id(processor), t) == 0 for t in processor.topics)


def test_undecodable_record_is_skipped_not_fatal(tmp_path: Path) -> None:
    with open_event_log(f"sqlite://{tmp_path}/events.db") as log:
        log.ensure_topics(archive_topics(1))
        good = synthetic_events(2)
        log.append(DICOM, b"k", encode(good[0]))
        log.append(DICOM, b"k", b"\xc3\x01garbage-that-is-not-an-event")
        log.append(DICOM, b"k", encode(good[1]))
        sink = MemorySink()
        EmbeddedRunner(log, [(EventCatalogue(), sink)]).catch_up()
        assert [r.values["event_id"] for r in sink.rows] == [e.envelope.event_id for e in good]


@pytest.mark.kafka
def test_faust_worker_on_real_kafka_applies_the_same_pure_function(kafka_server: Any, tmp_path: Path) -> None:
    url = f"kafka://{kafka_server.bootstrap}"
    output = tmp_path / "rows.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CAMI_HOME": str(tmp_path / "home"),
        "CAMI_EVENT_LOG": url,
        "CAMI_BLOBS": f"file://{tmp_path}/blobs",
    }
    with open_event_log(url) as log:
        log.ensure_topics(archive_topics())
        first = synthetic_events(30)
        positions = publish_many(log, first)  # some events exist before the worker starts
        worker = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "workers", "--processor", "catalogue", "--jsonl", str(output)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            later = synthetic_events(30)
            positions += publish_many(log, later)  # and some arrive while it runs
            want = expected_rows(first + later, positions)
            got = _wait_for_rows(output, set(want), worker, timeout=90)
        finally:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    rows = {r["event_id"]: r for r in got}
    # the broker is shared by the session: rows of other tests' events may be there too
    assert set(want) <= set(rows)
    for event_id, row in want.items():
        as_json = json.loads(json.dumps({k: v.isoformat() if hasattr(v, "isoformat") else v for k, v in row.items()}))
        assert {k: rows[event_id][k] for k in as_json} == as_json


def _wait_for_rows(path: Path, wanted: set[str], worker: subprocess.Popen[str], timeout: float) -> list[dict[str, Any]]:
    """Every row the worker wrote, once it has written one for each of ``wanted``'s events."""
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            output = worker.stdout.read() if worker.stdout else ""
            raise AssertionError(f"faust worker exited with {worker.returncode}:\n{output[-3000:]}")
        if path.exists():
            rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
            if wanted <= {r["event_id"] for r in rows}:
                return rows
        time.sleep(0.5)
    missing = wanted - {r["event_id"] for r in rows}
    raise AssertionError(f"{len(missing)} of {len(wanted)} events without a row after {timeout} s")


def test_rows_carry_their_log_position() -> None:
    event = synthetic_events(1)[0]
    [row] = EventCatalogue().apply(event, Source("cami.access", 2, 41))
    assert isinstance(row, Row)
    assert (row.values["topic"], row.values["partition"], row.values["offset"]) == ("cami.access", 2, 41)
    assert row.values["actor_role"] == "radiologist"
