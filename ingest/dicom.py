"""Reading what arrived: structural checks, the Part-10 wrapper, and the attributes events carry.

Objects are never re-encoded. A C-STORE delivers a data set in the negotiated transfer syntax;
the archive keeps those bytes verbatim behind a Part-10 header it writes deterministically
(:func:`part10`), so the same data set always becomes the same blob. Files (import, STOW-RS)
arrive already in Part-10 form and are kept exactly as received.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

#: identifies the archive as the writer of Part-10 headers (PS3.10 7.1); under a test root
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1.2026.1"
IMPLEMENTATION_VERSION_NAME = "CAMI_1"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF

pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class MalformedObject(ValueError):
    """The bytes are not a well-formed DICOM object; the message says where and why."""


@dataclass(frozen=True)
class Received:
    """An object as it will be stored: the exact bytes plus where its data set starts."""

    part10: bytes
    dataset_offset: int
    transfer_syntax: str


def _encoding(transfer_syntax: str) -> tuple[bool, bool]:
    """(implicit VR, little endian) of a transfer syntax's data set encoding."""
    if transfer_syntax == ImplicitVRLittleEndian:
        return True, True
    if transfer_syntax == ExplicitVRBigEndian:
        return False, False
    return False, True


def _meta_element(tag: int, vr: str, value: bytes) -> bytes:
    group, element = tag >> 16, tag & 0xFFFF
    if vr in ("OB", "OW", "UN", "SQ", "UT", "UC", "UR"):
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(value)) + value
    return struct.pack("<HH2sH", group, element, vr.encode(), len(value)) + value


