"""The auditor's pages and their JSON on a running archive: who may open them (and that every
refusal is itself recorded), and the timeline's chain check with the first broken entry
highlighted after a stored audit row is changed the way someone with access to ClickHouse could.

A study is sent with dcmtk's storescu; users of every role ask over HTTP (bearer tokens; the
browser's session cookie is the same check, see test_study_page).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from pydicom.uid import generate_uid

from tests.support.readside import ROOT_UID, ReadSide

PATIENT = "AUDIT-PAGES-1"
PAGES = (
    "/audit",
    "/audit/record/{study}",
    "/audit/record/{study}/at?time=2026-01-01",
    f"/audit/access?patient={PATIENT}",
)
API = (
    "/api/audit/search?q={study}",
    "/api/audit/records/{study}/timeline",
    "/api/audit/records/{study}/at?time=2026-01-01",
    f"/api/audit/access?patient={PATIENT}",
    f"/api/audit/access.csv?patient={PATIENT}",
    f"/api/audit/access/bundle?patient={PATIENT}",
    "/api/audit/public-key",
    "/api/audit/records/{study}",
    "/api/audit/verify",
)


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ReadSide, str]]:
    with ReadSide.start(tmp_path_factory.mktemp("audit-pages")) as running:
        study = generate_uid(prefix=ROOT_UID)
        running.store_study(study, 3, patient_id=PATIENT)
        running.wait_indexed(study, 3)
        yield running, study


def dicom_entries(client: httpx.Client, study: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        answer = client.get(f"/api/audit/records/{study}/timeline")
        entries = (
            [e for e in answer.json().get("entries", []) if e["topic"] == "cami.dicom"] if answer.is_success else []
        )
        if len(entries) == 3 or time.monotonic() > deadline:
            assert len(entries) == 3, answer.text[:500]
            return entries
        time.sleep(0.1)


def denied(side: ReadSide, user: str) -> list[dict[str, Any]]:
    out = []
    for event in side.accesses():
        if event.envelope.actor.user == user and event.payload["outcome"] == "denied":
            out.append({"channel": event.payload["channel"], **json.loads(event.payload["query"] or "{}")})
    return out


def test_wrong_roles_are_refused_and_each_refusal_is_recorded(side: tuple[ReadSide, str]) -> None:
    running, study = side
    with running.client() as anonymous:
        for page in PAGES:
            answer = anonymous.get(page.format(study=study))
            assert answer.status_code == 303, page
            assert answer.headers["location"].startswith("/signin?next=%2Faudit"), page
        for path in API:
            answer = anonymous.get(path.format(study=study))
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorised", path

    for user in ("dr.petrov", "ref.ivanov", "it", "analyst", "okb-pacs"):
        with running.client(user) as client:
            for page in PAGES:
                answer = client.get(page.format(study=study))
                assert answer.status_code == 403, (user, page)
                assert "error.403-audit" in answer.text and "text/html" in answer.headers["content-type"]
                assert 'id="nav-audit"' not in answer.text  # the top bar offers no audit to this role
            for path in API:
                answer = client.get(path.format(study=study))
                assert answer.status_code == 403, (user, path)
                assert answer.json()["error"] == "forbidden" and "audit trail" in answer.json()["detail"]
        recorded = denied(running, user)
        asked = {(r["channel"], r["path"]) for r in recorded}
        assert {("audit-page", p.format(study=study).split("?")[0]) for p in PAGES} <= asked, recorded
        assert {("api", p.format(study=study).split("?")[0]) for p in API} <= asked, recorded
        assert len(recorded) == len(PAGES) + len(API)

    for user in ("auditor", "admin"):
        with running.client(user) as client:
            home = client.get("/audit")
            assert home.status_code == 200 and 'id="nav-audit"' in home.text and 'id="audit-search"' in home.text
            found = client.get("/audit", params={"q": study})  # one match: straight to its timeline
            assert found.status_code == 303 and found.headers["location"] == f"/audit/record/{study}"
            assert client.get(f"/audit/record/{study}").status_code == 200
            assert client.get(f"/audit/access?patient={PATIENT}").status_code == 200
            key = client.get("/api/audit/public-key").json()
            assert key["algorithm"] == "Ed25519" and len(key["public_key"]) == 44
        assert denied(running, user) == []
        # the auditor's reads are recorded like every read of patient data
        reads = [
            e for e in running.accesses() if e.envelope.actor.user == user and e.payload["channel"] == "audit-page"
        ]
        assert {e.payload["action"] for e in reads} >= {"query", "view"}
    with running.client("dr.petrov") as radiologist:
        assert 'id="nav-audit"' not in radiologist.get("/search").text


def tamper(running: ReadSide, entry: dict[str, Any], column: str, value: str) -> None:
    running.archive.warehouse.command(
        f"ALTER TABLE audit_trail UPDATE {column} = {{v:String}} WHERE topic = {{t:String}}"
        " AND partition = {p:UInt16} AND offset = {o:UInt64} SETTINGS mutations_sync = 2",
        {"v": value, "t": entry["topic"], "p": entry["partition"], "o": entry["offset"]},
    )


def rows(page: str) -> dict[str, str]:
    """position -> the row's classes, from the timeline page."""
    return dict(
        (position, classes)
        for classes, position in re.findall(r'<tr class="(entry[^"]*)" data-position="([^"]+)"', page)
    )


