"""HL7 v2 on the wire: the message header read from raw bytes, the character set MSH-18
declares, and the acknowledgement (ACK) built back in the sender's own separators and
character set. Pure functions; no I/O.

The header is read before anything is decoded because the character set is declared inside the
message it applies to: MSH up to MSH-18 is ASCII in every set HL7 allows (the separators and
the header's codes), so splitting the first segment's bytes is safe whatever follows.
"""

from __future__ import annotations

import codecs
import hashlib
from dataclasses import dataclass
from datetime import datetime

#: HL7 table 0211 (and the names Russian MIS use for Windows-1251, which the table lacks) -> codec
CHARSETS = {
    "ASCII": "ascii",
    "8859/1": "iso8859-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8",
    "UNICODE": "utf-8",
    "UTF-8": "utf-8",
    "CP1251": "cp1251",
    "WINDOWS-1251": "cp1251",
    "WIN1251": "cp1251",
    "KOI8-R": "koi8-r",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
}

#: HL7 table 0357: the error codes an ERR segment carries
SEGMENT_SEQUENCE_ERROR = 100
REQUIRED_FIELD_MISSING = 101
DATA_TYPE_ERROR = 102
TABLE_VALUE_NOT_FOUND = 103
UNSUPPORTED_MESSAGE_TYPE = 200
UNSUPPORTED_EVENT_CODE = 201
UNSUPPORTED_PROCESSING_ID = 202
UNSUPPORTED_VERSION_ID = 203
UNKNOWN_KEY_IDENTIFIER = 204
APPLICATION_INTERNAL_ERROR = 207

