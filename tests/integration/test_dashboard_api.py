"""The regional dashboard over HTTP (``cami serve``'s app on the embedded log): regional IT and
administrators read the snapshot and its live Server-Sent Events stream, which pushes the new
counts after storescu stores a study; other roles are refused (403, recorded), anonymous callers
get 401 (JSON) or the sign-in page; and a server stop is not held up by an open stream."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from api.auth import add_user
from api.bootstrap import bootstrap
from api.config import Settings
from api.http import HttpServer, monitoring_pages
from api.http.app import create_app
from projections.monitoring.fold import Monitoring
from projections.sinks import WarehouseSink
from streams.processing import EmbeddedRunner
from streams.publisher import publish_many
from tests.support.readside import ORG, ROOT_UID, SENDER_AE, ReadSide
from tests.support.scenarios import STUDY, instance_event


def sse(response: httpx.Response) -> Iterator[tuple[str, str]]:
    """(event, data) of each Server-Sent Event; comments are yielded as ("comment", text)."""
    event, data = "message", []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield "comment", line[1:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif not line and data:
            yield event, "\n".join(data)
            event, data = "message", []


def row(snapshot: dict[str, Any], organisation: str) -> dict[str, Any] | None:
    return next((r for r in snapshot["organisations"] if r["organisation"] == organisation), None)


def test_roles_pages_and_refusals_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with ReadSide.start(tmp_path) as side:
        for user in ("it", "admin"):
            with side.client(user) as client:
                answer = client.get("/api/monitoring/dashboard")
                assert answer.status_code == 200, answer.text
                assert set(answer.json()) == {"now", "today", "organisations", "alarms"}
                page = client.get("/monitoring")
                assert page.status_code == 200 and 'id="dashboard"' in page.text
                assert 'href="/monitoring"' in page.text  # in the top bar for this role
                organisation = client.get(f"/monitoring/{ORG}")
                assert organisation.status_code == 200 and SENDER_AE[ORG] in organisation.text
                assert client.get("/monitoring/not-a-code").status_code == 400
        # without the chart library (infra/web-assets.sh not run) the page still answers, and says so
        monkeypatch.setattr(monitoring_pages, "UPLOT", Path("vendor/none/absent.js"))
        with side.client("it") as client:
            page = client.get(f"/monitoring/{ORG}")
            assert page.status_code == 200 and 'id="chart-missing"' in page.text and "uPlot" in page.text
            assert "/static/vendor/" not in page.text
        before = {e.envelope.event_id for e in side.accesses()}
        with side.client("dr.petrov") as radiologist:
            for path in ("/api/monitoring/dashboard", "/api/monitoring/stream"):
                answer = radiologist.get(path)
                assert answer.status_code == 403 and answer.json()["error"] == "forbidden", path
            page = radiologist.get("/monitoring")
            assert page.status_code == 403 and "text/html" in page.headers["content-type"]
            assert radiologist.get(f"/monitoring/{ORG}").status_code == 403
            assert 'href="/monitoring"' not in radiologist.get("/search").text
        new = sorted(
            (e for e in side.accesses() if e.envelope.event_id not in before), key=lambda e: e.envelope.recorded_at
        )
        refusals = [e.payload for e in new]
        assert [(p["outcome"], p["channel"]) for p in refusals] == [("denied", "api")] * 2 + [("denied", "web")] * 2
        assert all("monitoring" in (p["query"] or "") for p in refusals)
        with side.client() as anonymous:
            assert anonymous.get("/api/monitoring/dashboard").status_code == 401
            assert anonymous.get("/api/monitoring/stream").status_code == 401
            signin = anonymous.get("/monitoring")
            assert signin.status_code == 303 and signin.headers["location"].startswith("/signin")


def test_a_stream_ends_after_its_lifetime_and_the_reconnection_is_authenticated_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(monitoring_pages, "LIFETIME", 2.0)
    with ReadSide.start(tmp_path) as side:
        headers = {"Authorization": f"Bearer {side.tokens['it']}"}
        with httpx.stream("GET", f"{side.url}/api/monitoring/stream", headers=headers, timeout=60) as response:
            kinds = [kind for kind, _ in sse(response)]  # returns: the server ended the stream
        assert "snapshot" in kinds
        # the browser reconnects with what it has; a token no longer valid is refused there
        stale = {"Authorization": "Bearer no-longer-valid"}
        assert httpx.get(f"{side.url}/api/monitoring/stream", headers=stale, timeout=60).status_code == 401


def test_the_stream_pushes_new_counts_and_ends_when_the_server_stops(tmp_path: Path) -> None:
    side = ReadSide.start(tmp_path)
    received: queue.Queue[tuple[str, str] | None] = queue.Queue()

    def listen() -> None:
        headers = {"Authorization": f"Bearer {side.tokens['it']}", "Accept": "text/event-stream"}
        try:
            with httpx.stream("GET", f"{side.url}/api/monitoring/stream", headers=headers, timeout=120) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                for item in sse(response):
                    received.put(item)
        except httpx.HTTPError as exc:
            received.put(("closed-with-error", repr(exc)))
        finally:
            received.put(None)

    listener = threading.Thread(target=listen, daemon=True)
    try:
        listener.start()
        kind, data = received.get(timeout=60)
        assert kind == "snapshot"
        assert row(json.loads(data), ORG) is None  # nothing sent yet

        study = generate_uid(prefix=ROOT_UID)
        side.store_study(study, 2)
        while True:  # snapshots come as the projection folds; the one with both objects must come
            kind, data = received.get(timeout=60)
            if kind != "snapshot":
                continue
            mine = row(json.loads(data), ORG)
            if mine is not None and mine["today"]["instances"] == 2:
                break
        assert mine["today"]["studies"] == 1 and mine["organisation_name"] == SENDER_AE[ORG]
        assert mine["organisation_known"] is True
    finally:
        server = side.http._thread
        side.stop()
    # the open stream did not hold the server up: it ended, and so did uvicorn's thread
    assert server is not None and not server.is_alive()
    listener.join(timeout=30)
    assert not listener.is_alive()
    rest = []
    while (item := received.get(timeout=5)) is not None:
        rest.append(item)
    assert all(kind in ("snapshot", "comment") for kind, _ in rest), rest


@pytest.mark.parametrize("backend", ["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def test_the_stream_polls_when_the_projection_runs_elsewhere(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Workers in another process (the Kafka deployment) signal nothing here: the stream still
    shows new arrivals, from its once-a-second look. Here the monitoring projection runs with a
    sink that signals nothing, on either event log; the events are appended to the real log."""
    home = tmp_path / "cami"
    home.mkdir()
    if backend == "kafka":
        event_log = f"kafka://{request.getfixturevalue('kafka_server').bootstrap}?delivery_timeout_ms=10000"
    else:
        event_log = f"sqlite://{home}/events.db"
    env = {"CAMI_HOME": str(home), "CAMI_EVENT_LOG": event_log, "CAMI_PARTITIONS": "3"}
    archive = bootstrap(Settings.from_env(env))
    token = add_user(home / "users.toml", "it", role="regional-it")[1]
    # a fresh organisation code: the session's Kafka topics hold other tests' events too
    organisation = f"{ORG}.{uuid.uuid4().int % 10**12}"
    runner = EmbeddedRunner(archive.event_log, [(Monitoring(), WarehouseSink(archive.warehouse, Monitoring.ddl))])
    runner.start()
    http = HttpServer(create_app(archive), "127.0.0.1", 0)
    http.start()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.stream("GET", f"{http.url}/api/monitoring/stream", headers=headers, timeout=120) as response:
            events = sse(response)
            first = next(data for kind, data in events if kind == "snapshot")
            assert row(json.loads(first), organisation) is None
            now = datetime.now(UTC)
            study = replace(STUDY[1], org=organisation, n=uuid.uuid4().int % 10**9)
            publish_many(archive.event_log, [instance_event(study, i, now) for i in range(2)])
            for kind, data in events:
                mine = row(json.loads(data), organisation) if kind == "snapshot" else None
                if mine is not None and mine["today"]["instances"] == 2:
                    break
            assert mine is not None and mine["today"]["studies"] == 1
            assert archive.monitoring_changes.version == 0  # nothing signalled: the timer found it
    finally:
        http.stop()
        runner.stop()
        archive.close()
