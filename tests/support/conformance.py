"""Ingest conformance: an archive with both entry points running (Storage SCP and STOW-RS), and
Part-10 files built byte by byte: well-formed variants of one data set, a deflate bomb, the offset
of the data set in a file."""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEGBaseline8Bit

from api.auth import add_user
from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.http import HttpServer, create_app
from ingest.scp import StorageSCP
from schemas.codec import decode
from schemas.events import Event
from streams.topics import DICOM
from tests.support import studies
from tests.support.storage_scp import SENDERS
from tests.support.stow import multipart

ORG = "1.2.643.5.1.13.13.12.2.50.1001"
ROOT = "1.2.826.0.1.3680043.8.498.9"


@dataclass
class Running:
    archive: Archive
    scp: StorageSCP
    http: HttpServer
    token: str
    home: Path

    def events(self, event_type: str) -> list[Event]:
        log = self.archive.event_log
        found = [decode(r.value) for p in log.partitions(DICOM) for r in log.read(DICOM, p, 0, 1_000_000)]
        return [e for e in found if e.type == event_type]

    def blobs(self) -> set[str]:
        """Names of every blob in the (local) store."""
        return {p.name for p in (self.home / "blobs" / "objects").rglob("*") if p.is_file() and len(p.name) == 64}

    def stow(self, data: bytes) -> httpx.Response:
        body, content_type = multipart([data])
        with httpx.Client(base_url=self.http.url, timeout=60) as client:
            return client.post(
                "/dicomweb/studies",
                content=body,
                headers={
                    "Content-Type": content_type,
                    "Accept": "application/dicom+json",
                    "Authorization": f"Bearer {self.token}",
                },
            )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    home = tmp_path / "home"
    home.mkdir()
    (home / "senders.toml").write_text(SENDERS, encoding="utf-8")
    _, token = add_user(home / "users.toml", "okb-pacs", role="modality", organisation=ORG)
    settings = Settings(
        home=home,
        event_log_url=f"sqlite://{home}/events.db",
        blob_store_url=f"file://{home}/blobs",
        warehouse_url=f"chdb://{home}/clickhouse",
        partitions=3,
    )
    archive = bootstrap(settings)
    scp = archive.storage_scp(port=0)
    scp.start()
    http = HttpServer(create_app(archive), "127.0.0.1", 0)
    http.start()
    try:
        yield Running(archive, scp, http, token, home)
    finally:
        http.stop()
        scp.stop()
        archive.close()


# -- objects ----------------------------------------------------------------------------------------
_counter = iter(range(1, 1_000_000))


def base(**changes: Any) -> Dataset:
    n = next(_counter)
    ds = studies.instance(f"{ROOT}.{n}", f"{ROOT}.{n}.1", 1, size=4)
    for keyword, new in changes.items():
        setattr(ds, keyword, new)
    return ds


def file_bytes(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def dataset_offset(data: bytes) -> int:
    (meta_length,) = struct.unpack_from("<I", data, 140)  # (0002,0000) UL value
    return 144 + meta_length


def well_formed_variants() -> dict[str, bytes]:
    """Valid encodings the archive refused or might refuse; each must be stored byte for byte."""
    undefined = base()
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "A1", "99LOCAL", "CT head"
    inner = Dataset()
    inner.CodeValue = "B2"
    code.ConceptNameCodeSequence = Sequence([inner])
    undefined.ProcedureCodeSequence = Sequence([code])
    undefined["ProcedureCodeSequence"].is_undefined_length = True
    code.is_undefined_length_sequence_item = True
    code["ConceptNameCodeSequence"].is_undefined_length = True
    inner.is_undefined_length_sequence_item = True

    group_length = base()
    group_length.add_new(0x00080000, "UL", 0)
    group_length.add_new(0x00100000, "UL", 0)

    odd_private = base()
    block = odd_private.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "private text")
    block.add_new(0x11, "OB", b"\x01\x02\x03\x04")
    empty_sequence = Dataset()
    empty_sequence.CodeValue = "X1"
    block.add_new(0x12, "SQ", Sequence([empty_sequence]))
    odd_private[0x00091012].is_undefined_length = True

    encapsulated = base()
    encapsulated.PhotometricInterpretation = "YBR_FULL_422"
    encapsulated.PixelData = _encapsulate([b"\xff\xd8" + b"\x00" * 30 + b"\xff\xd9"])
    encapsulated["PixelData"].VR = "OB"
    encapsulated["PixelData"].is_undefined_length = True

    return {
        "undefined-length-sequences-and-items": file_bytes(undefined),
        "group-length-elements": file_bytes(group_length),
        "odd-group-private-tags": file_bytes(odd_private),
        "encapsulated-pixel-data": file_bytes(encapsulated, JPEGBaseline8Bit),
        "deflated": file_bytes(base(), DeflatedExplicitVRLittleEndian),
    }


def _encapsulate(fragments: list[bytes]) -> bytes:
    from pydicom.encaps import encapsulate

    return encapsulate(fragments)


def deflated_bomb(inflated_size: int) -> bytes:
    """A valid deflated object whose data set inflates to about ``inflated_size`` bytes."""
    ds = base()
    ds.add_new(0x00091010, "LO", "ACME 1.0")
    ds.add_new(0x00091011, "OB", bytes(inflated_size))
    return file_bytes(ds, DeflatedExplicitVRLittleEndian)
