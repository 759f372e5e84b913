"""The auditor's acceptance (issue 12, point 3), on both event-log backends.

A study arrives with dcmtk's storescu, a radiologist drafts, signs and amends its report over the
reports API, more objects arrive, and the MIS merges the patient into another ID (a
PatientsMerged event on the log, as its ADT feed would append it). At three moments the study as
the archive knew it (``/api/audit/records/{study}/at`` and ``cami audit at``) must equal what the
events themselves say was known then: the instances, the report text and the patient ID.

Doctors of two organisations open the study page; "who saw this patient" lists them, the signed
bundle from ``cami audit access --bundle`` verifies offline with the pinned key (``cami audit
public-key``), and one byte edited in an entry makes ``cami audit verify-bundle`` exit 1 naming it.
"""

from __future__ import annotations

import csv
import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from schemas.events import new_event
from streams.publisher import publish
from tests.support.cli import embedded_env, run_cami
from tests.support.readside import ORG, ORG_B, ROOT_UID, ReadSide


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def log_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "embedded":
        return f"sqlite://{tmp_path}/events.db"
    server: Any = request.getfixturevalue("kafka_server")
    return f"kafka://{server.bootstrap}"


def moment() -> datetime:
    """Now, with a little room either side so no event shares the instant."""
    time.sleep(0.05)
    now = datetime.now(UTC)
    time.sleep(0.05)
    return now


def known_from_events(side: ReadSide, study: str, patient: str, at: datetime) -> dict[str, Any]:
    """What the events recorded by ``at`` say: instances, current report texts, patient ID."""
    instances = {
        str(e.payload["SOPInstanceUID"])
        for e in side.events("cami.dicom")
        if e.type == "InstanceReceived" and e.payload["StudyInstanceUID"] == study and e.envelope.recorded_at <= at
    }
    texts: tuple[str, str] | None = None
    reports = [
        e
        for e in side.events("cami.reports")
        if e.payload.get("StudyInstanceUID") == study and e.envelope.recorded_at <= at
    ]
    for event in sorted(reports, key=lambda e: e.envelope.recorded_at):
        if event.type == "ReportAmended":
            texts = (event.payload["protocol_after"], event.payload["conclusion_after"])
        else:
            texts = (event.payload["protocol_text"], event.payload["conclusion_text"])
    patient_id = patient
    for event in side.events("cami.patients"):
        if (
            event.type == "PatientsMerged"
            and event.payload["PriorPatientID"] == patient_id
            and event.envelope.recorded_at <= at
        ):
            patient_id = str(event.payload["PatientID"])
    return {"instances": instances, "texts": texts, "patient_id": patient_id}


def shown(state: dict[str, Any]) -> dict[str, Any]:
    """The same three facts from a state the archive computed."""
    reports = state["reports"]
    texts = (reports[0]["protocol_text"], reports[0]["conclusion_text"]) if reports else None
    return {
        "instances": {i["sop_uid"] for i in state["instances"]},
        "texts": texts,
        "patient_id": state["patient"]["patient_id"],
    }


