"""DICOM Query/Retrieve on the archive's AE (api.qr_scp), driven by dcmtk's findscu, movescu and
getscu the way a workstation would, with dcmtk's storescp as the C-MOVE destination.

"Byte-identical" here means: the data set the destination wrote (everything after its Part-10
file meta header, which storescp/getscu write themselves) equals the data set the hospital sent
(everything after the meta header of the file storescu sent), and the meta header names the same
transfer syntax. storescp and getscu run in bit-preserving mode (``+B``), so they write the data
set exactly as it arrived. A deflated data set is compared inflated (pynetdicom re-deflates it).
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

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from ingest.dicom import DEFLATED, split_part10
from ingest.senders import SenderConfigError, parse_senders
from schemas.events import Event
from tests.support.readside import ORG, ORG_B, ROOT_UID, ReadSide
from tests.support.studies import DCMTK_ENV, SentFile

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
    """(transfer syntax, data set bytes after the meta header; inflated when deflated)."""
    received = split_part10(path.read_bytes())
    data = received.part10[received.dataset_offset :]
    if received.transfer_syntax == DEFLATED:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return received.transfer_syntax, data


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
