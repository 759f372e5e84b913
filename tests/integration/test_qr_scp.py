"""DICOM Query/Retrieve on the archive's AE (api.dicom.qr), driven by dcmtk's findscu, movescu and
getscu the way a workstation would, with dcmtk's storescp as the C-MOVE destination.

"Byte-identical" here means: the data set the destination wrote (everything after its Part-10
file meta header, which storescp/getscu write themselves) equals the data set the hospital sent
(everything after the meta header of the file storescu sent), and the meta header names the same
transfer syntax. storescp and getscu run in bit-preserving mode (``+B``), so they write the data
set exactly as it arrived: a deflated one as its compressed stream, compared as such.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config

from ingest.dicom import DEFLATED, split_part10
from ingest.senders import SenderConfigError, parse_senders
from schemas.events import Event
from tests.support.readside import ORG, ORG_B, ROOT_UID, SENDER_AE, ReadSide
from tests.support.studies import DCMTK_ENV, SentFile, write_study

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND
RADIOLOGIST_AE = "RAD_WS1"
AUDITOR_AE = "AUDIT_WS"
DEST_AE = "DEST"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def storescp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """dcmtk's storescp as the C-MOVE destination: every transfer syntax, bit-preserving."""
    out = tmp_path_factory.mktemp("dest")
    port = _free_port()
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "+B", "+xa", "-aet", DEST_AE, "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:  # until it listens
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("storescp did not start") from None
            time.sleep(0.05)
    try:
        yield port, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory, storescp: tuple[int, Path]) -> Iterator[ReadSide]:
    port, _ = storescp
    extra = f"""
[[qr_caller]]
ae_title = "{RADIOLOGIST_AE}"
organisation = "{ORG}"
role = "radiologist"

[[qr_caller]]
ae_title = "{AUDITOR_AE}"
organisation = "{ORG_B}"
role = "auditor"

[[destination]]
ae_title = "{DEST_AE}"
host = "127.0.0.1"
port = {port}
"""
    with ReadSide.start(tmp_path_factory.mktemp("qr"), senders_extra=extra) as running:
        yield running


