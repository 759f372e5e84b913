"""Reading reports over HTTP: every read leaves its RecordAccessed event, a draft's texts reach only
its author and radiologists, and only a draft's author signs it. Users of every role, on both
event-log backends; the access events are checked in the log and in the audit history."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from api.auth import add_user
from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.http import HttpServer, create_app
from projections.audit.queries import history
from schemas.codec import decode
from schemas.events import Event
from streams.processing import EmbeddedRunner
from streams.topics import ACCESS
from tests.support.readside import ROOT_UID, USERS

#: every role of tests.support.readside, and a second radiologist (not the draft's author)
ALL_USERS: dict[str, dict[str, Any]] = {
    **USERS,
    "dr.sidorova": {"role": "radiologist", "doctor_code": "R-1002", "doctor_name": "Сидорова^Анна"},
}
AUTHOR = "dr.petrov"
SEE_DRAFT_TEXT = ("dr.petrov", "dr.sidorova")  # the author, and another radiologist
SEE_DRAFT_EXISTS = ("ref.ivanov", "auditor", "admin")  # patient-data roles that do not write reports
REFUSED = ("it", "analyst", "okb-pacs")  # regional IT, analyst, modality


@dataclass
class Side:
    archive: Archive
    http: HttpServer
    runner: EmbeddedRunner
    tokens: dict[str, str]

    def client(self, user: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        return httpx.Client(base_url=self.http.url, headers=headers, timeout=60)

    def accesses(self) -> dict[str, Event]:
        log = self.archive.event_log
        events = [decode(r.value) for p in log.partitions(ACCESS) for r in log.read(ACCESS, p, 0, 1_000_000)]
        return {str(e.envelope.event_id): e for e in events}


@pytest.fixture(params=["embedded", "kafka"])
def side(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Side]:
    home = tmp_path / "cami"
    home.mkdir()
    if request.param == "kafka":
        event_log = f"kafka://{request.getfixturevalue('kafka_server').bootstrap}?delivery_timeout_ms=10000"
    else:
        event_log = f"sqlite://{home}/events.db"
    settings = Settings(
        home=home,
        event_log_url=event_log,
        blob_store_url=f"file://{home}/blobs",
        warehouse_url=f"chdb://{home}/clickhouse",
        partitions=3,
    )
    archive = bootstrap(settings)
    tokens = {name: add_user(home / "users.toml", name, **spec)[1] for name, spec in ALL_USERS.items()}
    runner = EmbeddedRunner(archive.event_log, archive.bindings(["audit"]))
    runner.start()
    http = HttpServer(create_app(archive), "127.0.0.1", 0)
    http.start()
    try:
        yield Side(archive, http, runner, tokens)
    finally:
        http.stop()
        runner.stop()
        archive.close()


def _read(side: Side, user: str, path: str) -> tuple[httpx.Response, Event]:
    """GET ``path`` as ``user``; the response and the ONE access event it left."""
    before = set(side.accesses())
    with side.client(user) as client:
        response = client.get(path)
    new = [e for i, e in side.accesses().items() if i not in before]
    assert len(new) == 1, f"{user} {path}: {[e.payload for e in new]}"
    assert new[0].envelope.actor.user == user and new[0].payload["channel"] == "api"
    return response, new[0]


def test_report_reads_are_recorded_and_drafts_show_their_texts_only_to_radiologists(side: Side) -> None:
    study = generate_uid(prefix=ROOT_UID)
    with side.client(AUTHOR) as client:
        created = client.post(
            "/api/reports",
            json={"study_instance_uid": study, "protocol_text": "КТ ОГК.", "conclusion_text": "Очагов нет."},
        )
    assert created.status_code == 201, created.text
    report_id = created.json()["report_id"]
    recorded: list[Event] = []
    for path in (f"/api/reports/{report_id}", f"/api/studies/{study}/reports"):
        for user in SEE_DRAFT_TEXT + SEE_DRAFT_EXISTS:
            response, event = _read(side, user, path)
            assert response.status_code == 200, response.text
            report = response.json() if path.startswith("/api/reports/") else response.json()["reports"][0]
            assert report["report_id"] == report_id and report["status"] == "draft"
            if user in SEE_DRAFT_TEXT:
                assert report["conclusion_text"] == "Очагов нет.", user
            else:  # that a draft exists, not what it says
                assert report["protocol_text"] is None and report["conclusion_text"] is None, user
                assert report["text_hidden"] is True
            assert event.payload["outcome"] == "ok" and event.payload["results"] == 1
            assert event.payload["StudyInstanceUID"] == study and event.envelope.aggregate_id == study
            recorded.append(event)
        for user in REFUSED:
            response, event = _read(side, user, path)
            assert response.status_code == 403 and response.json()["error"] == "forbidden"
            assert event.payload["outcome"] == "denied" and event.payload["results"] == 0
            assert "Очагов" not in response.text
    missing, event = _read(side, "dr.petrov", "/api/reports/no-such-report")
    assert missing.status_code == 404 and event.payload["results"] == 0

    # the auditor finds every successful read in the study's history
    ids = {str(e.envelope.event_id) for e in recorded}
    deadline = time.monotonic() + 60
    while True:
        audited = {str(e["event_id"]) for e in history(side.archive.warehouse, study)}
        if ids <= audited or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ids <= audited


def test_only_the_author_signs_a_draft(side: Side) -> None:
    study = generate_uid(prefix=ROOT_UID)
    with side.client(AUTHOR) as client:
        created = client.post(
            "/api/reports", json={"study_instance_uid": study, "protocol_text": "МРТ.", "conclusion_text": "Норма."}
        )
    report_id = created.json()["report_id"]
    for user in ("dr.sidorova", "admin", "ref.ivanov"):
        with side.client(user) as client:
            refused = client.post(f"/api/reports/{report_id}/sign")
            edited = client.put(f"/api/reports/{report_id}", json={"protocol_text": "x", "conclusion_text": "y"})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden", (user, refused.text)
        assert edited.status_code == 403 and edited.json()["error"] == "forbidden", (user, edited.text)
    with side.client(AUTHOR) as client:
        signed = client.post(f"/api/reports/{report_id}/sign")
    assert signed.status_code == 200 and signed.json()["signer"]["code"] == "R-1001"
    # once signed, every patient-data role reads the texts
    response, event = _read(side, "ref.ivanov", f"/api/reports/{report_id}")
    assert response.json()["conclusion_text"] == "Норма." and event.payload["outcome"] == "ok"
