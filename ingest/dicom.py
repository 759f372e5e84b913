"""Reading what arrived: structural checks, the Part-10 wrapper, and the attributes events carry.

Objects are never re-encoded. A C-STORE delivers a data set in the negotiated transfer syntax;
the archive keeps those bytes verbatim behind a Part-10 header it writes deterministically
(:func:`part10`), so the same data set always becomes the same blob. Files (import, STOW-RS)
arrive already in Part-10 form and are kept exactly as received.
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_preamble
from pydicom.tag import BaseTag, Tag
from pydicom.uid import AllTransferSyntaxes, ExplicitVRBigEndian, ImplicitVRLittleEndian

#: identifies the archive as the writer of Part-10 headers (PS3.10 7.1); under a test root
IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.8.498.1.2026.1"
IMPLEMENTATION_VERSION_NAME = "CAMI_1"
DEFLATED = "1.2.840.10008.1.2.1.99"
UNDEFINED_LENGTH = 0xFFFFFFFF
#: Sequences nested deeper than this are refused. Real objects stay far below it (an SR content
#: tree is rarely more than ten levels, RT and segmentation objects three or four), while every
#: reader (pydicom, the JSON of WADO metadata) recurses per level and fails long before 1,000.
MAX_SEQUENCE_DEPTH = 32
#: A deflated data set may inflate to at most this many bytes (CAMI_MAX_INFLATED_BYTES): the
#: inflated copy is held in memory while it is checked.
DEFAULT_MAX_INFLATED_BYTES = 256 * 1024 * 1024
INFLATE_STEP = 1 << 20
#: transfer syntaxes whose data sets pydicom can read (any other is refused)
KNOWN_TRANSFER_SYNTAXES = frozenset(str(uid) for uid in AllTransferSyntaxes)

ITEM = 0xFFFEE000
ITEM_DELIMITER = 0xFFFEE00D
SEQUENCE_DELIMITER = 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
#: PS3.5 6.2: every VR the standard defines; explicit VR objects with any other are refused
KNOWN_VRS = frozenset(
    [
        "AE",
        "AS",
        "AT",
        "CS",
        "DA",
        "DS",
        "DT",
        "FD",
        "FL",
        "IS",
        "LO",
        "LT",
        "OB",
        "OD",
        "OF",
        "OL",
        "OV",
        "OW",
        "PN",
        "SH",
        "SL",
        "SQ",
        "SS",
        "ST",
        "SV",
        "TM",
        "UC",
        "UI",
        "UL",
        "UN",
        "UR",
        "US",
        "UT",
        "UV",
    ]
)
#: explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2)
LONG_VRS = frozenset(["OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"])

pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


class MalformedObject(ValueError):
    """The bytes are not a well-formed DICOM object; the message says where and why."""


@dataclass(frozen=True)
class Received:
    """An object as it will be stored: the exact bytes plus where its data set starts."""

    part10: bytes
    dataset_offset: int
    transfer_syntax: str
    #: what a received file's meta says the data set is (checked against the data set itself)
    media_sop_class_uid: str | None = None
    media_sop_instance_uid: str | None = None

    @functools.cached_property
    def sha256(self) -> str:
        """The stored bytes' SHA-256 (hex), computed once: the event, the duplicate check and the
        blob store all need it, and hashing a CT image costs about 0.4 ms each time."""
        return hashlib.sha256(self.part10).hexdigest()


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
    meta_uids: dict[int, str] = {}
    try:
        for element in _raw_elements(stream, False, True, stop_when=_past_meta):
            if (
                not isinstance(element, RawDataElement)
                or element.length == UNDEFINED_LENGTH
                or element.value is None
                or len(element.value) != element.length
            ):
                raise MalformedObject(f"file meta element {Tag(element.tag)} is truncated or has a bad length")
            if element.tag in (0x00020002, 0x00020003, 0x00020010):
                meta_uids[element.tag] = uid_value(element.value)
            meta_end = element.value_tell + element.length
    except MalformedObject:
        raise
    except Exception as exc:
        raise MalformedObject(f"unreadable file meta information: {exc}") from None
    transfer_syntax = meta_uids.get(0x00020010)
    if transfer_syntax is None:
        raise MalformedObject("file meta information has no TransferSyntaxUID (0002,0010)")
    if transfer_syntax not in KNOWN_TRANSFER_SYNTAXES:
        raise MalformedObject(
            f"unknown transfer syntax: TransferSyntaxUID (0002,0010) {transfer_syntax[:64]!r}"
            " is not one the archive can read"
        )
    return Received(data, meta_end, transfer_syntax, meta_uids.get(0x00020002), meta_uids.get(0x00020003))


def _raw_elements(
    stream: io.BytesIO, implicit: bool, little: bool, stop_when: Any = None
) -> Iterator[RawDataElement | DataElement]:
    """Top-level elements as read from the bytes: raw (tag, VR, declared length, value, position),
    or, for a sequence of undefined length, the sequence pydicom has read up to its delimiter."""
    yield from data_element_generator(stream, implicit, little, defer_size=None, stop_when=stop_when)


def inflate(deflated: bytes, limit: int = DEFAULT_MAX_INFLATED_BYTES) -> bytes:
    """Inflate a deflated data set (PS3.5 A.5) in bounded steps, refusing past ``limit`` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = deflated
    try:
        # one step at a time, so a bomb is stopped at the limit, not after inflating all of it
        while not inflater.eof:
            chunk = inflater.decompress(pending, INFLATE_STEP)
            out += chunk
            if len(out) > limit:
                raise _too_large(limit)
            if not chunk and len(inflater.unconsumed_tail) >= len(pending):
                break  # no input left to read and nothing buffered: the stream is cut short
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise MalformedObject(f"deflated data set does not inflate: {exc}") from None
    if not inflater.eof:
        raise MalformedObject("deflated data set is truncated: the deflate stream does not end")
    return bytes(out)