def _dcmtk(tool: str, side: ReadSide, *args: str, calling: str = RADIOLOGIST_AE, cwd: Path | None = None) -> str:
    result = subprocess.run(
        [f"/usr/bin/{tool}", "-d", "-aet", calling, "-aec", "CAMI", *args, "127.0.0.1", str(side.dicom_port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=300,
        check=False,
        cwd=cwd,
    )
    return result.stdout + result.stderr


def _final_status(output: str) -> int:
    """The status of the last DIMSE response dcmtk logged (``-d``: "DIMSE Status : 0xa801: ...")."""
    found = re.findall(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})", output)
    assert found, output[-3000:]
    return int(found[-1], 16)


def _seen(side: ReadSide) -> set[str]:
    return {e.envelope.event_id for e in side.accesses()}


def _accesses(side: ReadSide, channel: str, seen: set[str]) -> list[Event]:
    """The RecordAccessed events of ``channel`` not in ``seen``, oldest first (the log is
    partitioned by record, so its order is not the order of the requests)."""
    new = [e for e in side.accesses() if e.payload["channel"] == channel and e.envelope.event_id not in seen]
    return sorted(new, key=lambda e: e.envelope.recorded_at)


def _data_set(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, data set bytes after the meta header, a deflated one as its stream)."""
    received = split_part10(path.read_bytes())
    return received.transfer_syntax, received.part10[received.dataset_offset :]


def _assert_identical(sent: list[SentFile], received_dir: Path) -> None:
    received = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in received_dir.iterdir()}
    for f in sent:
        assert f.sop_instance_uid in received, f"{f.sop_instance_uid} ({f.transfer_syntax}) was not received"
        assert _data_set(received[f.sop_instance_uid]) == _data_set(f.path), f.transfer_syntax


def _study(side: ReadSide, n: int, **kwargs: object) -> tuple[str, list[SentFile]]:
    study_uid = generate_uid(prefix=ROOT_UID)
    sent = side.store_study(study_uid, n, **kwargs)  # type: ignore[arg-type]
    side.wait_indexed(study_uid, n)
    return study_uid, sent


# -- C-FIND ---------------------------------------------------------------------------------------------
def test_study_root_find_finds_a_stored_study_and_records_one_access(side: ReadSide, tmp_path: Path) -> None:
    study_uid, _ = _study(side, 2, patient_id="QR-FIND-1")
    seen = _seen(side)
    output = _dcmtk(
        "findscu",
        side,
        "-S",
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-k",
        "PatientID",
        "-k",
        "PatientName",
    )
    responses = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert [str(r.StudyInstanceUID) for r in responses] == [study_uid], output
    assert responses[0].PatientID == "QR-FIND-1"
    events = _accesses(side, "c-find", seen)
    assert len(events) == 1
    assert events[0].payload["action"] == "query"
    assert events[0].payload["outcome"] == "ok"
    assert events[0].envelope.actor.user == RADIOLOGIST_AE and events[0].envelope.actor.role == "radiologist"
    assert events[0].envelope.organisation == ORG


def test_patient_root_find_at_patient_level(side: ReadSide, tmp_path: Path) -> None:
    _study(side, 1, patient_id="QR-PAT-7")
    seen = _seen(side)
    output = _dcmtk(
        "findscu",
        side,
        "-P",
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=PATIENT",
        "-k",
        "PatientID=QR-PAT-7",
        "-k",
        "PatientName",
    )
    responses = [dcmread(p) for p in sorted(tmp_path.glob("rsp*.dcm"))]
    assert [r.PatientID for r in responses] == ["QR-PAT-7"], output
    assert len(_accesses(side, "c-find", seen)) == 1


def test_image_level_matches_arrive_whole_at_findscu_and_at_peers_with_small_pdus(
    side: ReadSide, tmp_path: Path
) -> None:
    """A pending response leaves as one PDU (its command and its identifier, api/dicom/pending.py)
    when it fits the peer's maximum PDU length, and through pynetdicom's fragments when it does
    not: findscu, pynetdicom SCUs with no limit, 16 KiB and 256 bytes all get every match, with
    the same values, then Success."""
    study_uid, sent = _study(side, 5, patient_id="QR-FIND-PDU")
    series_uid = str(dcmread(sent[0].path, stop_before_pixels=True).SeriesInstanceUID)
    expected = sorted(f.sop_instance_uid for f in sent)
    output = _dcmtk(
        "findscu",
        side,
        "-S",
        "-X",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=IMAGE",
        "-k",
        f"StudyInstanceUID={study_uid}",
        "-k",
        f"SeriesInstanceUID={series_uid}",
        "-k",
        "SOPInstanceUID",
        "-k",
        "InstanceNumber",
    )
    by_findscu = [dcmread(p) for p in tmp_path.glob("rsp*.dcm")]
    assert sorted(str(r.SOPInstanceUID) for r in by_findscu) == expected, output[-3000:]
    assert _final_status(output) == 0x0000
    numbers = {str(r.SOPInstanceUID): int(r.InstanceNumber) for r in by_findscu}

    query = Dataset()
    query.QueryRetrieveLevel = "IMAGE"
    query.StudyInstanceUID = study_uid
    query.SeriesInstanceUID = series_uid
    query.SOPInstanceUID = ""
    query.InstanceNumber = ""
    for largest in (0, 16_384, 256):
        ae = AE(ae_title=RADIOLOGIST_AE)
        ae.maximum_pdu_size = largest
        ae.add_requested_context(STUDY_ROOT_FIND)
        assoc = ae.associate("127.0.0.1", side.dicom_port, ae_title="CAMI")
        assert assoc.is_established
        try:
            answers = list(assoc.send_c_find(query, STUDY_ROOT_FIND))
        finally:
            assoc.release()
        statuses = [int(s.Status) for s, _ in answers]
        assert statuses == [0xFF00] * len(expected) + [0x0000], (largest, statuses)
        found = {str(d.SOPInstanceUID): int(d.InstanceNumber) for _, d in answers if d is not None}
        assert found == numbers, largest


def test_a_find_at_a_level_the_model_lacks_is_0xA900_and_recorded(side: ReadSide) -> None:
    seen = _seen(side)
    output = _dcmtk("findscu", side, "-S", "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=QR-PAT-7")
    assert _final_status(output) == 0xA900, output
    assert [e.payload["outcome"] for e in _accesses(side, "c-find", seen)] == ["denied"]


def test_a_sender_that_is_not_a_qr_caller_is_refused_and_recorded(side: ReadSide, tmp_path: Path) -> None:
    seen = _seen(side)
    output = _dcmtk(
        "findscu", side, "-S", "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", calling="OKB_CT1"
    )
    assert _final_status(output) == 0x0124, output
    events = _accesses(side, "c-find", seen)
    assert [(e.payload["outcome"], e.envelope.actor.user, e.envelope.actor.role) for e in events] == [
        ("denied", "OKB_CT1", "modality")
    ]


def test_unknown_calling_ae_is_rejected_recorded_and_the_scp_keeps_serving(side: ReadSide, tmp_path: Path) -> None:
    seen = _seen(side)
    output = _dcmtk("findscu", side, "-S", "-k", "QueryRetrieveLevel=STUDY", calling="STRANGER")
    assert "Association Rejected" in output, output
    # recorded by the SCP after the A-ASSOCIATE-RJ has left: wait until it is in the log
    deadline = time.monotonic() + 30
    while not (events := _accesses(side, "c-find", seen)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(e.payload["outcome"], e.envelope.actor.user) for e in events] == [("denied", "STRANGER")]
    # the SCP goes on answering known callers
    output = _dcmtk("findscu", side, "-S", "-X", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY")
    assert "Association Rejected" not in output and _final_status(output) == 0x0000, output


# -- C-MOVE ---------------------------------------------------------------------------------------------
ALL_SYNTAXES = [
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.80",
    "1.2.840.10008.1.2.5",
]


def test_move_sends_the_original_bytes_in_every_stored_syntax(
    side: ReadSide, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    _, dest = storescp
    study_uid, sent = _study(side, len(ALL_SYNTAXES), patient_id="QR-MOVE-1", transfer_syntaxes=ALL_SYNTAXES)
    seen = _seen(side)
    output = _dcmtk(
        "movescu", side, "-S", "-aem", DEST_AE, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"
    )
    assert _final_status(output) == 0x0000, output
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in sent:
        for p in dest.iterdir():
            if p.name.endswith(f.sop_instance_uid):
                os.link(p, moved / p.name)
    _assert_identical(sent, moved)
    events = _accesses(side, "c-move", seen)
    assert len(events) == 1
    payload = events[0].payload
    assert (payload["action"], payload["outcome"], payload["StudyInstanceUID"], payload["results"]) == (
        "move",
        "ok",
        study_uid,
        len(sent),
    )
    assert payload["PatientID"] == "QR-MOVE-1"


def test_move_of_one_series_and_one_image(side: ReadSide, storescp: tuple[int, Path]) -> None:
    _, dest = storescp
    study_uid, sent = _study(side, 2, transfer_syntaxes=["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.4.70"])
    target = sent[1]
    series_uid = str(dcmread(target.path, stop_before_pixels=True).SeriesInstanceUID)
    for level, keys in (
        ("SERIES", [f"SeriesInstanceUID={series_uid}"]),
        ("IMAGE", [f"SeriesInstanceUID={series_uid}", f"SOPInstanceUID={target.sop_instance_uid}"]),
    ):
        args = ["-S", "-aem", DEST_AE, "-k", f"QueryRetrieveLevel={level}", "-k", f"StudyInstanceUID={study_uid}"]
        for key in keys:
            args += ["-k", key]
        output = _dcmtk("movescu", side, *args)
        assert _final_status(output) == 0x0000, output
    assert [p for p in dest.iterdir() if p.name.endswith(sent[0].sop_instance_uid)] == []
    assert [p for p in dest.iterdir() if p.name.endswith(target.sop_instance_uid)] != []


def test_patient_root_move_at_patient_level_sends_every_study_of_the_patient(
    side: ReadSide, storescp: tuple[int, Path]
) -> None:
    _, dest = storescp
    _, first = _study(side, 1, patient_id="QR-PAT-MOVE")
    _, second = _study(side, 2, patient_id="QR-PAT-MOVE", transfer_syntaxes=["1.2.840.10008.1.2.5"])
    seen = _seen(side)
    output = _dcmtk(
        "movescu", side, "-P", "-aem", DEST_AE, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=QR-PAT-MOVE"
    )
    assert _final_status(output) == 0x0000, output
    received = {p.name.split(".", 1)[1] for p in dest.iterdir()}
    assert {f.sop_instance_uid for f in first + second} <= received
    events = _accesses(side, "c-move", seen)
    assert [(e.payload["PatientID"], e.payload["StudyInstanceUID"], e.payload["results"]) for e in events] == [
        ("QR-PAT-MOVE", None, 3)
    ]


def test_move_to_an_unknown_destination_is_0xA801(side: ReadSide) -> None:
    study_uid, _ = _study(side, 1)
    seen = _seen(side)
    output = _dcmtk(
        "movescu",
        side,
        "-S",
        "-aem",
        "NOWHERE",
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
    )
    assert _final_status(output) == 0xA801, output
    events = _accesses(side, "c-move", seen)
    assert [(e.payload["outcome"], e.payload["results"]) for e in events] == [("denied", 0)]
    assert '"MoveDestination": "NOWHERE"' in events[0].payload["query"]


def test_bad_identifiers_and_unauthorised_roles_are_refused(side: ReadSide, storescp: tuple[int, Path]) -> None:
    _, dest = storescp
    study_uid, sent = _study(side, 1)
    seen = _seen(side)
    # study root has no PATIENT level
    output = _dcmtk("movescu", side, "-S", "-aem", DEST_AE, "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=X")
    assert _final_status(output) == 0xA900, output
    # an auditor queries but does not retrieve images
    output = _dcmtk(
        "movescu",
        side,
        "-S",
        "-aem",
        DEST_AE,
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
        calling=AUDITOR_AE,
    )
    assert _final_status(output) == 0x0124, output
    assert [p for p in dest.iterdir() if p.name.endswith(sent[0].sop_instance_uid)] == []
    events = _accesses(side, "c-move", seen)
    assert [(e.payload["outcome"], e.envelope.actor.user) for e in events] == [
        ("denied", RADIOLOGIST_AE),
        ("denied", AUDITOR_AE),
    ]


# -- C-GET ----------------------------------------------------------------------------------------------
def test_get_returns_the_original_bytes_over_the_same_association(side: ReadSide, tmp_path: Path) -> None:
    study_uid, sent = _study(side, 3, patient_id="QR-GET-1")
    seen = _seen(side)
    output = _dcmtk(
        "getscu",
        side,
        "-S",
        "+B",
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
    )
    assert _final_status(output) == 0x0000, output
    _assert_identical(sent, tmp_path)
    events = _accesses(side, "c-get", seen)
    assert [(e.payload["action"], e.payload["StudyInstanceUID"], e.payload["results"]) for e in events] == [
        ("get", study_uid, 3)
    ]


# -- objects pydicom would not write back as they are -----------------------------------------------------
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
GROUP_LENGTH_SYNTAXES = [EXPLICIT, IMPLICIT, DEFLATED]
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
JPEG_LOSSLESS = "1.2.840.10008.1.2.4.70"
#: getscu options that propose a syntax first for the storage contexts (dcmtk's "preferred
#: storage transfer syntaxes"; getscu 3.6.7 has none for implicit VR: its +xi proposes explicit)
GETSCU_PREFERS = {"1.2.840.10008.1.2.1": ["+xe"], DEFLATED: ["+xd"], JPEG_LOSSLESS: ["+xs"]}


def _send_unchanged(side: ReadSide, path: Path) -> int:
    """Send a file's data set bytes exactly as they are on disk, as a modality that keeps its
    encoding does (pynetdicom's chunked mode streams them from the file); the C-STORE status."""
    ae = AE(ae_title=SENDER_AE[ORG])
    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    assoc = ae.associate("127.0.0.1", side.dicom_port, ae_title="CAMI")
    assert assoc.is_established
    try:
        return int(assoc.send_c_store(path).Status)
    finally:
        assoc.release()
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous


def _group_length_study(side: ReadSide, folder: Path, patient_id: str) -> tuple[str, list[SentFile]]:
    """A study whose files carry group-length elements (gggg,0000), written by dcmtk's dcmconv
    (``+g``) as older modalities write them, in each uncompressed syntax, stored unchanged."""
    study_uid = generate_uid(prefix=ROOT_UID)
    files = write_study(
        folder, len(GROUP_LENGTH_SYNTAXES), GROUP_LENGTH_SYNTAXES, study_uid=study_uid, patient_id=patient_id
    )
    sent = []
    for f in files:
        target = f.path.with_name("gl-" + f.path.name)
        subprocess.run(["/usr/bin/dcmconv", "+g", str(f.path), str(target)], check=True, env=DCMTK_ENV)
        if target.stat().st_size % 2:  # an odd deflated stream is padded on the wire (see write_study)
            with target.open("ab") as fh:
                fh.write(b"\x00")
        data = split_part10(target.read_bytes())
        inflated = data.part10[data.dataset_offset :]
        if data.transfer_syntax == DEFLATED:
            inflated = zlib.decompress(inflated, -zlib.MAX_WBITS)
        assert inflated.startswith(b"\x08\x00\x00\x00"), "dcmconv wrote no (0008,0000) group length"
        assert _send_unchanged(side, target) == 0x0000
        sent.append(SentFile(target, f.sop_instance_uid, f.transfer_syntax))
    side.wait_indexed(study_uid, len(sent))
    return study_uid, sent


def test_move_and_get_send_objects_with_group_lengths_as_stored(
    side: ReadSide, storescp: tuple[int, Path], tmp_path: Path
) -> None:
    """pydicom leaves group lengths out when it writes a data set: the archive must send the
    stored bytes themselves, in every uncompressed syntax (a deflated stream as stored)."""
    _, dest = storescp
    study_uid, sent = _group_length_study(side, tmp_path / "sent", "QR-GROUP-LENGTHS")
    keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study_uid}"]
    output = _dcmtk("movescu", side, "-S", "-aem", DEST_AE, *keys)
    assert _final_status(output) == 0x0000, output
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in sent:
        for p in dest.iterdir():
            if p.name.endswith(f.sop_instance_uid):
                os.link(p, moved / p.name)
    _assert_identical(sent, moved)

    # C-GET, each instance by a getscu that proposes its stored syntax first
    for f in (f for f in sent if f.transfer_syntax in GETSCU_PREFERS):
        got = tmp_path / f"got-{f.transfer_syntax}"
        got.mkdir()
        image = [
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "-k",
            f"SeriesInstanceUID={dcmread(f.path, stop_before_pixels=True).SeriesInstanceUID}",
            "-k",
            f"SOPInstanceUID={f.sop_instance_uid}",
        ]
        output = _dcmtk("getscu", side, "-S", "+B", *GETSCU_PREFERS[f.transfer_syntax], "-od", str(got), *image)
        assert _final_status(output) == 0x0000, output
        _assert_identical([f], got)


def _pynetdicom_get(side: ReadSide, f: SentFile, study_uid: str, syntaxes: list[str]) -> tuple[int, list[bytes]]:
    """C-GET of one instance by a pynetdicom SCU proposing ``syntaxes`` (in that order) for its
    storage context: (final status, the data set bytes of each C-STORE received, as they arrived)."""
    received: list[bytes] = []

    def on_store(event: Any) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    meta = dcmread(f.path, stop_before_pixels=True)
    ae = AE(ae_title=RADIOLOGIST_AE)
    ae.add_requested_context(STUDY_ROOT_GET)
    ae.add_requested_context(meta.SOPClassUID, syntaxes)
    assoc = ae.associate(
        "127.0.0.1",
        side.dicom_port,
        ae_title="CAMI",
        ext_neg=[build_role(meta.SOPClassUID, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "IMAGE"
    identifier.StudyInstanceUID = study_uid
    identifier.SeriesInstanceUID = meta.SeriesInstanceUID
    identifier.SOPInstanceUID = f.sop_instance_uid
    try:
        statuses = [int(status.Status) for status, _ in assoc.send_c_get(identifier, STUDY_ROOT_GET) if status]
    finally:
        assoc.release()
    return statuses[-1], received


def test_get_by_a_peer_proposing_implicit_vr_first_and_never_an_altered_object(side: ReadSide, tmp_path: Path) -> None:
    """A pynetdicom SCU (getscu cannot propose implicit VR first) gets the implicit VR object with
    group lengths as stored; a peer taking explicit VR only gets a failed sub-operation, because
    pydicom's conversion would drop the group lengths."""
    study_uid, sent = _group_length_study(side, tmp_path / "sent", "QR-GROUP-IMPLICIT")
    [implicit] = [f for f in sent if f.transfer_syntax == IMPLICIT]
    status, received = _pynetdicom_get(side, implicit, study_uid, [IMPLICIT, EXPLICIT])
    assert (status, received) == (0x0000, [_data_set(implicit.path)[1]])
    status, received = _pynetdicom_get(side, implicit, study_uid, [EXPLICIT])
    assert (status, received) == (0xA702, [])


def test_get_accepts_the_syntax_the_peer_proposes_first(side: ReadSide, tmp_path: Path) -> None:
    """A compressed object comes back over C-GET as stored when the peer proposes its syntax
    first: the archive must not accept explicit VR for the context instead (it cannot convert)."""
    study_uid, sent = _study(side, 1, patient_id="QR-GET-JPEG", transfer_syntaxes=[JPEG_LOSSLESS])
    output = _dcmtk(
        "getscu",
        side,
        "-S",
        "+B",
        *GETSCU_PREFERS[JPEG_LOSSLESS],
        "-od",
        str(tmp_path),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
    )
    assert _final_status(output) == 0x0000, output
    _assert_identical(sent, tmp_path)


# -- configuration --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ({"qr_caller": [{"ae_title": "WS", "organisation": "O", "role": "analyst"}]}, "role must be one of"),
        ({"qr_caller": [{"ae_title": "WS", "role": "radiologist"}]}, "missing 'organisation'"),
        ({"qr_caller": [{"ae_title": "A" * 17, "organisation": "O", "role": "radiologist"}]}, "1-16"),
        ({"destination": [{"ae_title": "D", "host": "h"}]}, "needs both 'host' and 'port'"),
        ({"destination": [{"ae_title": "D", "host": "h", "port": 70000}]}, "port must be 1-65535"),
        ({"destination": [{"ae_title": "D", "host": "h", "port": 1}] * 2}, "listed twice"),
    ],
)
def test_qr_configuration_is_validated(toml: dict[str, object], message: str) -> None:
    with pytest.raises(SenderConfigError, match=message):
        parse_senders(toml)


def test_destinations_fall_back_to_callers_and_senders_with_an_address() -> None:
    senders = parse_senders(
        {
            "sender": [{"ae_title": "PACS", "organisation": "O", "host": "10.0.0.1", "port": 104}],
            "qr_caller": [{"ae_title": "WS", "organisation": "O", "role": "referring-doctor"}],
            "destination": [{"ae_title": "WS_STORE", "host": "10.0.0.2", "port": 11112}],
        }
    )
    assert senders.destination("PACS") is not None and senders.destination("PACS").port == 104  # type: ignore[union-attr]
    assert senders.destination("WS_STORE") is not None
    assert senders.destination("WS") is None  # a caller without host/port is no destination
    assert senders.known_ae_titles == ["PACS", "WS"]
    assert senders.may_store("PACS", None)[0] and not senders.may_store("WS", None)[0]
