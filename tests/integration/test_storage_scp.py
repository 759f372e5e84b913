"""The Storage SCP driven by real DICOM peers: dcmtk's storescu/echoscu and a pynetdicom SCU."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

from schemas.events import Event
from streams.topics import DICOM
from tests.support.readside import ReadSide
from tests.support.storage_scp import ORGANISATION, Running, start_archive
from tests.support.studies import (
    DCMTK_ENV,
    PATIENTS,
    instance,
    outcomes,
    storescu,
    storescu_profile,
    write_study,
)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    run = start_archive(tmp_path / "home")
    yield run
    run.scp.stop()
    run.archive.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_storescu_study_of_500_instances_in_seven_transfer_syntaxes_is_kept_bit_for_bit(
    running: Running, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", 500)
    assert len({f.transfer_syntax for f in files}) == 7
    result = storescu(
        "127.0.0.1",
        running.scp.port,
        [f.path for f in files],
        calling="OKB_CT1",
        profile=storescu_profile(tmp_path / "storescu.cfg"),
    )
    statuses = outcomes(result.stdout + result.stderr)
    assert Counter(statuses.values()) == {"Success": 500}, result.stderr[-2000:]

    received = running.events("InstanceReceived")
    by_uid = {e["SOPInstanceUID"]: e for e in received}
    assert len(received) == 500 and len(by_uid) == 500  # exactly one event per instance
    names = {charset: name for charset, name in PATIENTS}
    for sent in files:
        event = by_uid[sent.sop_instance_uid]
        digest = sha256(sent.path)
        assert event["blob"]["sha256"] == digest  # the stored object IS the file that was sent
        assert running.archive.blobs.get(digest) == sent.path.read_bytes()
        assert event["TransferSyntaxUID"] == sent.transfer_syntax
        assert event["PatientName"] == names[event["SpecificCharacterSet"]]  # Cyrillic, decoded
        assert event.envelope.organisation == ORGANISATION
        assert event["calling_ae_title"] == "OKB_CT1" and event["missing"] == []

    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "OKB_CT1", "-aec", "CAMI", "127.0.0.1", str(running.scp.port)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr


def test_resending_is_harmless_and_changed_bytes_become_a_new_version(running: Running, tmp_path: Path) -> None:
    [sent] = write_study(tmp_path / "one", 1, ["1.2.840.10008.1.2.1"])
    for _ in range(2):
        result = storescu("127.0.0.1", running.scp.port, [sent.path], calling="OKB_CT1")
        assert list(outcomes(result.stderr).values()) == ["Success"]
    assert len(running.events("InstanceReceived")) == 1  # identical bytes: no second event

    ds = dcmread(sent.path)
    ds.StudyDescription = "КТ грудной клетки (исправлено)"
    changed = tmp_path / "changed.dcm"
    ds.save_as(changed)
    result = storescu("127.0.0.1", running.scp.port, [changed], calling="OKB_CT1")
    assert list(outcomes(result.stderr).values()) == ["Success"]
    versions = sorted((e["version"], e["blob"]["sha256"]) for e in running.events("InstanceReceived"))
    assert [v for v, _ in versions] == [1, 2]
    assert all(running.archive.blobs.exists(digest) for _, digest in versions)  # nothing deleted


def _send_raw(port: int, path: Path, calling: str = "OKB_CT1") -> Any:
    """Send a file's data set bytes exactly as they are on disk, broken or not: pynetdicom's
    chunked mode streams them from the file, taking the UIDs from the file meta."""
    ae = AE(ae_title=calling)
    meta = dcmread(path, stop_before_pixels=True, force=True).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", port, ae_title="CAMI")
    assert assoc.is_established
    try:
        return assoc.send_c_store(path)
    finally:
        assoc.release()
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous


def _valid(tmp_path: Path, name: str) -> Path:
    [sent] = write_study(tmp_path / name, 1, ["1.2.840.10008.1.2.1"])
    return sent.path


def _truncated(tmp_path: Path) -> Path:
    path = _valid(tmp_path, "trunc")
    path.write_bytes(path.read_bytes()[:-700])  # cut inside the pixel data
    return path


def _oversized_length(tmp_path: Path) -> Path:
    path = _valid(tmp_path, "oversize")
    data = bytearray(path.read_bytes())
    at = data.index(b"\x10\x00\x10\x00PN")  # (0010,0010) PatientName, explicit VR: 2-byte length
    data[at + 6 : at + 8] = struct.pack("<H", 0xFFF0)
    path.write_bytes(bytes(data))
    return path


def _non_dicom(tmp_path: Path) -> Path:
    """A valid file meta header, then a data set that is not DICOM at all (a PDF's bytes)."""
    path = _valid(tmp_path, "garbage")
    data = path.read_bytes()
    dataset_start = data.index(b"\x08\x00\x05\x00CS")  # SpecificCharacterSet, first data set element
    path.write_bytes(data[:dataset_start] + b"%PDF-1.4\n%\xe2\xe3\xcf\xd3 not a DICOM data set at all\n")
    return path


def _modified(tmp_path: Path, name: str, **changes: Any) -> Path:
    ds = instance("1.2.826.0.1.3680043.8.498.77", "1.2.826.0.1.3680043.8.498.77.1", 1)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
            if keyword == "SOPInstanceUID":
                ds.file_meta.MediaStorageSOPInstanceUID = value
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


BAD_INPUTS = {
    "truncated": (_truncated, 0xC000, "malformed"),
    "oversized-element-length": (_oversized_length, 0xC000, "malformed"),
    "non-dicom-bytes": (_non_dicom, 0xC000, "malformed"),
    "no-patient-id": (lambda t: _modified(t, "nopid", PatientID=None), 0xA900, "missing-patient-id"),
    "invalid-uid": (lambda t: _modified(t, "baduid", SeriesInstanceUID="1.2.03.x"), 0xA900, "invalid-uid"),
    "no-study-uid": (lambda t: _modified(t, "nostudy", StudyInstanceUID=None), 0xA900, "missing-uid"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_refused_with_its_status_and_a_rejection_event(
    running: Running, tmp_path: Path, case: str
) -> None:
    make, status, reason = BAD_INPUTS[case]
    response = _send_raw(running.scp.port, make(tmp_path))
    assert response.Status == status
    assert response.ErrorComment  # the sender is told why
    [rejection] = running.events("InstanceRejected")
    assert rejection["reason"] == reason and rejection["status"] == status
    assert rejection.envelope.organisation == ORGANISATION
    assert running.events("InstanceReceived") == []
    # and the SCP keeps serving
    assert _send_raw(running.scp.port, _valid(tmp_path, "after")).Status == 0x0000


def test_unknown_calling_ae_title_is_rejected_at_association(running: Running, tmp_path: Path) -> None:
    result = storescu("127.0.0.1", running.scp.port, [_valid(tmp_path, "x")], calling="STRANGER")
    assert "Calling AE Title Not Recognized" in result.stderr
    deadline = time.monotonic() + 10  # recorded by the SCP's thread right after it answered
    while not running.events("AssociationRejected") and time.monotonic() < deadline:
        time.sleep(0.05)
    [event] = running.events("AssociationRejected")
    assert event["reason"] == "unknown-caller" and event["calling_ae_title"] == "STRANGER"
    assert running.events("InstanceReceived") == []
    ok = storescu("127.0.0.1", running.scp.port, [_valid(tmp_path, "y")], calling="OKB_CT1")
    assert list(outcomes(ok.stderr).values()) == ["Success"]


def _custom_archive(tmp_path: Path, senders: str) -> Running:
    home = tmp_path / "custom"
    home.mkdir(parents=True)
    run = start_archive(home)
    run.scp.stop()
    (home / "senders.toml").write_text(senders, encoding="utf-8")
    run.scp = run.archive.storage_scp(port=0)
    run.scp.start()
    return run


def test_pilot_mode_accepts_unknown_callers_and_flags_their_objects(tmp_path: Path) -> None:
    run = _custom_archive(tmp_path, '[archive]\nae_title = "CAMI"\naccept_unknown = true\n')
    try:
        result = storescu("127.0.0.1", run.scp.port, [_valid(tmp_path, "pilot")], calling="NEW_CLINIC")
        assert list(outcomes(result.stderr).values()) == ["Success"]
        [event] = run.events("InstanceReceived")
        assert "KnownSender" in event["missing"] and event.envelope.organisation is None
    finally:
        run.scp.stop()
        run.archive.close()


def test_sender_restricted_to_other_addresses_is_refused(tmp_path: Path) -> None:
    run = _custom_archive(tmp_path, '[[sender]]\nae_title = "OKB_CT1"\norganisation = "X"\naddresses = ["10.9.9.9"]\n')
    try:
        result = storescu("127.0.0.1", run.scp.port, [_valid(tmp_path, "addr")], calling="OKB_CT1")
        assert "Success" not in outcomes(result.stderr).values()
        deadline = time.monotonic() + 10
        while not run.events("AssociationRejected") and time.monotonic() < deadline:
            time.sleep(0.05)
        [event] = run.events("AssociationRejected")
        assert event["reason"] == "address-not-allowed"
        assert run.events("InstanceReceived") == []
    finally:
        run.scp.stop()
        run.archive.close()


def test_marks_from_private_tags_and_the_emergency_ae_title(running: Running, tmp_path: Path) -> None:
    ds = instance("1.2.826.0.1.3680043.8.498.501", "1.2.826.0.1.3680043.8.498.501.1", 1)
    block = ds.private_block(0x0011, "CAMI", create=True)
    block.add_new(0x10, "CS", "Y")
    marked = tmp_path / "marked.dcm"
    ds.save_as(marked, enforce_file_format=True)
    plain = _valid(tmp_path, "urgent")
    storescu("127.0.0.1", running.scp.port, [marked], calling="OKB_CT1")
    storescu("127.0.0.1", running.scp.port, [plain], calling="OKB_CT1", called="CAMI_URGENT")
    by_study = {e["StudyInstanceUID"]: e for e in running.events("InstanceReceived")}
    assert by_study["1.2.826.0.1.3680043.8.498.501"]["pathology"] is True
    assert by_study["1.2.826.0.1.3680043.8.498.501"]["emergency"] is False
    [urgent] = [e for uid, e in by_study.items() if uid != "1.2.826.0.1.3680043.8.498.501"]
    assert urgent["emergency"] is True and urgent["called_ae_title"] == "CAMI_URGENT"


def test_missing_regional_attributes_store_an_incomplete_package(running: Running, tmp_path: Path) -> None:
    path = _modified(
        tmp_path,
        "incomplete",
        PerformingPhysicianIdentificationSequence=None,
        ProcedureCodeSequence=None,
        PatientBirthDate=None,
    )
    assert _send_raw(running.scp.port, path).Status == 0x0000
    [event] = running.events("InstanceReceived")
    assert set(event["missing"]) == {
        "PerformingPhysicianCode",
        "ProcedureCode",
        "ProcedureCodeMeaning",
        "PatientBirthDate",
    }


def test_calling_a_wrong_ae_title_is_refused(running: Running, tmp_path: Path) -> None:
    result = storescu("127.0.0.1", running.scp.port, [_valid(tmp_path, "wrong")], calling="OKB_CT1", called="PACS")
    assert "Success" not in outcomes(result.stderr).values()
    deadline = time.monotonic() + 10
    while not running.events("AssociationRejected") and time.monotonic() < deadline:
        time.sleep(0.05)
    [event] = running.events("AssociationRejected")
    assert event["reason"] == "wrong-called-ae-title" and event["called_ae_title"] == "PACS"
    assert running.events("InstanceReceived") == []


# -- each role's address rule holds on its own (a sender that is also a Q/R caller) ---------------------
FAR, NEAR = "127.0.0.1", "127.0.0.2"  # both loopback: the archive sees storescu/findscu as FAR
BOTH = "OKB_BOTH"  # an AE title that is a sender and a Q/R caller


def _both_roles(tmp_path: Path, sender_addresses: list[str], caller_addresses: list[str]) -> ReadSide:
    extra = f"""
[[sender]]
ae_title = "{BOTH}"
organisation = "{ORGANISATION}"
addresses = {json.dumps(sender_addresses)}

[[qr_caller]]
ae_title = "{BOTH}"
organisation = "{ORGANISATION}"
role = "radiologist"
addresses = {json.dumps(caller_addresses)}
"""
    return ReadSide.start(tmp_path, senders_extra=extra)


def _findscu_status(port: int) -> int:
    """A study-level C-FIND by dcmtk's findscu from 127.0.0.1; the final DIMSE status it logged."""
    result = subprocess.run(
        [
            *("/usr/bin/findscu", "-d", "-S", "-aet", BOTH, "-aec", "CAMI"),
            *("-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "127.0.0.1", str(port)),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=120,
        check=False,
    )
    found = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", result.stdout + result.stderr)
    assert found, (result.stdout + result.stderr)[-3000:]
    return int(found[-1], 16)


def _near_association(port: int, context: str, syntax: str = "1.2.840.10008.1.2.1") -> Any:
    """A pynetdicom association from 127.0.0.2 (dcmtk's tools cannot choose their local address)."""
    ae = AE(ae_title=BOTH)
    ae.add_requested_context(context, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title="CAMI", bind_address=(NEAR, 0))
    assert assoc.is_established
    return assoc


def _of(side: ReadSide, event_type: str) -> list[Event]:
    return [e for e in side.events(DICOM) if e.type == event_type]


def test_a_sender_limited_to_other_addresses_does_not_store_from_where_it_may_query(tmp_path: Path) -> None:
    with _both_roles(tmp_path, [NEAR], []) as side:
        result = storescu(FAR, side.dicom_port, [_valid(tmp_path, "far")], calling=BOTH)
        assert "Success" not in outcomes(result.stderr).values(), result.stderr[-2000:]
        [rejection] = _of(side, "InstanceRejected")
        assert rejection["reason"] == "address-not-allowed" and rejection["status"] == 0x0124
        assert rejection["peer_address"] == FAR and rejection["calling_ae_title"] == BOTH
        assert _of(side, "InstanceReceived") == []
        assert _findscu_status(side.dicom_port) == 0x0000  # querying from here is allowed
        [access] = side.accesses()
        assert access["outcome"] == "ok" and access["remote_address"] == FAR
        # from its own address the same AE title stores
        near = _valid(tmp_path, "near")
        meta = dcmread(near, stop_before_pixels=True).file_meta
        assoc = _near_association(side.dicom_port, meta.MediaStorageSOPClassUID)
        try:
            assert assoc.send_c_store(near).Status == 0x0000
        finally:
            assoc.release()
        [received] = _of(side, "InstanceReceived")
        assert received["peer_address"] == NEAR


def test_a_qr_caller_limited_to_other_addresses_does_not_query_from_where_it_may_store(tmp_path: Path) -> None:
    with _both_roles(tmp_path, [], [NEAR]) as side:
        assert _findscu_status(side.dicom_port) == 0x0124  # Refused: Not Authorised
        [denied] = side.accesses()
        assert denied["outcome"] == "denied" and denied["remote_address"] == FAR
        assert denied.envelope.actor.user == BOTH
        result = storescu(FAR, side.dicom_port, [_valid(tmp_path, "far")], calling=BOTH)
        assert list(outcomes(result.stderr).values()) == ["Success"]  # storing from here is allowed
        # from its own address the same AE title queries
        assoc = _near_association(side.dicom_port, StudyRootQueryRetrieveInformationModelFind)
        try:
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = ""
            statuses = [int(s.Status) for s, _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)]
        finally:
            assoc.release()
        assert statuses[-1] == 0x0000 and 0x0124 not in statuses
        outcomes_in_order = [a["outcome"] for a in sorted(side.accesses(), key=lambda e: e.envelope.recorded_at)]
        assert outcomes_in_order == ["denied", "ok"]


# -- connections that never send an A-ASSOCIATE-RQ ----------------------------------------------------------
def test_idle_connections_do_not_lock_a_sender_out_and_are_closed(running: Running, tmp_path: Path) -> None:
    port = running.scp.port
    idle = [socket.create_connection(("127.0.0.1", port), timeout=120) for _ in range(40)]  # > 32 associations
    try:
        result = storescu("127.0.0.1", port, [_valid(tmp_path, "while-idle")], calling="OKB_CT1")
        assert list(outcomes(result.stderr).values()) == ["Success"], result.stderr[-2000:]
        for sock in idle:  # the archive closes each silent connection (after CAMI_DICOM_REQUEST_TIMEOUT)
            assert sock.recv(1) == b""
    finally:
        for sock in idle:
            sock.close()
    # a request begun and never finished is closed too (and gives its association slot back)
    partial = [socket.create_connection(("127.0.0.1", port), timeout=120) for _ in range(40)]
    try:
        for sock in partial:
            sock.sendall(b"\x01\x00")  # the first bytes of an A-ASSOCIATE-RQ PDU, then nothing
        for sock in partial:
            assert sock.recv(1) == b""
    finally:
        for sock in partial:
            sock.close()
    after = storescu("127.0.0.1", port, [_valid(tmp_path, "after-idle")], calling="OKB_CT1")
    assert list(outcomes(after.stderr).values()) == ["Success"]  # the listener is still up
    assert len(running.events("InstanceReceived")) == 2
