"""Bounded fuzzing of the write path with a seeded mutator: valid objects, mutated (bit flips,
truncations, length fields, tags and VRs, nesting, inserted bytes), sent as peers send them.

Most cases go straight into :meth:`Ingestor.store_dataset` / :meth:`Ingestor.store_file` of an
archive on the real embedded backends (SQLite log, local blob store); a few hundred go over the
wire, C-STORE from a pynetdicom SCU (the data set bytes unchanged) and STOW-RS over HTTP.

Asserted for every case: never "out of resources" (0xA700) nor HTTP 500 for bad input; and at the
end: the SCP still answers C-ECHO, the process's memory stayed bounded, and the blobs in the store
are exactly those the InstanceReceived events reference (no orphan blob).

``CAMI_FUZZ_CASES`` (default 3000) and ``CAMI_FUZZ_WIRE_CASES`` (default 200) set the counts,
``CAMI_FUZZ_SEED`` the seed (a failure message names the seed and case to replay).
"""

from __future__ import annotations

import copy
import functools
import io
import os
import random
import resource
import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom.data
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info
from pydicom.sequence import Sequence
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from ingest.dicom import split_part10
from ingest.pipeline import Arrival
from ingest.statuses import Status
from tests.support.conformance import (
    Running,
    base,
    dataset_offset,
    deflated_bomb,
    file_bytes,
    well_formed_variants,
)
from tests.support.conformance import running as running

