"""Guaranteed delivery when a backend dies in the middle of a storescu run.

Every instance that got a success status must be durable afterwards (blob and event); the
others got failure statuses; sending everything again after the restart completes the study
with exactly one InstanceReceived event per instance.
"""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import KafkaServer, MinioServer
from tests.support.storage_scp import Running, start_archive
from tests.support.studies import DCMTK_ENV, outcomes, storescu, write_study

COUNT = 240


def _storescu_in_background(port: int, files: list[Path], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                "/usr/bin/storescu",
                "-v",
                "-nh",
                "-aet",
                "OKB_CT1",
                "-aec",
                "CAMI",
                "127.0.0.1",
                str(port),
                *map(str, files),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=DCMTK_ENV,
        )


def _wait(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _check_outcome(run: Running, files: list[Any], statuses: dict[str, str]) -> None:
    """Success means durable; the rest were told 'failed'; a re-send completes the study."""
    received = {e["SOPInstanceUID"]: e for e in run.events("InstanceReceived")}
    succeeded = [f for f in files if statuses.get(str(f.path)) == "Success"]
    failed = [f for f in files if str(f.path) in statuses and statuses[str(f.path)] != "Success"]
    assert succeeded and failed, Counter(statuses.values())
    for sent in succeeded:
        event = received[sent.sop_instance_uid]
        assert run.archive.blobs.get(event["blob"]["sha256"]) == sent.path.read_bytes()
    # "out of resources" (0xA700): nothing was acknowledged, the sender should retry
    assert {statuses[str(f.path)] for f in failed} == {"Refused: OutOfResources"}

    again = storescu("127.0.0.1", run.scp.port, [f.path for f in files], calling="OKB_CT1")
    assert Counter(outcomes(again.stderr).values()) == {"Success": len(files)}, again.stderr[-1500:]
    final = Counter(e["SOPInstanceUID"] for e in run.events("InstanceReceived"))
    assert set(final) == {f.sop_instance_uid for f in files}
    duplicates = {uid: n for uid, n in final.items() if n > 1}
    assert not duplicates, f"{len(duplicates)} instances recorded twice"


@pytest.mark.s3
@pytest.mark.slow
def test_s3_dies_mid_transfer(tmp_path: Path) -> None:
    minio = MinioServer(tmp_path / "minio")
    minio.start()
    files = write_study(tmp_path / "study", COUNT, ["1.2.840.10008.1.2.1"])
    # fail fast while S3 is down: one attempt, short timeouts (the sender retries later)
    blobs = f"s3://cami?endpoint={minio.endpoint}&connect_timeout=1&read_timeout=2&max_attempts=1"
    credentials = {"CAMI_S3_ACCESS_KEY": minio.access_key, "CAMI_S3_SECRET_KEY": minio.secret_key}
    run = start_archive(tmp_path / "home", blob_store_env=credentials, blobs=blobs)
    try:
        proc = _storescu_in_background(run.scp.port, [f.path for f in files], tmp_path / "storescu.log")
        _wait(lambda: run.archive.ingestor.counts["stored"] >= 60, 120, "60 instances stored")
        minio.kill()
        _wait(lambda: run.archive.ingestor.counts["storage-unavailable"] >= 20, 120, "failures while S3 is down")
        minio.restart()
        proc.wait(timeout=300)
        statuses = outcomes((tmp_path / "storescu.log").read_text(errors="replace"))
        assert len(statuses) == COUNT
        rejected = [e for e in run.events("InstanceRejected") if e["reason"] == "storage-unavailable"]
        assert rejected  # monitoring sees the outage
        _check_outcome(run, files, statuses)
    finally:
        run.scp.stop()
        run.archive.close()
        minio.stop()


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_dies_mid_transfer(tmp_path: Path) -> None:
    kafka = KafkaServer(tmp_path / "kafka")
    kafka.start()
    files = write_study(tmp_path / "study", COUNT, ["1.2.840.10008.1.2.1"])
    run = start_archive(tmp_path / "home", event_log=f"kafka://{kafka.bootstrap}?delivery_timeout_ms=2500")
    try:
        proc = _storescu_in_background(run.scp.port, [f.path for f in files], tmp_path / "storescu.log")
        _wait(lambda: run.archive.ingestor.counts["stored"] >= 60, 120, "60 instances stored")
        kafka.kill()
        _wait(lambda: run.archive.ingestor.counts["log-unavailable"] >= 3, 120, "failures while Kafka is down")
        kafka.restart()
        proc.wait(timeout=300)
        statuses = outcomes((tmp_path / "storescu.log").read_text(errors="replace"))
        assert len(statuses) == COUNT
        _check_outcome(run, files, statuses)
    finally:
        run.scp.stop()
        run.archive.close()
        kafka.stop()