def test_the_timeline_checks_each_entry_and_highlights_the_first_broken(side: tuple[ReadSide, str]) -> None:
    running, study = side
    with running.client("auditor") as auditor:
        chain = dicom_entries(auditor, study)
        page = auditor.get(f"/audit/record/{study}")
        assert page.status_code == 200 and 'class="chain-ok"' in page.text
        shown = rows(page.text)
        assert all(classes == "entry" for classes in shown.values()) and len(shown) >= 3
        assert all(e["check"] is None for e in chain)

        second, third = chain[1], chain[2]
        tamper(running, second, "summary", "nothing happened here")  # seen against the log only
        tamper(running, third, "entry_hash", "f" * 64)  # breaks the chain itself
        page = auditor.get(f"/audit/record/{study}")
        shown = rows(page.text)
        where = lambda e: f"{e['topic']}/{e['partition']}@{e['offset']}"  # noqa: E731
        assert shown[where(second)] == "entry broken first-broken"
        assert shown[where(third)] == "entry broken"
        assert shown[where(chain[0])] == "entry"
        assert 'class="chain-broken"' in page.text and 'id="first-broken"' in page.text
        assert f"{where(second)} (summary)" in page.text

        found = auditor.get(f"/api/audit/records/{study}/timeline").json()
        assert found["broken"] == 2
        first = found["first_broken"]
        assert (first["topic"], first["partition"], first["offset"], first["problem"]) == (
            second["topic"],
            second["partition"],
            second["offset"],
            "summary",
        )
        assert first["expected"] == second["summary"] and first["stored"] == "nothing happened here"
        by_position = {where(e): e for e in found["entries"]}
        assert by_position[where(third)]["check"]["problem"] == "entry_hash"
        assert by_position[where(second)]["first_broken"] is True
        assert by_position[where(third)]["first_broken"] is False


def test_a_bad_time_and_an_unknown_record_are_clear_refusals(side: tuple[ReadSide, str]) -> None:
    running, study = side
    with running.client("auditor") as auditor:
        page = auditor.get(f"/audit/record/{study}/at", params={"time": "31.02.2026"})
        assert page.status_code == 400 and 'id="at-problem"' in page.text
        assert auditor.get("/audit/record/1.2.3.999").status_code == 404
        answer = auditor.get("/api/audit/records/1.2.3.999/timeline")
        assert answer.status_code == 404 and answer.json()["error"] == "not-found"
        answer = auditor.get("/api/audit/access", params={"patient": PATIENT, "since": "soon"})
        assert answer.status_code == 400 and answer.json()["detail"]["parameter"] == "since"
        # a patient ID found by the search: the timeline of every record naming the patient
        found = auditor.get("/audit", params={"q": PATIENT})
        assert found.status_code == 303 and found.headers["location"] == f"/audit/record/{PATIENT}?patient=1"
        page = auditor.get(found.headers["location"])
        assert page.status_code == 200 and page.text.count("InstanceReceived") == 3
        nothing = auditor.get("/audit", params={"q": "no-such-thing"})
        assert nothing.status_code == 200 and 'id="audit-none"' in nothing.text
        listed = auditor.get("/api/audit/access.csv", params={"patient": PATIENT})
        assert listed.status_code == 200 and listed.headers["content-type"].startswith("text/csv")
        assert listed.text.splitlines()[0].startswith("occurred_at,actor_user,actor_role,organisation")