_ERROR_NAMES = {
    SEGMENT_SEQUENCE_ERROR: "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}


class MessageRefused(Exception):
    """A message CAMI will not record: the negative acknowledgement's code (AE: an error in the
    content; AR: a message it does not take at all -- type, version, processing id, framing), the
    table 0357 error code, where (``PID-3``) and why, in words for the MIS's log."""

    def __init__(self, ack_code: str, error_code: int, reason: str, text: str, location: str | None = None) -> None:
        super().__init__(text)
        self.ack_code = ack_code
        self.error_code = error_code
        self.reason = reason
        self.text = text
        self.location = location


@dataclass(frozen=True)
class Header:
    """MSH as raw text fields, read before the body is decoded. ``fields[n]`` is MSH-n."""

    field_separator: str
    encoding_characters: str
    fields: tuple[str, ...]

    def get(self, number: int) -> str:
        return self.fields[number] if number < len(self.fields) else ""

    def component(self, number: int, component: int = 1) -> str:
        parts = self.get(number).split("~")[0].split(self.component_separator)
        return parts[component - 1] if component <= len(parts) else ""

    @property
    def component_separator(self) -> str:
        return self.encoding_characters[0] if self.encoding_characters else "^"

    @property
    def message_type(self) -> str:
        return self.get(9)

    @property
    def control_id(self) -> str:
        return self.get(10)

    @property
    def version(self) -> str:
        return self.component(12)

    @property
    def charset(self) -> str:
        return self.get(18).split("~")[0].strip()


def read_header(block: bytes) -> Header:
    """MSH of a message block, or :class:`MessageRefused` (AR) when the block is no HL7 v2 message."""
    end = min((i for i in (block.find(b"\r"), block.find(b"\n")) if i >= 0), default=len(block))
    first = block[:end]
    if len(first) < 8 or first[:3] != b"MSH":
        raise MessageRefused(
            "AR", SEGMENT_SEQUENCE_ERROR, "malformed", "the message does not begin with an MSH segment"
        )
    text = first.decode("latin-1")  # the header's codes are ASCII; names in it survive the round trip
    separator = text[3]
    if separator.isalnum() or separator in " \r\n":
        raise MessageRefused("AR", SEGMENT_SEQUENCE_ERROR, "malformed", "MSH-1 is not a field separator")
    parts = text.split(separator)
    # MSH-1 is the separator itself, so the n-th split part is MSH-(n+1)
    fields = ("MSH", separator, *parts[1:])
    return Header(separator, parts[1] if len(parts) > 1 else "", tuple(fields))


def codec_of(header: Header, default: str) -> str:
    """The Python codec for the character set MSH-18 declares (``default`` when it declares none),
    or :class:`MessageRefused` for a set CAMI cannot read."""
    declared = header.charset
    if not declared:
        return default
    codec = CHARSETS.get(declared.upper())
    if codec is None:
        raise MessageRefused(
            "AE",
            TABLE_VALUE_NOT_FOUND,
            "unsupported-charset",
            f"character set {declared!r} in MSH-18 is not supported (use UNICODE UTF-8, 8859/5 or CP1251)",
            "MSH-18",
        )
    return codec


def decode(block: bytes, header: Header, default: str = "utf-8") -> str:
    """The message text, decoded strictly in its declared character set: a byte that is not
    valid there is refused, never guessed (a patient's name must not turn into mojibake)."""
    codec = codec_of(header, default)
    try:
        text = block.decode(codec)
    except UnicodeDecodeError as exc:
        declared = header.charset or f"none ({codecs.lookup(default).name} assumed)"
        raise MessageRefused(
            "AE",
            DATA_TYPE_ERROR,
            "broken-encoding",
            f"byte {exc.start} is not valid in the declared character set ({declared}): declare it in MSH-18",
            "MSH-18",
        ) from None
    # segments end with CR; files and some senders use LF or CRLF
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def sha256(block: bytes) -> str:
    return hashlib.sha256(block).hexdigest()


def _escape(value: str, header: Header) -> str:
    enc = (header.encoding_characters + "^~\\&")[:4]
    component, repetition, escape, subcomponent = enc[0], enc[1], enc[2], enc[3]
    out = value.replace(escape, f"{escape}E{escape}")
    for char, code in ((header.field_separator, "F"), (component, "S"), (subcomponent, "T"), (repetition, "R")):
        out = out.replace(char, f"{escape}{code}{escape}")
    return out.replace("\r", " ").replace("\n", " ")


def acknowledgement(
    header: Header,
    ack_code: str,
    *,
    control_id: str,
    now: datetime,
    application: str = "CAMI",
    facility: str = "",
    error: MessageRefused | None = None,
) -> str:
    """The original-mode ACK: MSH (the sender's separators, the receiver and sender swapped,
    MSH-18 echoed so the answer is read in the set the message came in), MSA, and for a refusal
    ERR with both the 2.3/2.4 form (ERR-1) and the 2.5+ form (ERR-2, -3, -4, -8)."""
    sep = header.field_separator
    comp = header.component_separator
    sub = (header.encoding_characters + "^~\\&")[3]
    trigger = header.component(9, 2)
    version = header.get(12) if header.version.startswith("2.") else "2.5"
    msh = [
        "MSH",
        header.encoding_characters or "^~\\&",
        header.get(5) or application,
        header.get(6) or facility,
        header.get(3),
        header.get(4),
        now.strftime("%Y%m%d%H%M%S"),
        "",
        f"ACK{comp}{trigger}{comp}ACK" if trigger else "ACK",
        control_id,
        header.get(11) or "P",
        version,
    ]
    if header.get(18):
        msh += [""] * (17 - len(msh)) + [header.get(18)]
    msa = ["MSA", ack_code, header.control_id]
    segments = [sep.join(msh)]
    if error is not None:
        msa.append(_escape(error.text, header)[:80])  # MSA-3: what 2.3/2.4 readers show
        segments.append(sep.join(msa))
        name = _ERROR_NAMES.get(error.error_code, "")
        segment, _, field = (error.location or "").partition("-")
        eld = comp.join([segment, "1" if segment else "", field, f"{error.error_code}{sub}{name}{sub}HL70357"])
        location = comp.join([segment, "1", field]) if segment else ""
        code = comp.join([str(error.error_code), name, "HL70357"])
        severity = "E"
        segments.append(sep.join(["ERR", eld, location, code, severity, "", "", "", _escape(error.text, header)]))
    else:
        segments.append(sep.join(msa))
    return "\r".join(segments) + "\r"
