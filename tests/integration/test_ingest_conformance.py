"""What the archive accepts and refuses, driven as peers drive it: a pynetdicom SCU sending a
file's data set bytes unchanged (C-STORE) and STOW-RS over HTTP.

Accepted: every well-formed encoding (undefined-length sequences and items, encapsulated pixel
data, group lengths, odd private groups), kept byte for byte. Refused before any blob is written,
with a failure status, an ErrorComment of whole words and a rejection event: odd value lengths,
sequences nested past the limit, deflated data sets inflating past the limit, values the
InstanceReceived event cannot hold, UIDs with a trailing newline, a file meta that contradicts
its data set or names an unknown transfer syntax.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from pydicom.filereader import read_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from ingest.dicom import MAX_SEQUENCE_DEPTH
from ingest.handlers import ERROR_COMMENT_LENGTH
from tests.support.conformance import (
    Running,
    base,
    dataset_offset,
    deflated_bomb,
    file_bytes,
    well_formed_variants,
)
from tests.support.conformance import running as running
from tests.support.stow import COMMENT, FAILED, REASON, REFERENCED, seq, value


def _send_raw(port: int, path: Path, calling: str = "OKB_CT1") -> Any:
    """Send a file's data set bytes exactly as they are on disk (pynetdicom's chunked mode streams
    them from the file); only the file meta is parsed here, never the data set."""
    ae = AE(ae_title=calling)
    meta = read_file_meta_info(path)
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


def splice(data: bytes, before: bytes, element: bytes) -> bytes:
    """Insert raw ``element`` bytes into the data set, before the first element starting ``before``."""
    at = data.index(before, dataset_offset(data))
    return data[:at] + element + data[at:]


def replace_value(data: bytes, tag_vr: bytes, value: bytes) -> bytes:
    """Replace the value of a short-length explicit-VR element (tag+VR bytes) by ``value`` as is."""
    at = data.index(tag_vr, dataset_offset(data))
    (length,) = struct.unpack_from("<H", data, at + 6)
    return data[: at + 6] + struct.pack("<H", len(value)) + value + data[at + 8 + length :]


def nested(depth: int, defined_lengths: bool = False) -> bytes:
    """A data set with ContentSequence (0040,A730) nested ``depth`` deep, as raw bytes."""
    if defined_lengths:
        content = b""
        for _ in range(depth):
            item = b"\xfe\xff\x00\xe0" + struct.pack("<I", len(content)) + content
            content = b"\x40\x00\x30\xa7SQ\x00\x00" + struct.pack("<I", len(item)) + item
    else:
        opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
        closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        content = opening * depth + closing * depth
    return splice(file_bytes(base()), b"\xe0\x7f\x10\x00", content)


REFUSED: dict[str, tuple[Any, int, str, str]] = {
    # name: (make, status, reason, words expected in the comment)
    "odd-length-element": (
        lambda: splice(file_bytes(base()), b"\x10\x00\x10\x00PN", b"\x09\x00\x10\x00LO\x05\x00ACME1"),
        0xC000,
        "malformed",
        "odd length",
    ),
    "nested-1000-deep": (lambda: nested(1000), 0xC000, "malformed", "nested deeper"),
    "nested-1000-deep-defined-lengths": (lambda: nested(1000, True), 0xC000, "malformed", "nested deeper"),
    "series-number-out-of-range": (
        lambda: file_bytes(base(SeriesNumber="99999999999")),
        0xA900,
        "value-out-of-range",
        "SeriesNumber",
    ),
    "instance-number-out-of-range": (
        lambda: file_bytes(base(InstanceNumber="-99999999999")),
        0xA900,
        "value-out-of-range",
        "InstanceNumber",
    ),
    "uid-with-trailing-newline": (
        lambda: _newline_uid(),
        0xA900,
        "invalid-uid",
        "SeriesInstanceUID",
    ),
    "truncated-pixel-data": (lambda: file_bytes(base())[:-10], 0xC000, "malformed", "truncated"),
}


def _newline_uid() -> bytes:
    data = file_bytes(base())
    at = data.index(b"\x20\x00\x0e\x00UI", dataset_offset(data))
    (length,) = struct.unpack_from("<H", data, at + 6)
    uid = data[at + 8 : at + 8 + length].rstrip(b"\x00")
    return replace_value(data, b"\x20\x00\x0e\x00UI", uid + b"\n" if len(uid) % 2 else uid + b"\n\x00")


def _assert_whole_words(comment: str, full: str) -> None:
    assert len(comment) <= ERROR_COMMENT_LENGTH
    assert full.startswith(comment), (comment, full)
    assert comment == full or full[len(comment)] in " :;,(-", f"cut mid-word: {comment!r} of {full!r}"


# -- C-STORE ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(well_formed_variants()))
def test_well_formed_encodings_are_stored_byte_for_byte_over_c_store_and_stow(
    running: Running, tmp_path: Path, case: str
) -> None:
    data = well_formed_variants()[case]
    path = tmp_path / f"{case}.dcm"
    path.write_bytes(data)
    response = _send_raw(running.scp.port, path)
    assert response.Status == 0x0000, getattr(response, "ErrorComment", "")
    [received] = running.events("InstanceReceived")
    stored = running.archive.blobs.get(received["blob"]["sha256"])
    offset = dataset_offset(data)
    assert stored[dataset_offset(stored) :] == data[offset:]  # the data set exactly as sent

    # the same encoding (new UIDs) over STOW-RS: the file itself is the blob
    other = well_formed_variants()[case]
    answer = running.stow(other)
    assert answer.status_code == 200, answer.text
    digest = hashlib.sha256(other).hexdigest()
    assert running.archive.blobs.get(digest) == other


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_bad_objects_are_refused_with_a_clear_status_and_no_blob(running: Running, tmp_path: Path, case: str) -> None:
    make, status, reason, words = REFUSED[case]
    data = make()
    path = tmp_path / f"{case}.dcm"
    path.write_bytes(data)

    response = _send_raw(running.scp.port, path)
    assert response.Status == status, getattr(response, "ErrorComment", "")
    [rejection] = running.events("InstanceRejected")
    assert rejection["reason"] == reason and rejection["status"] == status
    assert words in rejection["error_comment"]
    _assert_whole_words(str(response.ErrorComment), rejection["error_comment"])
    assert running.events("InstanceReceived") == []
    assert running.blobs() == set()  # no orphan blob

    answer = running.stow(data)
    assert answer.status_code == 409, answer.text
    [failed] = seq(answer.json(), FAILED)
    assert value(failed, REASON) == status
    assert reason in value(failed, COMMENT)
    assert running.events("InstanceReceived") == [] and running.blobs() == set()
    assert len(running.events("InstanceRejected")) == 2

    # the SCP keeps serving
    good = tmp_path / "good.dcm"
    good.write_bytes(file_bytes(base()))
    assert _send_raw(running.scp.port, good).Status == 0x0000


def test_sequences_up_to_the_nesting_limit_are_stored(running: Running, tmp_path: Path) -> None:
    path = tmp_path / "deep.dcm"
    for defined_lengths in (False, True):
        path.write_bytes(nested(MAX_SEQUENCE_DEPTH, defined_lengths))
        assert _send_raw(running.scp.port, path).Status == 0x0000
        path.write_bytes(nested(MAX_SEQUENCE_DEPTH + 1, defined_lengths))
        response = _send_raw(running.scp.port, path)
        assert response.Status == 0xC000 and "nested deeper" in response.ErrorComment


def test_deflated_data_set_past_the_inflation_limit_is_refused(running: Running, tmp_path: Path) -> None:
    running.archive.ingestor.max_inflated_bytes = 4 * 1024 * 1024  # as CAMI_MAX_INFLATED_BYTES would set it
    small, bomb = deflated_bomb(1024 * 1024), deflated_bomb(16 * 1024 * 1024)
    assert len(bomb) < 100_000  # a small object on the wire
    for name, data in (("small", small), ("bomb", bomb)):
        (tmp_path / f"{name}.dcm").write_bytes(data)
    assert _send_raw(running.scp.port, tmp_path / "small.dcm").Status == 0x0000
    response = _send_raw(running.scp.port, tmp_path / "bomb.dcm")
    assert response.Status == 0xC000
    assert "exceeds the limit" in response.ErrorComment
    answer = running.stow(bomb)
    assert answer.status_code == 409
    assert "exceeds the limit" in value(seq(answer.json(), FAILED)[0], COMMENT)
    [received] = running.events("InstanceReceived")  # only the small one
    assert running.blobs() == {received["blob"]["sha256"]}


# -- STOW-RS: the file meta ----------------------------------------------------------------------------
def test_stow_refuses_a_file_meta_that_contradicts_its_data_set(running: Running) -> None:
    ds = base()
    data = file_bytes(ds)
    other_uid = str(ds.SOPInstanceUID)[:-1] + ("7" if str(ds.SOPInstanceUID)[-1] != "7" else "8")
    meta_end = dataset_offset(data)
    contradicting = data[:meta_end].replace(str(ds.SOPInstanceUID).encode(), other_uid.encode()) + data[meta_end:]
    answer = running.stow(contradicting)
    assert answer.status_code == 409, answer.text
    [failed] = seq(answer.json(), FAILED)
    assert value(failed, REASON) == 0xA900
    assert "meta-mismatch" in value(failed, COMMENT)
    assert running.events("InstanceReceived") == [] and running.blobs() == set()
    [rejection] = running.events("InstanceRejected")
    assert rejection["reason"] == "meta-mismatch"


def test_stow_refuses_a_made_up_transfer_syntax(running: Running) -> None:
    data = file_bytes(base())
    made_up = data.replace(ExplicitVRLittleEndian.encode() + b"\x00", b"1.2.3.4.5.6.7.8.9.1\x00", 1)
    assert made_up != data and len(made_up) == len(data)
    answer = running.stow(made_up)
    assert answer.status_code == 409, answer.text
    [failed] = seq(answer.json(), FAILED)
    assert value(failed, REASON) == 0xC000
    assert "unknown transfer syntax" in value(failed, COMMENT)
    assert running.events("InstanceReceived") == [] and running.blobs() == set()


def test_valid_object_over_stow_is_still_stored(running: Running) -> None:
    data = file_bytes(base())
    answer = running.stow(data)
    assert answer.status_code == 200 and len(seq(answer.json(), REFERENCED)) == 1
