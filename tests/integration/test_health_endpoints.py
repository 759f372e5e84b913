"""``/healthz`` and ``/readyz`` on the embedded defaults (what ``cami serve`` runs with no server):
ready when all is well; the blob volume gone (its mount point empty, as when the disk is not
mounted) makes ``/readyz`` 503 naming the blob store while the others stay ok, and putting it back
makes the node ready again. Neither asks for a token, neither is a recorded or counted read."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from api.http.health import CACHE_SECONDS
from tests.support.readside import ReadSide

STUDY = "1.2.826.0.1.3680043.8.498.1717"


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadSide]:
    with ReadSide.start(tmp_path_factory.mktemp("health")) as running:
        running.store_study(STUDY, 2)
        running.wait_indexed(STUDY, 2)
        yield running


def _ready(client: httpx.Client, expected: int, timeout: float = 15.0) -> dict[str, Any]:
    """``/readyz`` once it answers ``expected`` (the answer is cached a second, a check may lag)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = client.get("/readyz")
        if answer.status_code == expected or time.monotonic() > deadline:
            assert answer.status_code == expected, answer.text
            assert answer.headers["cache-control"] == "no-store"
            body: dict[str, Any] = answer.json()
            return body
        time.sleep(CACHE_SECONDS / 2)


def _read_requests(side: ReadSide) -> float:
    return sum(
        sample.value
        for metric in side.archive.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == "cami_read_requests_total"
    )


def test_alive_and_ready_without_a_token_and_not_a_read(side: ReadSide) -> None:
    accesses = len(side.accesses())
    reads = _read_requests(side)
    with side.client() as anonymous:
        alive = anonymous.get("/healthz")
        assert (alive.status_code, alive.json()) == (200, {"status": "alive"})
        assert alive.headers["cache-control"] == "no-store"
        report = _ready(anonymous, 200)
    assert report["status"] == "ready"
    checks = report["checks"]
    assert set(checks) == {"event_log", "blobs", "warehouse", "projections"}
    assert {name: check["status"] for name, check in checks.items()} == dict.fromkeys(checks, "ok")
    assert "SQLite" in checks["event_log"]["detail"]
    assert str(side.home / "blobs") in checks["blobs"]["detail"]
    assert checks["warehouse"]["detail"] == "chdb answers"
    projections = checks["projections"]
    assert projections["max_lag"] == 10_000
    assert {"archive-index", "query-model", "audit"} <= set(projections["lag"])
    deadline = time.monotonic() + 30  # the projections the fixture did not wait for catch up too
    while any(projections["lag"].values()) and time.monotonic() < deadline:
        time.sleep(CACHE_SECONDS)
        with side.client() as anonymous:
            projections = _ready(anonymous, 200)["checks"]["projections"]
    assert (projections["detail"], set(projections["lag"].values())) == ("up to date", {0}), projections
    # no RecordAccessed event and no read counted: probes are not reads of the archive's records
    assert len(side.accesses()) == accesses
    with side.client() as anonymous:
        assert anonymous.get("/dicomweb/studies").status_code == 401  # a read, counted
    deadline = time.monotonic() + 5  # counted once the answer has gone out
    while _read_requests(side) == reads and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    assert _read_requests(side) == reads + 1  # that read alone, not the probes before it


def test_the_blob_volume_gone_makes_the_node_unready_until_it_is_back(side: ReadSide) -> None:
    blobs = side.home / "blobs"
    away = side.home / "blobs.unmounted"
    blobs.rename(away)
    blobs.mkdir()  # the bare mount point, as an unmounted volume leaves it
    try:
        with side.client() as anonymous:
            report = _ready(anonymous, 503)
            assert report["status"] == "unready"
            checks = report["checks"]
            assert checks["blobs"]["status"] == "down"
            assert "objects/ is missing" in checks["blobs"]["detail"]
            assert {name: c["status"] for name, c in checks.items() if name != "blobs"} == {
                "event_log": "ok",
                "warehouse": "ok",
                "projections": "ok",
            }
            assert anonymous.get("/healthz").status_code == 200  # alive all the same
            assert not any(blobs.iterdir())  # the probe wrote nothing onto the wrong disk
    finally:
        blobs.rmdir()
        away.rename(blobs)
    with side.client() as anonymous:
        assert _ready(anonymous, 200)["status"] == "ready"
