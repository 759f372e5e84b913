"""HeaderValues reads the regional rules' attributes from the raw bytes where that is plain, and
must give exactly what pydicom's own conversion gives (ingest.dicom.text / integer)."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest
from pydicom import config
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from ingest.dicom import HeaderValues, MalformedObject, integer, parse, split_part10, text

EXPLICIT = "1.2.840.10008.1.2.1"
IMPLICIT = "1.2.840.10008.1.2"


def _headers(data: bytes, syntax: str) -> tuple[Dataset, Dataset]:
    """Two separate parses: pydicom stores what it converts, so each path gets untouched bytes."""
    return parse(data, syntax), parse(data, syntax)


def _same_answers(data: bytes, syntax: str) -> int:
    fast_ds, slow_ds = _headers(data, syntax)
    keywords = [keyword_for_tag(tag) for tag in fast_ds.keys()]  # noqa: SIM118  (tags, not elements)
    fast = HeaderValues(fast_ds)
    compared = 0
    for keyword in filter(None, keywords):
        assert fast.text(keyword) == text(slow_ds, keyword), keyword
        compared += 1
    fast_ds, slow_ds = _headers(data, syntax)
    fast = HeaderValues(fast_ds)
    for keyword in filter(None, keywords):
        assert fast.integer(keyword) == integer(slow_ds, keyword), keyword
    return compared


def _pydicom_files() -> list[Path]:
    """The files pydicom ships (not the ones it would download)."""
    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def test_pydicoms_own_files_read_the_same_both_ways() -> None:
    compared = files = 0
    for path in _pydicom_files():
        try:
            received = split_part10(path.read_bytes())
            if received.transfer_syntax not in (EXPLICIT, IMPLICIT):
                continue  # big endian / deflated / encapsulated: the header reads the same way, fewer of them
            data = path.read_bytes()[received.dataset_offset :]
            parse(data, received.transfer_syntax)
        except MalformedObject:
            continue  # files pydicom keeps to test broken input; CAMI refuses them anyway
        compared += _same_answers(data, received.transfer_syntax)
        files += 1
    assert files >= 20 and compared >= 500  # the comparison really ran over many files and values


def _encoded(values: dict[int, tuple[str, bytes]], syntax: str, charset: bytes | None = None) -> bytes:
    ds = Dataset()
    if charset is not None:
        ds[0x00080005] = DataElement(0x00080005, "CS", charset.decode("latin_1"), validation_mode=config.IGNORE)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = syntax == IMPLICIT, True
    write_dataset(buffer, ds)
    for tag, (vr, raw) in sorted(values.items()):
        if len(raw) % 2:
            raw += b" "
        group, element = tag >> 16, tag & 0xFFFF
        head = group.to_bytes(2, "little") + element.to_bytes(2, "little")
        if syntax == IMPLICIT:
            buffer.write(head + len(raw).to_bytes(4, "little") + raw)
        else:
            buffer.write(head + vr.encode() + len(raw).to_bytes(2, "little") + raw)
    return buffer.getvalue()


HOSTILE = [
    b"PLAIN",
    b"  LEADING",
    b"TRAILING\x00",
    b"MIXED \x00",
    b"IN\x00SIDE",
    b"A\\B",
    b"\\",
    b"caf\xe9",  # latin-1 byte in the default repertoire
    "Иванов^Иван".encode(),
    b"\xff\xfe",  # not UTF-8
    "Yamada^Tarou=山田^太郎".encode(),
    b"\x1b$B;3ED\x1b(B",
    b"",
    b" ",
]
CHARSETS = [None, b"ISO_IR 100", b"ISO_IR 192", b"ISO_IR 144", b"ISO 2022 IR 87", b"\\ISO 2022 IR 87", b"NOT A SET"]
TEXT_ELEMENTS = {
    0x00100010: "PN",  # PatientName
    0x00100020: "LO",  # PatientID
    0x00081030: "LO",  # StudyDescription
    0x00080050: "SH",  # AccessionNumber
    0x00080060: "CS",  # Modality
    0x00080020: "DA",  # StudyDate
    0x00081080: "LO",  # AdmittingDiagnosesDescription
    0x00324000: "LT",  # StudyComments
}


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("charset", CHARSETS, ids=lambda c: "default" if c is None else c.decode())
def test_hostile_text_values_read_the_same_both_ways(syntax: str, charset: bytes | None) -> None:
    for raw in HOSTILE:
        values = {tag: (vr, raw) for tag, vr in TEXT_ELEMENTS.items()}
        assert _same_answers(_encoded(values, syntax, charset), syntax) >= len(TEXT_ELEMENTS)


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize(
    "raw", [b"12", b" 12 ", b"+12", b"-7", b"1.0", b"1e3", b"abc", b"", b"1\\2", b"99999999999999", b"0012"]
)
def test_integer_values_read_the_same_both_ways(syntax: str, raw: bytes) -> None:
    values = {0x00200013: ("IS", raw), 0x00200011: ("IS", raw), 0x00280008: ("IS", raw)}
    assert _same_answers(_encoded(values, syntax), syntax) >= 3


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("raw", [b"\x00\x02", b"\xff\xff", b"\x00\x02\x00\x01", b"\x01", b""])
def test_binary_integer_values_read_the_same_both_ways(syntax: str, raw: bytes) -> None:
    values = {0x00280010: ("US", raw), 0x00280011: ("US", raw)}  # Rows, Columns
    data = _encoded(values, syntax)
    fast_ds, slow_ds = _headers(data, syntax)
    for keyword in ("Rows", "Columns"):
        assert HeaderValues(fast_ds).integer(keyword) == integer(slow_ds, keyword)