def _too_large(limit: int) -> MalformedObject:
    return MalformedObject(f"inflated data set exceeds the limit of {limit} bytes (CAMI_MAX_INFLATED_BYTES)")


@functools.lru_cache(maxsize=4096)
def _is_sequence_tag(tag: int) -> bool:
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:
        return False


def check_encoding(data: bytes, implicit: bool, little: bool, max_depth: int = MAX_SEQUENCE_DEPTH) -> None:
    """Walk every element, item and delimiter, nested sequences included, and refuse
    (:class:`MalformedObject`) what PS3.5 7 does not allow: a length past its container, an odd
    value length (7.1.1), an unknown explicit VR, an undefined length outside a sequence or
    encapsulated pixel data, a missing or stray delimiter, sequences nested past ``max_depth``.

    pydicom reads such objects silently (a short value, a sequence that swallows what follows),
    and what the archive accepts it must be able to send back unchanged."""
    view = memoryview(data)
    order = "<" if little else ">"
    tag_length = struct.Struct(order + "HHI")
    explicit_short = struct.Struct(order + "HH2sH")
    explicit_long = struct.Struct(order + "HH2s2xI")
    size = len(data)
    # frames: (kind, end or None when undefined, limit, depth, implicit); kinds: dataset, item,
    # sequence, fragments. ``limit`` is the end of the nearest container of known length.
    frames: list[tuple[str, int | None, int, int, bool]] = [("dataset", size, size, 0, implicit)]
    pos = 0
    while frames:
        kind, end, limit, depth, implicit_here = frames[-1]
        if pos == end:
            frames.pop()
            continue
        if pos >= limit:
            what = {"item": "item delimiter", "dataset": "element"}.get(kind, "sequence delimiter")
            raise MalformedObject(f"truncated: the object ends before the expected {what} (byte {pos})")
        if limit - pos < 8:
            raise MalformedObject(f"truncated element header: {limit - pos} stray bytes at byte {pos}")
        group, element, length = tag_length.unpack_from(view, pos)
        tag = group << 16 | element
        if kind in ("sequence", "fragments"):
            if tag == SEQUENCE_DELIMITER:
                if end is not None or length != 0:
                    raise MalformedObject(f"stray sequence delimiter at byte {pos}")
                frames.pop()
                pos += 8
                continue
            if tag != ITEM:
                raise MalformedObject(f"{Tag(tag)} inside a sequence, where an item was expected (byte {pos})")
            if length == UNDEFINED_LENGTH:
                if kind == "fragments":
                    raise MalformedObject(f"pixel data fragment with an undefined length (byte {pos})")
                frames.append(("item", None, limit, depth, implicit_here))
                pos += 8
                continue
            _check_length(tag, length, pos + 8, limit, pos)
            if kind == "fragments":
                pos += 8 + length
            else:
                frames.append(("item", pos + 8 + length, pos + 8 + length, depth, implicit_here))
                pos += 8
            continue
        if tag == ITEM_DELIMITER:
            if kind != "item" or end is not None or length != 0:
                raise MalformedObject(f"stray item delimiter at byte {pos}")
            frames.pop()
            pos += 8
            continue
        if group == 0xFFFE:
            raise MalformedObject(f"item or delimiter {Tag(tag)} outside a sequence (byte {pos})")
        if implicit_here:
            vr = "SQ" if length == UNDEFINED_LENGTH or _is_sequence_tag(tag) else ""
            start = pos + 8
        else:
            _, _, raw_vr, short = explicit_short.unpack_from(view, pos)
            try:
                vr = raw_vr.decode("ascii")
            except UnicodeDecodeError:
                vr = "?"
            if vr not in KNOWN_VRS:
                raise MalformedObject(f"unknown VR {bytes(raw_vr)!r} in element {Tag(tag)} (byte {pos})")
            if vr in LONG_VRS:
                if limit - pos < 12:
                    raise MalformedObject(f"truncated header of element {Tag(tag)} (byte {pos})")
                length = explicit_long.unpack_from(view, pos)[3]
                start = pos + 12
            else:
                length = short
                start = pos + 8
        if length == UNDEFINED_LENGTH:
            if vr in ("SQ", "UN"):
                # an undefined-length UN is a sequence encoded in implicit VR (PS3.5 6.2.2)
                if depth + 1 > max_depth:
                    raise _too_deep(max_depth, tag, pos)
                frames.append(("sequence", None, limit, depth + 1, implicit_here or vr == "UN"))
            elif tag == PIXEL_DATA and vr in ("OB", "OW"):
                frames.append(("fragments", None, limit, depth, implicit_here))
            else:
                raise MalformedObject(
                    f"undefined length of {Tag(tag)} {vr}: only sequences and encapsulated pixel data"
                    f" may have one (byte {pos})"
                )
            pos = start
            continue
        _check_length(tag, length, start, limit, pos)
        if vr == "SQ":
            if depth + 1 > max_depth:
                raise _too_deep(max_depth, tag, pos)
            frames.append(("sequence", start + length, start + length, depth + 1, implicit_here))
            pos = start
            continue
        pos = start + length


