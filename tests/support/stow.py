"""STOW-RS helpers: a running archive with users of every role behind the HTTP server, Part-10 test
objects built with pydicom, the multipart body, and the DICOM JSON tags of the answer."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from api.auth import add_user
from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.http import HttpServer, create_app
from schemas.codec import decode
from tests.support import studies

ROOT_UID = "1.2.826.0.1.3680043.8.498."
ORG = "1.2.643.5.1.13.13.12.2.50.1001"


# -- test objects ------------------------------------------------------------------------------
def part10(ds: Dataset) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def ct_dataset(study: str, series: str | None = None, number: int = 1, patient_id: str | None = "P-1001") -> Dataset:
    """A small CT image with every regional attribute (4x4 pixels)."""
    return studies.instance(
        study,
        series or study + ".1",
        number,
        patient_id=patient_id,
        size=4,
        patient=("ISO_IR 192", "Иванов^Иван^Иванович"),
    )


def new_study() -> str:
    return ROOT_UID + str(uuid.uuid4().int)[:20]


# -- multipart ---------------------------------------------------------------------------------
def multipart(
    parts: list[bytes], boundary: str | None = None, part_type: str = "application/dicom"
) -> tuple[bytes, str]:
    boundary = boundary or f"cami-{uuid.uuid4().hex}"
    chunks = []
    for data in parts:
        chunks.append(f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


# -- a running archive -------------------------------------------------------------------------
@dataclass
class RunningArchive:
    archive: Archive
    server: HttpServer
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.server.url

    def client(self, user: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def events(self, topic: str) -> list[Any]:
        log = self.archive.event_log
        out = []
        for partition in log.partitions(topic):
            out.extend(decode(r.value) for r in log.read(topic, partition, 0, 100_000))
        return out

    def stow(self, user: str, parts: list[bytes], study: str | None = None) -> httpx.Response:
        body, content_type = multipart(parts)
        path = f"/dicomweb/studies/{study}" if study else "/dicomweb/studies"
        with self.client(user) as c:
            return c.post(
                path, content=body, headers={"Content-Type": content_type, "Accept": "application/dicom+json"}
            )


USERS = {
    "dr.petrov": {"role": "radiologist", "organisation": ORG, "doctor_code": "R-1001", "doctor_name": "Петров^Пётр"},
    "dr.sidorova": {
        "role": "radiologist",
        "organisation": ORG,
        "doctor_code": "R-1002",
        "doctor_name": "Сидорова^Анна",
    },
    "ref.ivanov": {"role": "referring-doctor", "organisation": ORG},
    "okb-pacs": {"role": "modality", "organisation": ORG},
    "admin": {"role": "administrator"},
    "it": {"role": "regional-it"},
}


def settings_for(home: Path) -> Settings:
    return Settings(
        home=home,
        event_log_url=f"sqlite://{home}/events.db",
        blob_store_url=f"file://{home}/blobs",
        warehouse_url=f"chdb://{home}/clickhouse",
        partitions=3,
    )


def add_users(home: Path) -> dict[str, str]:
    tokens = {}
    for name, spec in USERS.items():
        _, tokens[name] = add_user(home / "users.toml", name, **spec)
    return tokens


@pytest.fixture
def running(tmp_path: Path) -> Iterator[RunningArchive]:
    yield from start_archive(tmp_path / "cami")


def start_archive(home: Path, **app_options: Any) -> Iterator[RunningArchive]:
    archive = bootstrap(settings_for(home))
    tokens = add_users(home)
    server = HttpServer(create_app(archive, **app_options), "127.0.0.1", 0)
    server.start()
    try:
        yield RunningArchive(archive, server, tokens)
    finally:
        server.stop()
        archive.close()


def seq(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(body.get(tag, {}).get("Value", []))


def value(item: dict[str, Any], tag: str) -> Any:
    values = item.get(tag, {}).get("Value")
    return values[0] if values else None


REFERENCED, FAILED, RETRIEVE, REASON, COMMENT = "00081199", "00081198", "00081190", "00081197", "00000902"
SOP_UID, CLASS_UID = "00081155", "00081150"
