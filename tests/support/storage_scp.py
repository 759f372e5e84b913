"""An archive with its Storage SCP on a free port, over temporary storage, and the senders it knows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from ingest.scp import StorageSCP
from schemas.codec import decode
from schemas.events import Event
from streams.topics import DICOM

ORGANISATION = "1.2.643.5.1.13.13.12.2.50.1001"
SENDERS = f"""
[archive]
ae_title = "CAMI"

[[sender]]
ae_title = "OKB_CT1"
organisation = "{ORGANISATION}"
name = "Regional clinical hospital, CT 1"
"""


@dataclass
class Running:
    archive: Archive
    scp: StorageSCP

    def events(self, event_type: str | None = None) -> list[Event]:
        log = self.archive.event_log
        found = [decode(r.value) for p in log.partitions(DICOM) for r in log.read(DICOM, p, 0, 1_000_000)]
        return [e for e in found if event_type is None or e.type == event_type]


def start_archive(home: Path, blob_store_env: Mapping[str, str] | None = None, **urls: str) -> Running:
    home.mkdir(parents=True, exist_ok=True)
    (home / "senders.toml").write_text(SENDERS, encoding="utf-8")
    settings = Settings(
        home=home,
        event_log_url=urls.get("event_log", f"sqlite://{home}/events.db"),
        blob_store_url=urls.get("blobs", f"file://{home}/blobs"),
        warehouse_url=f"chdb://{home}/clickhouse",
        partitions=3,
        blob_store_env=dict(blob_store_env or {}),
    )
    archive = bootstrap(settings)
    scp = archive.storage_scp(port=0)
    scp.start()
    return Running(archive, scp)
