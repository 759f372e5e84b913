"""The MIS's HL7 v2 link as an MIS drives it: ``cami serve`` (embedded defaults) with its MLLP
port, the ``hl7`` package's ``mllp_send`` as the client. Valid ADT, ORM and ORU messages get AA
and their events; broken ones get AE/AR with the reason and a MessageRejected event; the
listener keeps serving. An ADT^A40 merge then moves a study stored (storescu) under the old
patient ID to the new one in QIDO-RS, C-FIND (findscu), the study page and the audit timeline."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from streams.topics import ORDERS, PATIENTS, REPORTS
from tests.support.agent_region import ADMIN_TOKEN, Cami, cami_with_hl7, storescu, wait_for
from tests.support.hl7 import MLLP_END, MLLP_START, ack_fields, message, mllp_send, pid, segment

pytestmark = pytest.mark.slow

SENDER_AE = "OKB_AGENT"
VIEWER_AE = "VIEWER"
OLD_ID, NEW_ID = "OLD-77", "NEW-77"


@pytest.fixture()
def cami(tmp_path: Path) -> Iterator[tuple[Cami, int]]:
    viewer = f'[[qr_caller]]\nae_title = "{VIEWER_AE}"\norganisation = "ORG01"\nrole = "radiologist"\n'
    with cami_with_hl7(tmp_path / "cami", viewer, SENDER_AE) as served:
        yield served


def ct_study(tmp_path: Path, patient_id: str) -> tuple[str, Path]:
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID = patient_id
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.AccessionNumber = "ACC-HL7-1"
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    return str(ds.StudyInstanceUID), path


def test_an_mis_registers_orders_reports_and_merges_over_mllp(cami: tuple[Cami, int], tmp_path: Path) -> None:
    server, hl7_port = cami
    study, path = ct_study(tmp_path, OLD_ID)
    storescu(SENDER_AE, "CAMI", server.dicom_port, [path])

    valid = [
        message(
            "ADT^A04", pid(NEW_ID, "Орлова^Мария^Ивановна", "19750310", "F"), control_id="V1", charset="UNICODE UTF-8"
        ),
        message(
            "ORM^O01",
            pid(NEW_ID, "Орлова^Мария"),
            segment("ORC", {1: "NW", 2: "PL-77", 12: "D55^Хирургов^Олег"}),
            segment(
                "OBR", {1: "1", 2: "PL-77", 4: "A06.09.005^КТ органов грудной полости^RGC", 18: "ACC-77", 24: "CT"}
            ),
            control_id="V2",
            charset="UNICODE UTF-8",
        ),
        message(
            "ORU^R01",
            pid(OLD_ID),
            segment("OBR", {1: "1", 2: "PL-1", 18: "ACC-HL7-1", 25: "F", 32: "D9&Рентгенов&Пётр"}),
            segment("OBX", {1: "1", 2: "TX", 3: "GDT^Описание", 5: "Очаговых изменений нет"}),
            segment("OBX", {1: "2", 2: "TX", 3: "IMP^Заключение", 5: "Норма"}),
            control_id="V3",
            charset="UNICODE UTF-8",
        ),
    ]
    broken = [
        message("ADT^A08", pid("X1"), control_id="B1", version="2.1"),  # wrong version
        message("ADT^A08", segment("PID", {5: "Безымянный"}), control_id="B2", charset="UNICODE UTF-8"),  # no PID-3
        message("SIU^S12", control_id="B3"),  # a message type CAMI does not take
    ]
    cp1251 = message("ADT^A08", pid("CP-1", "Кузнецов^Олег"), control_id="B4", charset="UNICODE UTF-8")
    # the study's record must be known before the result names it by accession number
    wait_for("the study in the query model", lambda: _qido(server, {"AccessionNumber": "ACC-HL7-1"}), timeout=60)

    acks = mllp_send(hl7_port, [m.encode() for m in valid + broken] + [cp1251.encode("cp1251")], tmp_path)
    answered = [ack_fields(a) for a in acks]
    assert [(a["MSA-1"], a["MSA-2"]) for a in answered] == [
        ("AA", "V1"),
        ("AA", "V2"),
        ("AA", "V3"),
        ("AR", "B1"),
        ("AE", "B2"),
        ("AR", "B3"),
        ("AE", "B4"),  # declared UTF-8, written in Windows-1251: refused, not guessed
    ]
    assert [a.get("ERR-3") for a in answered[3:]] == ["203", "101", "200", "102"]
    assert "MSH-12" in answered[3]["ERR-8"] and "PID-3" in answered[4]["ERR-8"]

    # the listener keeps serving: bytes that are no MLLP block, then a valid message, one connection
    with socket.create_connection(("127.0.0.1", hl7_port), timeout=10) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + MLLP_END)
        assert ack_fields(_read_block(raw))["MSA-1"] == "AR"
        raw.sendall(MLLP_START + message("ADT^A08", pid("AFTER-1"), control_id="V4").encode() + MLLP_END)
        assert ack_fields(_read_block(raw))["MSA-1"] == "AA"

    patients = server.events(PATIENTS)
    assert {(e.type, e["PatientID"]) for e in patients} == {("PatientUpdated", NEW_ID), ("PatientUpdated", "AFTER-1")}
    updated = next(e for e in patients if e["PatientID"] == NEW_ID)
    assert updated["PatientName"] == "Орлова^Мария^Ивановна" and updated.envelope.actor.role == "mis"
    orders = server.events(ORDERS)
    placed = [e for e in orders if e.type == "OrderPlaced"]
    assert [(e["AccessionNumber"], e["ReferringPhysicianName"]) for e in placed] == [("ACC-77", "Хирургов^Олег")]
    refusals = sorted((e["control_id"] or "", e["reason"]) for e in orders if e.type == "MessageRejected")
    assert refusals == [
        ("", "unframed"),
        ("B1", "unsupported-version"),
        ("B2", "missing-patient-id"),
        ("B3", "unsupported-message-type"),
        ("B4", "broken-encoding"),
    ]
    reports = [e for e in server.events(REPORTS) if e["StudyInstanceUID"] == study]
    assert [e.type for e in reports] == ["ReportDrafted", "ReportSigned"]
    assert reports[1]["conclusion_text"] == "Норма" and reports[1]["signer"]["code"] == "D9"

    # the MIS merges the old record into the new one
    (merge_ack,) = mllp_send(
        hl7_port, [message("ADT^A40", pid(NEW_ID), segment("MRG", {1: OLD_ID}), control_id="M1").encode()], tmp_path
    )
    assert ack_fields(merge_ack)["MSA-1"] == "AA"
    found = wait_for("the study under the new ID (QIDO-RS)", lambda: _qido(server, {"PatientID": NEW_ID}), timeout=60)
    assert [s["0020000D"]["Value"][0] for s in found] == [study]
    assert found[0]["00100020"]["Value"][0] == NEW_ID
    assert _findscu(server, tmp_path, NEW_ID) == [(study, NEW_ID)]
    with httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as client:
        page = client.get("/study", params={"patient": NEW_ID, "study": study})
        assert page.status_code == 200 and NEW_ID in page.text and "Норма" in page.text

        def merged_in_timeline() -> list[dict[str, Any]] | None:
            answer = client.get(f"/api/audit/records/{NEW_ID}/timeline")
            if answer.status_code != 200:
                return None
            entries: list[dict[str, Any]] = answer.json()["entries"]
            return [e for e in entries if e["event_type"] == "PatientsMerged"] or None

        merges = wait_for("the merge in the audit timeline", merged_in_timeline, timeout=60)
        assert merges[0]["actor_user"] == "hl7:MIS@ORG01"


def _qido(server: Cami, params: dict[str, str]) -> list[dict[str, Any]] | None:
    answer = httpx.get(
        f"{server.base_url}/dicomweb/studies",
        params=params,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    found: list[dict[str, Any]] = answer.json() if answer.status_code == 200 else []
    return found or None


def _findscu(server: Cami, tmp_path: Path, patient_id: str) -> list[tuple[str, str]]:
    out = tmp_path / "find"
    out.mkdir(exist_ok=True)
    subprocess.run(
        ["/usr/bin/findscu", "-S", "-aet", VIEWER_AE, "-aec", "CAMI", "-X", "-od", str(out),
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={patient_id}", "-k", "StudyInstanceUID",
         "127.0.0.1", str(server.dicom_port)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    answers = [pydicom.dcmread(p) for p in sorted(out.iterdir())]
    return [(str(a.StudyInstanceUID), str(a.PatientID)) for a in answers]


def _read_block(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(MLLP_END):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data
