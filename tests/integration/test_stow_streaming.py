"""STOW-RS bodies are spooled and read a part at a time (issue 9, defect 6): a body over the
limit is refused with 413 JSON however it is sent, and a large many-part body still stores every
part byte for byte, including delimiters that straddle the reader's chunk borders."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import httpx

from ingest.multipart import SCAN_CHUNK
from streams.topics import DICOM
from tests.support.stow import (
    FAILED,
    REFERENCED,
    SOP_UID,
    ct_dataset,
    multipart,
    new_study,
    part10,
    seq,
    start_archive,
    value,
)

PREAMBLE = "--{b}\r\nContent-Type: application/dicom\r\n\r\n"


def instance_bytes(study: str, number: int, filler: bytes) -> bytes:
    """A small CT image carrying ``filler`` (even length) in a private OB element, to size it."""
    ds = ct_dataset(study, number=number)
    block = ds.private_block(0x0009, "CAMI TEST", create=True)
    block.add_new(0x10, "OB", filler)
    return part10(ds)


def in_chunks(body: bytes, size: int = 64 << 10) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


def test_a_chunked_body_over_the_limit_is_413_json_and_nothing_is_stored(tmp_path: Path) -> None:
    for running in start_archive(tmp_path / "small", max_body=1 << 20):
        body, content_type = multipart([instance_bytes(new_study(), 1, bytes(2 << 20))])

        with running.client("okb-pacs") as client:
            # no Content-Length: the limit must hold while reading
            answer = client.post("/dicomweb/studies", content=in_chunks(body), headers={"Content-Type": content_type})
        assert "content-length" not in answer.request.headers
        assert answer.status_code == 413, answer.text
        assert answer.json()["error"] == "payload-too-large"
        assert not running.events(DICOM)
        assert list((tmp_path / "small" / "spool").iterdir()) == []  # the spooled part is gone


def test_a_large_many_part_stow_stores_every_part_byte_identical(tmp_path: Path) -> None:
    rng = random.Random(9)
    study = new_study()
    # the first part is sized so its closing delimiter straddles the first chunk border (each
    # instance has new UIDs, whose length varies: sized again until one fits exactly)
    for _ in range(50):
        boundary = "cami-streaming-test"
        first = instance_bytes(study, 1, bytes(1000))
        header = len(PREAMBLE.format(b=boundary))
        missing = SCAN_CHUNK - 5 - header - len(first)
        if missing % 2:
            boundary += "x"
            header += 1
            missing -= 1
        first = instance_bytes(study, 1, bytes(1000 + missing))
        if header + len(first) == SCAN_CHUNK - 5:
            break
    assert header + len(first) == SCAN_CHUNK - 5
    sent = [first]
    for number in range(2, 41):
        pixels = bytearray(rng.randbytes((150_000 + rng.randrange(200_000)) // 2 * 2))
        # a near miss of the delimiter inside the data: not the end of the part
        near = b"\r\n--" + boundary[:-1].encode()
        pixels[1000 : 1000 + len(near)] = near
        sent.append(instance_bytes(study, number, bytes(pixels)))
    for running in start_archive(tmp_path / "cami"):
        body, content_type = multipart(sent, boundary=boundary)
        assert len(body) > 3 * SCAN_CHUNK
        with running.client("okb-pacs") as client:
            answer = client.post(
                f"/dicomweb/studies/{study}",
                content=body,
                headers={"Content-Type": content_type},
                timeout=httpx.Timeout(300),
            )
        assert answer.status_code == 200, answer.text[:1000]
        reply = answer.json()
        assert FAILED not in reply and len(seq(reply, REFERENCED)) == len(sent)
        received = [e for e in running.events(DICOM) if e.type == "InstanceReceived"]
        by_hash = {hashlib.sha256(data).hexdigest(): data for data in sent}
        assert sorted(e["blob"]["sha256"] for e in received) == sorted(by_hash)
        for event in received:
            assert running.archive.blobs.get(event["blob"]["sha256"]) == by_hash[event["blob"]["sha256"]]
        assert {value(i, SOP_UID) for i in seq(reply, REFERENCED)} == {e["SOPInstanceUID"] for e in received}
        assert list((tmp_path / "cami" / "spool").iterdir()) == []