def _too_deep(max_depth: int, tag: int, pos: int) -> MalformedObject:
    return MalformedObject(f"sequences nested deeper than {max_depth} levels (at {Tag(tag)}, byte {pos})")


def _check_length(tag: int, length: int, start: int, limit: int, pos: int) -> None:
    if length % 2:
        raise MalformedObject(
            f"odd length ({length}) of {Tag(tag)}: value lengths must be even (PS3.5 7.1.1), byte {pos}"
        )
    if start + length > limit:
        raise MalformedObject(
            f"{Tag(tag)} declares {length} bytes, only {max(limit - start, 0)} remain:"
            f" truncated object or invalid length (byte {pos})"
        )


def _past_meta(tag: Any, vr: Any, length: Any) -> bool:
    return int(tag) >> 16 != 0x0002


def parse(dataset: bytes, transfer_syntax: str, max_inflated: int = DEFAULT_MAX_INFLATED_BYTES) -> Dataset:
    """Check the structure and return the header (everything before the pixel data) in one pass.

    Every top-level element's declared length must fit the bytes that arrived: pydicom alone
    reads a truncated object silently (a short PixelData). Values are decoded lazily, with the
    object's character set, when an attribute is read."""
    if transfer_syntax not in KNOWN_TRANSFER_SYNTAXES:
        raise MalformedObject(f"unknown transfer syntax: {transfer_syntax[:64]!r} is not one the archive can read")
    if transfer_syntax == DEFLATED:
        return parse(inflate(dataset, max_inflated), "1.2.840.10008.1.2.1")
    implicit, little = _encoding(transfer_syntax)
    stream = io.BytesIO(dataset)
    header: dict[BaseTag, DataElement | RawDataElement] = {}
    end = 0
    try:
        check_encoding(dataset, implicit, little)
        for element in _raw_elements(stream, implicit, little):
            if isinstance(element, DataElement):  # a sequence of undefined length, already checked
                end = stream.tell()
            elif element.length != UNDEFINED_LENGTH:
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


