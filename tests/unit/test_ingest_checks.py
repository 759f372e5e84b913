"""The pure checks of the write path: the structural walk, UIDs, bounded inflation, ErrorComment."""

from __future__ import annotations

import zlib

import pytest

from ingest.dicom import MalformedObject, check_encoding, inflate
from ingest.handlers import error_comment
from schemas.uids import is_uid

EXPLICIT_SQ_UNDEFINED = b"\x08\x00\x32\x10SQ\x00\x00\xff\xff\xff\xff"
ITEM_UNDEFINED = b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
ITEM_END = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
SEQUENCE_END = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
CODE_VALUE = b"\x08\x00\x00\x01SH\x02\x00A1"


def test_undefined_length_sequences_and_items_are_well_formed() -> None:
    check_encoding(EXPLICIT_SQ_UNDEFINED + ITEM_UNDEFINED + CODE_VALUE + ITEM_END + SEQUENCE_END, False, True)
    # the same in implicit VR: an undefined length makes a sequence
    implicit = b"\x08\x00\x32\x10\xff\xff\xff\xff" + ITEM_UNDEFINED + b"\x08\x00\x00\x01\x02\x00\x00\x00A1"
    check_encoding(implicit + ITEM_END + SEQUENCE_END, True, True)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (EXPLICIT_SQ_UNDEFINED + ITEM_UNDEFINED + CODE_VALUE + ITEM_END, "truncated"),  # no sequence delimiter
        (EXPLICIT_SQ_UNDEFINED + ITEM_UNDEFINED + CODE_VALUE, "truncated"),
        (b"\x08\x00\x00\x01SH\x03\x00A1 ", "odd length"),
        (b"\x08\x00\x00\x01ZZ\x02\x00A1", "unknown VR"),
        (b"\x10\x00\x10\x00UT\x00\x00\xff\xff\xff\xff", "undefined length"),
        (ITEM_END, "stray item delimiter"),
        (CODE_VALUE + b"\x01\x02", "stray bytes"),
        (b"\x08\x00\x00\x01SH\x08\x00A1", "declares 8 bytes"),
    ],
)
def test_malformed_encodings_are_refused_with_the_reason(data: bytes, words: str) -> None:
    with pytest.raises(MalformedObject, match=words):
        check_encoding(data, False, True)


def test_nesting_is_limited() -> None:
    def nested(depth: int) -> bytes:
        return (EXPLICIT_SQ_UNDEFINED + ITEM_UNDEFINED) * depth + (ITEM_END + SEQUENCE_END) * depth

    check_encoding(nested(4), False, True, max_depth=4)
    with pytest.raises(MalformedObject, match="nested deeper than 4"):
        check_encoding(nested(5), False, True, max_depth=4)


def test_a_uid_with_a_trailing_newline_is_not_a_uid() -> None:
    assert is_uid("1.2.3")
    assert not is_uid("1.2.3\n") and not is_uid("1.2.03") and not is_uid("1.2.3 ")


def test_inflation_is_bounded() -> None:
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(bytes(8 << 20)) + packer.flush()
    assert len(inflate(bomb, limit=8 << 20)) == 8 << 20
    with pytest.raises(MalformedObject, match="exceeds the limit"):
        inflate(bomb, limit=1 << 20)
    with pytest.raises(MalformedObject, match="truncated"):
        inflate(bomb[: len(bomb) // 2], limit=16 << 20)


@pytest.mark.parametrize("size", [0, 2, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) + 7])
@pytest.mark.parametrize("padding", [b"", b"\x00"])
def test_inflation_ends_at_the_end_of_the_stream_whatever_its_size(size: int, padding: bytes) -> None:
    """Regression: a stream ending right after a 1 MiB step, with a pad byte after it, looped."""
    raw = bytes(range(256)) * (size // 256) + bytes(size % 256)
    for level in (0, 1, 9):
        packer = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        assert inflate(packer.compress(raw) + packer.flush() + padding, limit=4 << 20) == raw


def test_error_comment_is_whole_words_within_64_characters() -> None:
    full = "(7FE0,0010) declares 8192 bytes, only 8130 remain: truncated object or invalid length (byte 1154)"
    assert error_comment(full) == "(7FE0,0010) declares 8192 bytes, only 8130 remain"
    long_words = "word " * 30
    short = error_comment(long_words)
    assert len(short) <= 64 and long_words.startswith(short) and long_words[len(short)] == " "
    assert error_comment("a\\b\ncontrol") == "a/b control"
