"""STOW-RS through the real HTTP server (uvicorn on a loopback port) with an HTTP client."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest

from streams.topics import DICOM, REPORTS
from tests.support.stow import (
    CLASS_UID,
    COMMENT,
    FAILED,
    ORG,
    REASON,
    REFERENCED,
    RETRIEVE,
    SOP_UID,
    RunningArchive,
    ct_dataset,
    multipart,
    new_study,
    part10,
    seq,
    start_archive,
    value,
)
from tests.support.stow import running as running

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


# -- tests -------------------------------------------------------------------------------------
def test_stow_of_several_instances_stores_each_and_lists_retrieve_urls(running: RunningArchive) -> None:
    study = new_study()
    datasets = [ct_dataset(study, number=i) for i in range(1, 4)]
    response = running.stow("okb-pacs", [part10(ds) for ds in datasets])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    body = response.json()
    assert FAILED not in body
    stored = seq(body, REFERENCED)
    assert {value(i, SOP_UID) for i in stored} == {ds.SOPInstanceUID for ds in datasets}
    for item in stored:
        assert value(item, CLASS_UID) == CT_IMAGE
        url = value(item, RETRIEVE)
        assert url == f"{running.url}/dicomweb/studies/{study}/series/{study}.1/instances/{value(item, SOP_UID)}"
    assert value(body, RETRIEVE) == f"{running.url}/dicomweb/studies/{study}"
    received = [e for e in running.events(DICOM) if e.type == "InstanceReceived"]
    assert {e["SOPInstanceUID"] for e in received} == {ds.SOPInstanceUID for ds in datasets}
    for event in received:
        assert event["channel"] == "stow-rs"
        assert event.envelope.organisation == ORG
        assert event.envelope.actor.user == "okb-pacs"
        assert event["PatientName"] == "Иванов^Иван^Иванович"
        # byte for byte: the blob is the part as sent
        sent = next(part10(ds) for ds in datasets if ds.SOPInstanceUID == event["SOPInstanceUID"])
        assert running.archive.blobs.get(event["blob"]["sha256"]) == sent


def test_mixed_valid_and_invalid_parts_answer_202_with_each_reason(running: RunningArchive) -> None:
    study = new_study()
    good = ct_dataset(study)
    no_patient = ct_dataset(study, patient_id=None)
    bad_uid = ct_dataset(study)
    bad_uid.SOPInstanceUID = "1.2.03.abc"
    truncated = part10(ct_dataset(study))[:-20]
    response = running.stow(
        "okb-pacs", [part10(good), part10(no_patient), part10(bad_uid), truncated, b"%PDF-1.4 not dicom at all"]
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert [value(i, SOP_UID) for i in seq(body, REFERENCED)] == [good.SOPInstanceUID]
    failed = seq(body, FAILED)
    assert len(failed) == 4
    comments = [value(i, COMMENT) for i in failed]
    assert comments[0].startswith("missing-patient-id")
    assert value(failed[0], SOP_UID) == no_patient.SOPInstanceUID
    assert value(failed[0], REASON) == 0xA900
    assert comments[1].startswith("invalid-uid")
    assert value(failed[1], REASON) == 0xA900
    assert value(failed[1], SOP_UID) is None  # a malformed UID is described, never echoed
    assert comments[2].startswith("malformed") and "truncated" in comments[2]
    assert value(failed[2], REASON) == 0xC000
    assert comments[3].startswith("malformed") and "DICM" in comments[3]
    assert value(failed[3], REASON) == 0xC000
    # no patient data in the answer
    assert "Иванов" not in response.text and "P-1001" not in response.text
    rejected = [e for e in running.events(DICOM) if e.type == "InstanceRejected"]
    assert sorted(e["reason"] for e in rejected) == sorted(
        ["missing-patient-id", "invalid-uid", "malformed", "malformed"]
    )


def test_all_invalid_parts_answer_409(running: RunningArchive) -> None:
    study = new_study()
    response = running.stow("okb-pacs", [part10(ct_dataset(study, patient_id=None)), b"garbage" * 40])
    assert response.status_code == 409, response.text
    assert REFERENCED not in response.json()
    assert len(seq(response.json(), FAILED)) == 2


def test_wrong_content_type_is_415(running: RunningArchive) -> None:
    data = part10(ct_dataset(new_study()))
    with running.client("okb-pacs") as c:
        plain = c.post("/dicomweb/studies", content=data, headers={"Content-Type": "application/dicom"})
        metadata = c.post(
            "/dicomweb/studies",
            content=b"--b\r\n\r\n{}\r\n--b--",
            headers={"Content-Type": 'multipart/related; type="application/dicom+json"; boundary=b'},
        )
    for response in (plain, metadata):
        assert response.status_code == 415
        assert response.json()["error"] == "unsupported-media-type"


def test_malformed_multipart_is_400(running: RunningArchive) -> None:
    data = part10(ct_dataset(new_study()))
    with running.client("okb-pacs") as c:
        no_boundary = c.post(
            "/dicomweb/studies", content=data, headers={"Content-Type": 'multipart/related; type="application/dicom"'}
        )
        body, content_type = multipart([data])
        unterminated = c.post(
            "/dicomweb/studies", content=body[: len(body) // 2], headers={"Content-Type": content_type}
        )
        other_boundary = c.post(
            "/dicomweb/studies", content=body, headers={"Content-Type": content_type.replace("cami-", "other-")}
        )
    for response in (no_boundary, unterminated, other_boundary):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "malformed-multipart"
        assert "Traceback" not in response.text
    assert not [e for e in running.events(DICOM) if e.type == "InstanceReceived"]


def test_no_token_is_401_and_wrong_role_is_403(running: RunningArchive) -> None:
    body, content_type = multipart([part10(ct_dataset(new_study()))])
    with running.client() as c:
        anonymous = c.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        forged = c.post(
            "/dicomweb/studies",
            content=body,
            headers={"Content-Type": content_type, "Authorization": "Bearer not-a-token"},
        )
    assert anonymous.status_code == 401
    assert anonymous.json() == {"error": "unauthorised", "detail": "a bearer token is required"}
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    assert forged.status_code == 401
    with running.client("ref.ivanov") as c:
        wrong_role = c.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
    assert wrong_role.status_code == 403
    assert wrong_role.json()["error"] == "forbidden"
    assert not running.events(DICOM)  # nothing stored, nothing recorded


def test_instance_of_another_study_fails_and_is_not_stored(running: RunningArchive) -> None:
    study, other = new_study(), new_study()
    mine, foreign = ct_dataset(study), ct_dataset(other)
    response = running.stow("okb-pacs", [part10(mine), part10(foreign)], study=study)
    assert response.status_code == 202, response.text
    body = response.json()
    assert [value(i, SOP_UID) for i in seq(body, REFERENCED)] == [mine.SOPInstanceUID]
    [failed] = seq(body, FAILED)
    assert value(failed, SOP_UID) == foreign.SOPInstanceUID
    assert value(failed, REASON) == 0xA900
    assert value(failed, COMMENT).startswith("study-mismatch")
    assert value(body, RETRIEVE) == f"{running.url}/dicomweb/studies/{study}"
    events = running.events(DICOM)
    assert [e["SOPInstanceUID"] for e in events if e.type == "InstanceReceived"] == [mine.SOPInstanceUID]
    [rejected] = [e for e in events if e.type == "InstanceRejected"]
    assert rejected["reason"] == "study-mismatch"
    assert running.archive.sop_index.latest(foreign.SOPInstanceUID) is None


def test_duplicate_restow_is_harmless(running: RunningArchive) -> None:
    study = new_study()
    data = [part10(ct_dataset(study, number=i)) for i in (1, 2)]
    first = running.stow("okb-pacs", data)
    assert first.status_code == 200
    before = running.events(DICOM)
    second = running.stow("okb-pacs", data)
    assert second.status_code == 200, second.text
    assert len(seq(second.json(), REFERENCED)) == 2
    assert running.events(DICOM) == before  # no second event


def test_body_over_the_limit_is_413(tmp_path: Path) -> None:
    for running in start_archive(tmp_path / "small", max_body=2048):  # noqa: F402 (shadows the fixture)
        response = running.stow("okb-pacs", [part10(ct_dataset(new_study())) + b"\x00" * 4096])
        assert response.status_code == 413
        assert response.json()["error"] == "payload-too-large"
        assert not running.events(DICOM)


def test_errors_are_json_and_openapi_is_served(running: RunningArchive) -> None:
    with running.client("okb-pacs") as c:
        missing = c.get("/no/such/thing")
        spec = c.get("/openapi.json")
    assert missing.status_code == 404
    assert missing.json()["error"] == "not-found"
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    assert "/dicomweb/studies" in paths and "/api/reports/{report_id}/sign" in paths


def test_reports_topic_untouched_by_images(running: RunningArchive) -> None:
    assert running.stow("okb-pacs", [part10(ct_dataset(new_study()))]).status_code == 200
    assert running.events(REPORTS) == []


def test_cli_users_add_prints_a_token_that_signs_in(running: RunningArchive) -> None:
    import os
    import subprocess
    import sys

    home = running.archive.settings.home
    env = {**os.environ, "CAMI_HOME": str(home)}
    env.pop("CAMI_USERS", None)
    cmd = [sys.executable, "-m", "api.cli", "users", "add"]
    added = subprocess.run(
        [*cmd, "gp2-pacs", "--role", "modality", "--organisation", "ORG-GP2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    stored = (home / "users.toml").read_text(encoding="utf-8")
    assert token not in stored and hashlib_sha256(token) in stored
    no_code = subprocess.run(
        [*cmd, "dr.x", "--role", "radiologist"], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert no_code.returncode == 2 and "doctor-code" in no_code.stderr
    running.tokens["gp2-pacs"] = token  # the running server re-reads the file
    response = running.stow("gp2-pacs", [part10(ct_dataset(new_study()))])
    assert response.status_code == 200, response.text
    [event] = [e for e in running.events(DICOM) if e.type == "InstanceReceived"]
    assert event.envelope.organisation == "ORG-GP2"


def hashlib_sha256(token: str) -> str:
    import hashlib

    return hashlib.sha256(token.encode()).hexdigest()


def test_retrieve_urls_keep_the_port_when_the_host_header_names_none(running: RunningArchive) -> None:
    """dicomweb-client sends ``Host: 127.0.0.1`` without the port; the RetrieveURLs must still lead
    back to the port the archive listens on, not to port 80."""
    study = new_study()
    body, content_type = multipart([part10(ct_dataset(study))])
    with running.client("okb-pacs") as c:
        response = c.post(
            "/dicomweb/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json", "Host": "127.0.0.1"},
        )
    assert response.status_code == 200, response.text
    assert value(response.json(), RETRIEVE) == f"{running.url}/dicomweb/studies/{study}"
    (item,) = seq(response.json(), REFERENCED)
    assert str(value(item, RETRIEVE)).startswith(f"{running.url}/dicomweb/studies/{study}/series/")


def test_a_sender_going_away_mid_body_stores_nothing_and_is_no_server_error(
    running: RunningArchive, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent's slow link breaks in the middle of a STOW-RS body: nothing is stored, and the
    server logs no unhandled exception (it ends the request as a client error)."""
    host, port = running.server.host, running.server.port
    body = part10(ct_dataset(new_study()))
    head = (
        f"POST /dicomweb/studies HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {running.tokens['okb-pacs']}\r\n"
        'Content-Type: multipart/related; type="application/dicom"; boundary=b\r\n'
        f"Content-Length: {len(body) * 4}\r\n\r\n"
    ).encode()
    with caplog.at_level(logging.ERROR), socket.create_connection((host, port)) as sock:
        sock.sendall(head + b"--b\r\nContent-Type: application/dicom\r\n\r\n" + body[: len(body) // 2])
        time.sleep(0.5)  # the server is reading the body when the sender goes away
    time.sleep(2)  # the server notices the closed connection and ends the request
    assert running.client("okb-pacs").get("/openapi.json").status_code == 200  # it still serves
    assert not [r for r in caplog.records if "Exception in ASGI application" in r.getMessage()]
    assert not running.events(DICOM)
