"""``multipart/related`` bodies (RFC 2046 / 2387) as STOW-RS sends them, parsed from a spooled
body without holding it: the parts are located by offset, only their header blocks are read, and
each part's bytes are read from the spool when its turn comes (:func:`read_part`). The memory a
request needs beyond its spool is thus about one part, whatever the number of parts.

Pure: no HTTP here. A body that does not follow its own media type raises :class:`MultipartError`
with the HTTP status the STOW-RS route answers (400 malformed, 413 too many parts, 415 not
``multipart/related; type="application/dicom"``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message
from typing import IO

#: how much of the body is searched for delimiters at a time
SCAN_CHUNK = 1 << 20
#: a part's header block longer than this is refused (the headers of a DICOM part are a line or two)
MAX_PART_HEADERS = 16 << 10
#: parts in one request (a whole large study fits; a body of empty parts cannot fill the memory)
MAX_PARTS = 100_000
DICOM = "application/dicom"
STOW_MEDIA = 'STOW-RS takes multipart/related; type="application/dicom"'


class MultipartError(ValueError):
    """A body refused as a whole: ``status`` (400, 413 or 415), a code and a sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class Part:
    """One part of the spooled body: its Content-Type and where its content lies."""

    content_type: str | None
    offset: int
    length: int


def media_type(content_type: str) -> Message:
    """A Content-Type header parsed by the standard library (type, parameters, quoted values)."""
    message = Message()
    message["content-type"] = content_type
    return message


def is_multipart_related(content_type: str | None) -> bool:
    return bool(content_type) and media_type(content_type or "").get_content_type() == "multipart/related"


def read_part(body: IO[bytes], part: Part) -> bytes:
    """The content of one part, read from the spool."""
    return _read_at(body, part.offset, part.length)


def _read_at(body: IO[bytes], offset: int, length: int) -> bytes:
    body.seek(offset)
    return body.read(length)


def _occurrences(body: IO[bytes], needle: bytes, start: int, size: int) -> Iterator[int]:
    """Offsets of ``needle`` in ``body`` from ``start``, read ``SCAN_CHUNK`` bytes at a time."""
    keep = len(needle) - 1  # a match across two chunks: the tail of the last one is searched again
    carry = b""
    pos = start
    while pos < size:
        chunk = _read_at(body, pos, SCAN_CHUNK)
        if not chunk:
            return
        window = carry + chunk
        base = pos - len(carry)
        found = window.find(needle)
        while found >= 0:
            yield base + found
            found = window.find(needle, found + len(needle))
        carry = window[-keep:] if keep else b""
        pos += len(chunk)


def parse_multipart_related(content_type: str, body: IO[bytes], size: int) -> list[Part]:
    """The parts of a spooled ``multipart/related; type="application/dicom"`` body of ``size``
    bytes, as offsets into it; nothing but the part headers is read. A preamble before the first
    delimiter and an epilogue after the close delimiter are ignored, as RFC 2046 says.

    415 when the media type is not that; 400 when the body does not follow its own boundary."""
    media = media_type(content_type)
    if media.get_content_type() != "multipart/related":
        raise MultipartError(415, "unsupported-media-type", STOW_MEDIA)
    kind = media.get_param("type")
    if isinstance(kind, str) and kind.strip().lower() != DICOM:
        raise MultipartError(
            415, "unsupported-media-type", "only application/dicom parts are supported (no metadata+bulk)"
        )
    boundary = media.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 70:
        raise MultipartError(
            400, "malformed-multipart", "multipart/related needs a boundary parameter (1-70 characters)"
        )
    delimiter = b"--" + boundary.encode("latin-1")
    # every delimiter after the first starts a line: CRLF + "--" + boundary
    ends = _occurrences(body, b"\r\n" + delimiter, 0, size)
    if _read_at(body, 0, len(delimiter)) == delimiter:
        pos = len(delimiter)
    else:
        found = next(ends, None)
        if found is None:
            raise MultipartError(400, "malformed-multipart", "the body does not contain the boundary")
        pos = found + 2 + len(delimiter)
    parts: list[Part] = []
    while True:
        line = _read_at(body, pos, 1024)
        if line[:2] == b"--":
            break  # close delimiter
        eol = line.find(b"\r\n")
        if eol < 0 or line[:eol].strip(b" \t"):
            raise MultipartError(400, "malformed-multipart", f"part {len(parts) + 1}: bad delimiter line")
        start = pos + eol + 2
        end = next((e for e in ends if e >= start), None)
        if end is None:
            raise MultipartError(400, "malformed-multipart", f"part {len(parts) + 1} is not terminated by the boundary")
        if len(parts) >= MAX_PARTS:
            raise MultipartError(413, "too-many-parts", f"a STOW-RS request holds at most {MAX_PARTS} parts")
        parts.append(_part(body, start, end, len(parts) + 1))
        pos = end + 2 + len(delimiter)
    if not parts:
        raise MultipartError(400, "malformed-multipart", "the body has no parts")
    return parts


def _part(body: IO[bytes], start: int, end: int, number: int) -> Part:
    head = _read_at(body, start, min(end - start, MAX_PART_HEADERS + 4))
    if head.startswith(b"\r\n"):
        return Part(None, start + 2, end - start - 2)
    split = head.find(b"\r\n\r\n")
    if split < 0:
        raise MultipartError(400, "malformed-multipart", f"part {number} has no blank line after its headers")
    content_type = None
    for line in head[:split].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise MultipartError(400, "malformed-multipart", f"part {number} has a malformed header line")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")
    return Part(content_type, start + split + 4, end - start - split - 4)