def wait_for(check: Any, what: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def test_the_record_at_three_moments_and_who_saw_the_patient(tmp_path: Path, log_url: str) -> None:
    run = uuid.uuid4().hex[:8]  # the Kafka broker is the session's: this test's own IDs
    old_id, new_id = f"AUD-{run}", f"AUD-{run}-NEW"
    study = generate_uid(prefix=ROOT_UID)
    moments: list[datetime] = []
    with ReadSide.start(tmp_path, env={"CAMI_EVENT_LOG": log_url}) as side:
        before = moment()
        side.store_study(study, 2, patient_id=old_id)
        side.wait_indexed(study, 2)
        moments.append(moment())  # 1: two instances, no report, the old ID

        with side.client("dr.petrov") as radiologist:
            created = radiologist.post(
                "/api/reports",
                json={
                    "study_instance_uid": study,
                    "protocol_text": "Протокол: норма",
                    "conclusion_text": "Без патологии",
                },
            )
            assert created.status_code == 201, created.text
            report_id = created.json()["report_id"]
            signed = radiologist.post(f"/api/reports/{report_id}/sign")
            assert signed.status_code == 200, signed.text
        side.store_study(study, 1, patient_id=old_id)  # a third instance, another series
        side.wait_indexed(study, 3)
        moments.append(moment())  # 2: three instances, the signed text, the old ID

        with side.client("dr.petrov") as radiologist:
            amended = radiologist.post(
                f"/api/reports/{report_id}/amendments",
                json={"reason": "уточнение", "conclusion_text": "Очаг в S6 правого лёгкого"},
            )
            assert amended.status_code == 201, amended.text
        merge = new_event(
            "PatientsMerged",
            {"PatientID": new_id, "PriorPatientID": old_id, "source": "hl7"},
            aggregate_id=new_id,
            source_node="MIS",
        )
        publish(side.archive.event_log, merge)
        moments.append(moment())  # 3: the amended text, the new ID

        # the three moments differ, and each is what the events say was known then
        expected = [known_from_events(side, study, old_id, at) for at in moments]
        assert [len(e["instances"]) for e in expected] == [2, 3, 3]
        assert [e["texts"] for e in expected] == [
            None,
            ("Протокол: норма", "Без патологии"),
            ("Протокол: норма", "Очаг в S6 правого лёгкого"),
        ]
        assert [e["patient_id"] for e in expected] == [old_id, old_id, new_id]
        with side.client("auditor") as auditor:
            states = []
            for at, known in zip(moments, expected, strict=True):
                answer = auditor.get(f"/api/audit/records/{study}/at", params={"time": at.isoformat()})
                assert answer.status_code == 200, answer.text
                states.append(answer.json())
                assert shown(answer.json()["then"]) == known
            # each answer's "now" is the latest, and the difference names what changed
            assert shown(states[0]["now"]) == expected[2]
            change = states[0]["diff"]
            assert len(change["instances_added"]) == 1 and change["patient"]["patient_id"] == {
                "then": old_id,
                "now": new_id,
            }
            assert change["reports"][0]["conclusion_text"]["now"] == "Очаг в S6 правого лёгкого"
            assert change["merges_added"][0]["prior_patient_id"] == old_id
            assert states[2]["diff"]["reports"] == [] and states[2]["diff"]["patient"] == {}
            # before the study arrived it was not known; versions and demographics are there
            early = auditor.get(f"/api/audit/records/{study}/at", params={"time": before.isoformat()}).json()
            assert early["then"]["known"] is False and early["then"]["instances"] == []
            assert len(states[1]["then"]["versions"]) == 3 and states[1]["then"]["patient"]["patient_name"]
            # the page shows the same
            page = auditor.get(f"/audit/record/{study}/at", params={"time": moments[1].isoformat()})
            assert page.status_code == 200 and "Без патологии" in page.text and 'id="diff"' in page.text
            bad = auditor.get(f"/api/audit/records/{study}/at", params={"time": "yesterday"})
            assert bad.status_code == 400 and bad.json()["detail"]["parameter"] == "time"
            unknown = auditor.get("/api/audit/records/1.2.3.999/at", params={"time": moments[0].isoformat()})
            assert unknown.status_code == 404 and unknown.json()["error"] == "not-found"

        # doctors of two organisations open the study page
        for doctor, requested in (("dr.petrov", old_id), ("ref.ivanov", old_id)):
            with side.client(doctor) as client:
                opened = client.get("/study", params={"patient": requested, "study": study})
                assert opened.status_code == 200, opened.text[:300]
        with side.client("auditor") as auditor:

            def both_seen() -> dict[str, Any] | None:
                found: dict[str, Any] = auditor.get("/api/audit/access", params={"patient": new_id}).json()
                views = {(e["actor_user"], e["organisation"]) for e in found["entries"] if "study-page" in e["summary"]}
                return found if {("dr.petrov", ORG), ("ref.ivanov", ORG_B)} <= views else None

            found = wait_for(both_seen, "both study-page views in the audit trail")
            # the report ID leads the search to its study
            matches = wait_for(
                lambda: auditor.get("/api/audit/search", params={"q": report_id}).json()["matches"],
                "the report in the archive index",
            )
            assert {"kind": "report", "record": study, "label": f"{report_id} → {study}"} in matches
            assert set(found["patient_ids"]) == {old_id, new_id} and found["studies"] == [study]
            only_b = auditor.get("/api/audit/access", params={"patient": new_id, "organisation": ORG_B}).json()
            assert {e["actor_user"] for e in only_b["entries"]} == {"ref.ivanov"}
            # wait until the merge is in the audit trail too, so the CLI below sees what this process saw
            wait_for(
                lambda: auditor.get(f"/api/audit/records/{new_id}/timeline").status_code == 200,
                "the merge in the audit trail",
            )
    home = side.home

    env = {**embedded_env(tmp_path), "CAMI_HOME": str(home), "CAMI_EVENT_LOG": log_url, "CAMI_PARTITIONS": "3"}
    # `cami audit at` gives the same states as the API did
    for at, known in zip(moments, expected, strict=True):
        done = run_cami("audit", "at", study, "--time", at.isoformat(), "--json", env=env)
        assert done.returncode == 0, done.stderr
        assert shown(json.loads(done.stdout)["then"]) == known
    text = run_cami("audit", "at", study, "--time", moments[1].isoformat(), env=env)
    assert text.returncode == 0 and "Без патологии" in text.stdout and new_id in text.stdout
    bad_time = run_cami("audit", "at", study, "--time", "31.02.2026", env=env)
    assert bad_time.returncode == 1 and "not an ISO 8601 time" in bad_time.stderr
    unknown = run_cami("audit", "at", "1.2.3.999", "--time", moments[0].isoformat(), env=env)
    assert unknown.returncode == 1 and "unknown record" in unknown.stderr

    # who saw the patient: CSV and the signed bundle
    bundle, table = tmp_path / "bundle.json", tmp_path / "access.csv"
    listed = run_cami("audit", "access", new_id, "--bundle", str(bundle), "--csv", str(table), "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["entries"]
    with table.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(entries) >= 2
    assert {("dr.petrov", ORG), ("ref.ivanov", ORG_B)} <= {(r["actor_user"], r["organisation"]) for r in rows}
    key = run_cami("audit", "public-key", env=env)
    assert key.returncode == 0
    pinned = key.stdout.strip()
    document = json.loads(bundle.read_text(encoding="utf-8"))
    assert document["public_key"] == pinned
    assert sum(1 for e in document["entries"] if e["selected"]) == len(entries)
    assert (home / "audit-signing.key").stat().st_mode & 0o777 == 0o600

    intact = run_cami("audit", "verify-bundle", str(bundle), "--public-key", pinned)  # offline: no archive env
    assert intact.returncode == 0, intact.stdout + intact.stderr
    assert intact.stdout.startswith("bundle intact:")
    other_key = run_cami("audit", "verify-bundle", str(bundle), "--public-key", "A" * 43 + "=")
    assert other_key.returncode == 1 and "not the pinned one" in other_key.stdout

    # one byte edited in an entry's content: named
    raw = bundle.read_bytes()
    target = next(e for e in document["entries"] if e["selected"] and e["view"]["user"] == "ref.ivanov")
    needle = f'"n": {target["n"]},'.encode()
    start = raw.index(needle)
    where = raw.index(b'"user": "ref.ivanov"', start) + len(b'"user": "ref.ivano')
    edited = tmp_path / "edited.json"
    edited.write_bytes(raw[:where] + b"w" + raw[where + 1 :])
    broken = run_cami("audit", "verify-bundle", str(edited))
    assert broken.returncode == 1
    assert f"first bad entry: {target['n']}" in broken.stdout, broken.stdout
    assert f"entry {target['n']} (record " in broken.stdout