def _uid(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _sh(value: str) -> bytes:
    raw = value.encode("ascii", "replace")[:16]
    return raw + b" " if len(raw) % 2 else raw


def part10(
    dataset: bytes,
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax: str,
    implementation_class_uid: str | None = None,
    implementation_version_name: str | None = None,
) -> Received:
    """Wrap a received data set in a Part-10 header, deterministically (no time stamps).

    The implementation class UID and version name are the *sender's*, as its association
    request announced them (CAMI's own when unknown): the header then says which software
    encoded the data set, and a file written by the sending toolkit is reproduced bit for bit."""
    implementation_uid = implementation_class_uid or IMPLEMENTATION_CLASS_UID
    version_name = IMPLEMENTATION_VERSION_NAME if implementation_class_uid is None else implementation_version_name
    elements = [
        _meta_element(0x00020001, "OB", b"\x00\x01"),
        _meta_element(0x00020002, "UI", _uid(sop_class_uid)),
        _meta_element(0x00020003, "UI", _uid(sop_instance_uid)),
        _meta_element(0x00020010, "UI", _uid(transfer_syntax)),
        _meta_element(0x00020012, "UI", _uid(implementation_uid)),
    ]
    if version_name:
        elements.append(_meta_element(0x00020013, "SH", _sh(version_name)))
    body = b"".join(elements)
    header = b"\x00" * 128 + b"DICM" + _meta_element(0x00020000, "UL", struct.pack("<I", len(body))) + body
    return Received(header + dataset, len(header), transfer_syntax)


def split_part10(data: bytes) -> Received:
    """Locate the data set in a Part-10 file (as received from import or STOW-RS)."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise MalformedObject("not a DICOM Part-10 file (no 'DICM' marker after the 128-byte preamble)")
    stream = io.BytesIO(data)
    read_preamble(stream, force=False)
    start = stream.tell()
    meta_end = start
    transfer_syntax = None
    try:
        for element in _raw_elements(stream, False, True, stop_when=_past_meta):
            if element.length == UNDEFINED_LENGTH or element.value is None or len(element.value) != element.length:
                raise MalformedObject(f"file meta element {Tag(element.tag)} is truncated or has a bad length")
            if element.tag == 0x00020010:
                transfer_syntax = element.value.rstrip(b"\x00 ").decode("ascii", "replace")
            meta_end = element.value_tell + element.length
    except MalformedObject:
        raise
    except Exception as exc:
        raise MalformedObject(f"unreadable file meta information: {exc}") from None
    if transfer_syntax is None:
        raise MalformedObject("file meta information has no TransferSyntaxUID (0002,0010)")
    return Received(data, meta_end, transfer_syntax)


def _raw_elements(stream: io.BytesIO, implicit: bool, little: bool, stop_when: Any = None) -> Iterator[RawDataElement]:
    """Top-level elements as read from the bytes (tag, VR, declared length, value, position)."""
    for element in data_element_generator(stream, implicit, little, defer_size=None, stop_when=stop_when):
        if not isinstance(element, RawDataElement):  # pragma: no cover - the generator yields raw
            raise MalformedObject(f"unexpected decoded element {element.tag}")
        yield element


def _past_meta(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) >> 16 != 0x0002


def parse(dataset: bytes, transfer_syntax: str) -> Dataset:
    """Check the structure and return the header (everything before the pixel data) in one pass.

    Every top-level element's declared length must fit the bytes that arrived: pydicom alone
    reads a truncated object silently (a short PixelData). Values are decoded lazily, with the
    object's character set, when an attribute is read."""
    if transfer_syntax == DEFLATED:
        import zlib

        try:
            inflated = zlib.decompress(dataset, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise MalformedObject(f"deflated data set does not inflate: {exc}") from None
        return parse(inflated, "1.2.840.10008.1.2.1")
    implicit, little = _encoding(transfer_syntax)
    stream = io.BytesIO(dataset)
    header: dict[BaseTag, DataElement | RawDataElement] = {}
    end = 0
    try:
        for element in _raw_elements(stream, implicit, little):
            if element.length != UNDEFINED_LENGTH:
                got = 0 if element.value is None else len(element.value)
                if got != element.length:
                    raise MalformedObject(
                        f"element {Tag(element.tag)} declares {element.length} bytes but only {got} arrived"
                        " (truncated object or invalid length)"
                    )
                end = element.value_tell + element.length
            else:
                end = stream.tell()
            if element.tag < 0x7FE00010:  # the pixel data and what follows are not needed here
                header[BaseTag(element.tag)] = element
    except MalformedObject:
        raise
    except Exception as exc:
        raise MalformedObject(f"data set does not parse: {type(exc).__name__}: {exc}") from None
    if end == 0:
        raise MalformedObject("no DICOM data elements in the object")
    if end != len(dataset):
        raise MalformedObject(f"{len(dataset) - end} bytes after the last complete element")
    ds = Dataset(header)
    ds.set_original_encoding(implicit, little)
    return ds


def check_structure(dataset: bytes, transfer_syntax: str) -> None:
    """Refuse (MalformedObject) bytes that are not a complete, well-formed data set."""
    parse(dataset, transfer_syntax)


def read_header(dataset: bytes, transfer_syntax: str) -> Dataset:
    """The checked header of a data set (see :func:`parse`)."""
    return parse(dataset, transfer_syntax)


def text(ds: Dataset, keyword: str) -> str | None:
    """A string attribute decoded with the object's character set; None when absent or empty."""
    try:
        value = ds.get(keyword)
    except Exception:  # a value that does not decode in its declared character set
        return None
    if value is None:
        return None
    rendered = str(value).strip().strip("\x00")
    return rendered or None


def integer(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def first_item(ds: Dataset, *path: str) -> Dataset | None:
    """``first_item(ds, "ProcedureCodeSequence")`` -> the first item, following nested sequences."""
    current: Dataset | None = ds
    for keyword in path:
        if current is None:
            return None
        sequence = current.get(keyword)
        current = sequence[0] if sequence else None
    return current


def iter_uids(ds: Dataset) -> Iterator[tuple[str, str | None]]:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        yield keyword, text(ds, keyword)


_UID_GRAMMAR = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")


def is_uid(value: str) -> bool:
    """PS3.5 9.1: numeric components separated by dots, no leading zeros, at most 64 characters."""
    return len(value) <= 64 and bool(_UID_GRAMMAR.match(value))