def read_header(dataset: bytes, transfer_syntax: str, max_inflated: int = DEFAULT_MAX_INFLATED_BYTES) -> Dataset:
    """The checked header of a data set (see :func:`parse`)."""
    return parse(dataset, transfer_syntax, max_inflated)


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
    """An integer attribute; None when absent, empty or not a number (a foreign VR, garbage)."""
    try:
        value = ds.get(keyword)
        return None if value in (None, "", b"") else int(value)
    except Exception:
        return None


#: VRs whose values are in the object's character set / always in the default repertoire
_CHARSET_VRS = frozenset(("SH", "LO", "ST", "LT", "UC", "UT", "PN"))
_DEFAULT_VRS = frozenset(("CS", "DA", "TM", "DT", "AS", "AE", "UI", "IS", "DS", "UR"))
#: text VRs with a single value by definition: a backslash is part of the value
_ONE_VALUE_VRS = frozenset(("ST", "LT", "UT", "UR"))
_IS = frozenset(("IS",))
#: binary integer VRs read here when they hold exactly one value
_BINARY_INTEGERS = {"US": "H", "SS": "h", "UL": "I", "SL": "i"}
_INTEGER = re.compile(r"[+-]?[0-9]{1,12}")


@functools.lru_cache(maxsize=512)
def _tag(keyword: str) -> int | None:
    return tag_for_keyword(keyword)


@functools.lru_cache(maxsize=512)
def _vr(tag: int) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


