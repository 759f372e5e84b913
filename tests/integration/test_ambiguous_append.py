"""An append that reached the log but was reported as failed (broker died before its ack).

The Kafka outage test shows this end to end but only when the timing happens to hit it; this
test makes it happen every time, with the real embedded log underneath a fault injector."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path

from api.bootstrap import bootstrap
from api.config import Settings
from ingest.pipeline import Arrival
from ingest.statuses import Status
from schemas.codec import decode
from streams import EventLogUnavailable, Position
from streams.embedded import EmbeddedEventLog
from streams.topics import DICOM
from tests.support.studies import write_study


class WrittenButNotAcknowledged(EmbeddedEventLog):
    """Writes every event, but reports the next ``fail`` appends as failed."""

    fail = 0

    def append_async(
        self, topic: str, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> Future[Position]:
        written = super().append_async(topic, key, value, headers)
        if self.fail <= 0:
            return written
        self.fail -= 1
        written.result(timeout=10)  # it IS in the log...
        lost_ack: Future[Position] = Future()
        lost_ack.set_exception(EventLogUnavailable("broker went away before acknowledging"))
        return lost_ack  # ...but the sender is told it failed


def test_resend_after_an_unacknowledged_write_records_the_instance_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    archive = bootstrap(
        Settings(
            home=home,
            event_log_url=f"sqlite://{home}/events.db",
            blob_store_url=f"file://{home}/blobs",
            warehouse_url=f"chdb://{home}/ch",
        )
    )
    faulty = WrittenButNotAcknowledged(home / "events.db")
    archive.event_log.close()
    archive.event_log = faulty
    try:
        [sent] = write_study(tmp_path / "study", 1, ["1.2.840.10008.1.2.1"])
        arrival = Arrival(channel="import", source_node="test")
        faulty.fail = 1
        first = archive.ingestor.store_file(sent.path.read_bytes(), arrival)
        assert first.status == Status.OUT_OF_RESOURCES  # the sender was told "failed"
        again = archive.ingestor.store_file(sent.path.read_bytes(), arrival)
        assert again.stored and again.duplicate  # the log was read before deciding
        events = [decode(r.value) for p in faulty.partitions(DICOM) for r in faulty.read(DICOM, p, 0, 100)]
        assert [e.type for e in events] == ["InstanceReceived"]
    finally:
        archive.close()
