"""ingest.multipart: a spooled multipart/related body -> its parts by offset, headers only read."""

from __future__ import annotations

import io

import pytest

from ingest.multipart import MAX_PART_HEADERS, MultipartError, Part, parse_multipart_related, read_part

TYPE = 'multipart/related; type="application/dicom"; boundary=XyZ'


def parts_of(content_type: str, body: bytes) -> list[bytes]:
    spool = io.BytesIO(body)
    return [read_part(spool, p) for p in parse_multipart_related(content_type, spool, len(body))]


def refusal(content_type: str, body: bytes) -> MultipartError:
    with pytest.raises(MultipartError) as caught:
        parse_multipart_related(content_type, io.BytesIO(body), len(body))
    return caught.value


def test_parts_between_boundaries_byte_for_byte() -> None:
    body = b"--XyZ\r\nContent-Type: application/dicom\r\n\r\nfirst\r\n--XyZ\r\n\r\nsec\r\nond\r\n--XyZ--\r\n"
    spool = io.BytesIO(body)
    parts = parse_multipart_related(TYPE, spool, len(body))
    assert parts[0] == Part("application/dicom", parts[0].offset, 5)
    assert parts[1].content_type is None  # no headers: the default type applies
    assert [read_part(spool, p) for p in parts] == [b"first", b"sec\r\nond"]


def test_a_quoted_boundary_with_spaces_and_punctuation() -> None:
    content_type = 'multipart/related; type="application/dicom"; boundary="a b:c=d"'
    assert parts_of(content_type, b"--a b:c=d\r\n\r\nx\r\n--a b:c=d--") == [b"x"]


def test_preamble_and_epilogue_are_ignored() -> None:
    body = b"some preamble text\r\n--XyZ\r\n\r\npayload\r\n--XyZ--\r\nan epilogue --XyZ\r\n"
    assert parts_of(TYPE, body) == [b"payload"]


def test_a_missing_close_delimiter_is_a_400() -> None:
    error = refusal(TYPE, b"--XyZ\r\n\r\npayload without an end")
    assert (error.status, error.code) == (400, "malformed-multipart")
    assert "not terminated" in error.detail


def test_no_boundary_in_the_body_or_the_header_is_a_400() -> None:
    assert refusal(TYPE, b"no delimiter at all").status == 400
    assert refusal('multipart/related; type="application/dicom"', b"--x\r\n\r\na\r\n--x--").status == 400
    assert refusal(TYPE, b"--XyZ--\r\n").detail == "the body has no parts"


def test_other_media_types_are_415() -> None:
    assert refusal("application/dicom", b"x").status == 415
    error = refusal('multipart/related; type="application/dicom+xml"; boundary=XyZ', b"--XyZ\r\n\r\nx\r\n--XyZ--")
    assert (error.status, error.code) == (415, "unsupported-media-type")


def test_header_limits() -> None:
    huge = b"X-Filler: " + b"a" * (MAX_PART_HEADERS + 10) + b"\r\n\r\n"
    error = refusal(TYPE, b"--XyZ\r\n" + huge + b"data\r\n--XyZ--")
    assert error.status == 400 and "no blank line" in error.detail
    error = refusal(TYPE, b"--XyZ\r\nnot a header line\r\n\r\ndata\r\n--XyZ--")
    assert error.status == 400 and "malformed header line" in error.detail


class CountingSpool(io.BytesIO):
    """A spool that counts the bytes read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def test_locating_the_parts_does_not_hold_their_content() -> None:
    big = bytes(3 << 20)  # three parts of 3 MiB: located by scanning, not kept
    body = b"".join(b"--XyZ\r\n\r\n" + big + b"\r\n" for _ in range(3)) + b"--XyZ--"
    spool = CountingSpool(body)
    parts = parse_multipart_related(TYPE, spool, len(body))
    assert [p.length for p in parts] == [len(big)] * 3
    # the scan reads the body about once, a chunk at a time; each part is read only when asked for
    assert spool.bytes_read < len(body) + (4 << 20)
    before = spool.bytes_read
    assert read_part(spool, parts[1]) == big
    assert spool.bytes_read - before == len(big)