CASES = int(os.environ.get("CAMI_FUZZ_CASES", "3000"))
WIRE_CASES = int(os.environ.get("CAMI_FUZZ_WIRE_CASES", "200"))
SEED = int(os.environ.get("CAMI_FUZZ_SEED", "20261129"))
#: the process holds the SCP, the HTTP server and the pipeline: its peak RSS may not grow past this
RSS_GROWTH_LIMIT = 400 * 1024 * 1024
VRS = [b"AE", b"CS", b"DA", b"DS", b"IS", b"LO", b"OB", b"OW", b"PN", b"SQ", b"UI", b"UL", b"UN", b"US", b"UT", b"ZZ"]
TAGS = [b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\x20\x00\x11\x00", b"\xe0\x7f\x10\x00"]
LENGTHS = [0, 1, 2, 3, 0xFF, 0xFFFF, 0xFFFE, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF]


@functools.cache
def seeds() -> tuple[bytes, ...]:
    """Valid Part-10 files in several encodings (sequences, private tags, pixel data); built once
    per process (their UIDs are new each time)."""
    out = list(well_formed_variants().values())
    report = base()
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = "C1", "99LOCAL", "chest"
    item.ConceptNameCodeSequence = Sequence([Dataset()])
    report.ProcedureCodeSequence = Sequence([item])
    report.SeriesNumber, report.InstanceNumber = "12", "7"
    for syntax in (ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian):
        out.append(file_bytes(copy.deepcopy(report), syntax))
    out.append(deflated_bomb((1 << 20) + 512))  # inflates past one inflation step
    root = Path(pydicom.data.__file__).parent / "test_files"
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtplan.dcm", "SC_rgb_rle.dcm"):
        path = root / name
        if path.exists():
            out.append(path.read_bytes())
    return tuple(out)


def _element_offsets(data: bytes, start: int) -> list[int]:
    """Plausible element header positions (explicit VR or item tags) in the data set."""
    found = []
    for at in range(start, len(data) - 8, 2):
        if (data[at + 4 : at + 6].isalpha() and data[at + 4 : at + 6].isupper()) or data[at : at + 2] == b"\xfe\xff":
            found.append(at)
    return found or [start]


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One random mutation of a Part-10 file's data set (the file meta mostly kept)."""
    start = dataset_offset(data)
    buf = bytearray(data)
    kind = rng.choice(["flip", "truncate", "length", "vr", "tag", "nest", "insert", "delete", "meta", "many"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(start, len(buf))
            buf[at] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del buf[rng.randrange(start, len(buf)) :]
    elif kind in ("length", "vr", "tag"):
        at = rng.choice(_element_offsets(data, start))
        if kind == "length":
            value = rng.choice(LENGTHS) if rng.random() < 0.7 else rng.randrange(1 << 32)
            if buf[at : at + 2] == b"\xfe\xff" or buf[at + 4 : at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT"):
                offset = 4 if buf[at : at + 2] == b"\xfe\xff" else 8
                buf[at + offset : at + offset + 4] = struct.pack("<I", value)
            else:
                buf[at + 6 : at + 8] = struct.pack("<H", value & 0xFFFF)
        elif kind == "vr":
            buf[at + 4 : at + 6] = rng.choice(VRS)
        else:
            buf[at : at + 4] = rng.choice(
                [b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0", b"\x20\x00\x11\x00", b"\xe0\x7f\x10\x00"]
            )
    elif kind == "nest":
        at = rng.choice(_element_offsets(data, start))
        depth = rng.choice([1, 5, 33, 200, 2000])
        opening = b"\x40\x00\x30\xa7SQ\x00\x00\xff\xff\xff\xff\xfe\xff\x00\xe0\xff\xff\xff\xff"
        closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00\xfe\xff\xdd\xe0\x00\x00\x00\x00"
        buf[at:at] = opening * depth + (closing * depth if rng.random() < 0.7 else b"")
    elif kind == "insert":
        at = rng.randrange(start, len(buf))
        buf[at:at] = rng.randbytes(rng.randint(1, 64))
    elif kind == "delete":
        at = rng.randrange(start, len(buf))
        del buf[at : at + rng.randint(1, 64)]
    elif kind == "meta":
        at = rng.randrange(132, start)
        buf[at] = rng.randrange(256)
    else:
        for _ in range(rng.randint(2, 5)):
            _, mutated = mutate(bytes(buf), rng)
            buf = bytearray(mutated)
            if len(buf) < 160:
                break
    return kind, bytes(buf)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def assert_no_orphan_blobs(running: Running) -> None:
    referenced = {e["blob"]["sha256"] for e in running.events("InstanceReceived")}
    assert running.blobs() == referenced


def cases(count: int, seed: int) -> Iterator[tuple[int, str, bytes]]:
    rng = random.Random(seed)
    corpus = seeds()
    for number in range(count):
        original = rng.choice(corpus)
        if rng.random() < 0.05:
            yield number, "valid", original
            continue
        kind, data = mutate(original, rng)
        yield number, kind, data


def test_mutated_objects_are_refused_or_stored_never_an_internal_error(running: Running, tmp_path: Path) -> None:
    running.archive.ingestor.max_inflated_bytes = 32 * 1024 * 1024  # as CAMI_MAX_INFLATED_BYTES would set it
    ingestor = running.archive.ingestor
    arrival = Arrival(channel="stow-rs", source_node="fuzz", organisation="1.2.643.5.1.13.13.12.2.50.1001")
    rss_before = peak_rss()
    outcomes: dict[str, int] = {}
    for number, kind, data in cases(CASES, SEED):
        where = f"seed {SEED} case {number} ({kind})"
        if number % 2:  # as a C-STORE data set, with the transfer syntax the file meta names
            try:
                received = split_part10(data)
            except Exception:
                continue  # the meta itself is broken: that is the STOW path's business
            outcome = ingestor.store_dataset(data[received.dataset_offset :], received.transfer_syntax, arrival)
        else:
            outcome = ingestor.store_file(data, arrival)
        assert outcome.status != Status.OUT_OF_RESOURCES, f"{where}: {outcome.comment}"
        assert outcome.stored or outcome.comment, where
        outcomes[outcome.reason or "stored"] = outcomes.get(outcome.reason or "stored", 0) + 1
    assert sum(outcomes.values()) > CASES // 2, outcomes
    assert "malformed" in outcomes and "stored" in outcomes, outcomes  # the mutator reaches both sides

    wire = _over_the_wire(running, tmp_path)
    assert peak_rss() - rss_before < RSS_GROWTH_LIMIT, f"peak RSS grew by {(peak_rss() - rss_before) >> 20} MiB"
    ae = AE(ae_title="OKB_CT1")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", running.scp.port, ae_title="CAMI")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000  # the server is alive
    assoc.release()
    assert_no_orphan_blobs(running)
    print(f"fuzz: {sum(outcomes.values())} direct cases {outcomes}; over the wire {wire}")


def _over_the_wire(running: Running, tmp_path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    send: list[Callable[[bytes, str], None]] = []

    def c_store(data: bytes, where: str) -> None:
        path = tmp_path / "case.dcm"
        path.write_bytes(data)
        try:
            split_part10(data)  # the SCU takes the UIDs from the file meta
        except Exception:
            return
        try:
            meta = read_file_meta_info(path)
            ae = AE(ae_title="OKB_CT1")
            ae.add_requested_context(meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
        except Exception:  # pynetdicom itself will not propose it (a mangled UID in the meta...)
            counts["not-sendable"] = counts.get("not-sendable", 0) + 1
            return
        assoc = ae.associate("127.0.0.1", running.scp.port, ae_title="CAMI")
        if not assoc.is_established:  # a mangled SOP class the archive does not store
            counts["context-rejected"] = counts.get("context-rejected", 0) + 1
            return
        previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        try:
            response = assoc.send_c_store(path)
        except Exception:  # pynetdicom will not send it (the file cannot be split)
            counts["not-sendable"] = counts.get("not-sendable", 0) + 1
            return
        finally:
            assoc.release()
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        status = int(getattr(response, "Status", -1))
        assert status != 0xA700, f"{where}: {getattr(response, 'ErrorComment', '')}"
        assert status != -1, f"{where}: no answer (the association was aborted)"
        counts[f"c-store {status:04X}"] = counts.get(f"c-store {status:04X}", 0) + 1

    def stow(data: bytes, where: str) -> None:
        answer = running.stow(data)
        assert answer.status_code < 500, f"{where}: {answer.status_code} {answer.text[:500]}"
        counts[f"stow {answer.status_code}"] = counts.get(f"stow {answer.status_code}", 0) + 1

    send.extend([c_store, stow])
    for number, kind, data in cases(WIRE_CASES, SEED + 1):
        send[number % 2](data, f"seed {SEED + 1} wire case {number} ({kind})")
    return counts


def test_the_mutator_is_deterministic() -> None:
    first = [data for _, _, data in cases(20, 7)]
    assert first == [data for _, _, data in cases(20, 7)]
    assert io.BytesIO(first[0]).read(132)[128:] == b"DICM"