class HeaderValues:
    """:func:`text` and :func:`integer` for the top level of one parsed header, decoded straight
    from the raw bytes where that is plain: one value in a character set with a single Python
    codec (no ISO 2022 code extensions), a text VR. Anything else -- several values, code
    extensions, a value that does not decode, a binary VR, a sequence -- goes to pydicom as
    before. The regional rules read about 35 attributes per object, and pydicom's conversion of
    each (keyword look-up, character set looked up again, the element converted and stored back)
    was the largest part of examining one. ``tests/unit/test_header_values.py`` holds the two
    paths to the same answers on pydicom's own test files."""

    __slots__ = ("_codec", "_ds")

    def __init__(self, ds: Dataset) -> None:
        self._ds = ds
        self._codec = self._single_codec()

    def _single_codec(self) -> str | None:
        try:
            element = self._ds.get_item(0x00080005)
        except Exception:  # an element that does not even read: let pydicom decide everything
            return None
        if element is None or not element.value:
            return "latin_1"  # pydicom's default repertoire (it decodes ISO_IR 6 as ISO 8859-1)
        raw = element.value
        if not isinstance(raw, bytes):
            return None
        terms = [term.strip() for term in raw.decode("latin_1").strip("\x00 ").split("\\")]
        if len(terms) != 1 or not terms[0] or "2022" in terms[0]:
            return None
        try:
            [codec] = convert_encodings(terms[0])
        except Exception:  # an unknown or several encodings: pydicom warns and copes
            return None
        return str(codec)

    def _plain(self, keyword: str, vrs: frozenset[str] = _CHARSET_VRS | _DEFAULT_VRS) -> tuple[bool, str | None]:
        """(True, the value stripped) when read here; (False, None) when pydicom must decode it
        (or when its VR is not one of ``vrs``)."""
        tag = _tag(keyword)
        if tag is None or self._codec is None:
            return False, None
        try:
            element = self._ds.get_item(tag)
        except Exception:
            return False, None
        if element is None:
            return True, None
        if not isinstance(element, RawDataElement):  # already converted: pydicom's value is at hand
            return False, None
        vr = element.VR or _vr(tag)
        if vr not in vrs:
            return False, None
        raw = element.value
        if raw is None or not isinstance(raw, bytes):
            return (True, None) if raw is None else (False, None)
        if b"\x1b" in raw:  # an escape sequence: pydicom switches character sets on it
            return False, None
        if vr in _CHARSET_VRS:
            codec = self._codec
        elif vr in _DEFAULT_VRS:
            codec = "latin_1"
        else:
            return False, None
        try:
            value = raw.decode(codec)
        except (UnicodeDecodeError, LookupError):
            return False, None
        if "\\" in value and vr not in _ONE_VALUE_VRS:
            return False, None
        if vr == "PN" and "=" in value:  # component groups: PersonName renders them
            return False, None
        rendered = value.rstrip("\x00 ").strip().strip("\x00")
        return True, rendered or None

    def _binary(self, keyword: str) -> int | None:
        """A single US/SS/UL/SL value in the header's byte order; None when not one (pydicom decides)."""
        tag = _tag(keyword)
        if tag is None:
            return None
        try:
            element = self._ds.get_item(tag)
        except Exception:
            return None
        if not isinstance(element, RawDataElement) or not isinstance(element.value, bytes):
            return None
        code = _BINARY_INTEGERS.get(element.VR or _vr(tag) or "")
        _, little = self._ds.original_encoding
        if code is None or little is None or len(element.value) != struct.calcsize(code):
            return None
        return int(struct.unpack(("<" if little else ">") + code, element.value)[0])

    def text(self, keyword: str) -> str | None:
        done, value = self._plain(keyword)
        return value if done else text(self._ds, keyword)

    def integer(self, keyword: str) -> int | None:
        number = self._binary(keyword)
        if number is not None:
            return number
        done, value = self._plain(keyword, _IS)
        if not done:
            return integer(self._ds, keyword)
        if value is None:
            return None
        return int(value) if _INTEGER.fullmatch(value) else integer(self._ds, keyword)


def first_item(ds: Dataset, *path: str) -> Dataset | None:
    """``first_item(ds, "ProcedureCodeSequence")`` -> the first item, following nested sequences;
    None when absent or when an element on the path is not a sequence of items."""
    current: Dataset | None = ds
    for keyword in path:
        if current is None:
            return None
        try:
            sequence = current.get(keyword)
            item = sequence[0] if sequence else None
        except Exception:  # not a sequence (a foreign VR) or an item that does not parse
            return None
        current = item if isinstance(item, Dataset) else None
    return current


def iter_uids(ds: Dataset) -> Iterator[tuple[str, str | None]]:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        yield keyword, text(ds, keyword)


def uid_value(raw: bytes | bytearray | str) -> str:
    """A UI value as encoded, less its padding (PS3.5 9.1: one trailing NUL; a trailing space is
    tolerated). Nothing else is stripped, so ``"1.2.3\n"`` stays invalid."""
    value = raw.decode("ascii", "replace") if isinstance(raw, bytes | bytearray) else str(raw)
    return value.rstrip("\x00 ")


def uid(ds: Dataset, keyword: str) -> str | None:
    """A UID attribute exactly as encoded (see :func:`uid_value`); None when absent or empty."""
    try:
        element = ds.get_item(keyword)  # the raw bytes when not yet decoded
        value = None if element is None else element.value
    except Exception:  # a value that does not decode (a wrong VR, a hostile length)
        return None
    if not isinstance(value, bytes | bytearray | str):
        return None
    return uid_value(value) or None
