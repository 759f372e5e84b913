"""Two ingest nodes sharing the log and the blob store, each with its own SOP index, receiving the
same SOPInstanceUID at the same moment: one InstanceReceived per distinct content, never two of
the same bytes, and two different objects never both recorded as the same version.

On real Kafka + MinIO (claims are conditional S3 writes) and on the embedded log and a blob
directory two processes on one machine would share (claims are O_EXCL files).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from ingest.pipeline import Arrival, Outcome
from ingest.statuses import Status
from tests.support.events import received_versions
from tests.support.readside import ROOT_UID
from tests.support.servers import KafkaServer, MinioServer
from tests.support.stow import ct_dataset, new_study, part10

ROUNDS = 50


def nodes(shared: dict[str, str], root: Path, credentials: dict[str, str] | None = None) -> list[Archive]:
    """Two archives over the same log and blobs, each with its own home (SOP index, warehouse)."""
    return [
        bootstrap(
            Settings(
                home=root / name,
                event_log_url=shared["log"],
                blob_store_url=shared["blobs"],
                warehouse_url=f"chdb://{root / name}/ch",
                blob_store_env=credentials or {},
            )
        )
        for name in ("node-a", "node-b")
    ]


@pytest.fixture(scope="module")
def on_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Archive]]:
    root = tmp_path_factory.mktemp("two-nodes")
    with KafkaServer(root / "kafka") as kafka, MinioServer(root / "minio") as minio:
        blobs = f"s3://two-nodes?endpoint={minio.endpoint}"
        keys = {"CAMI_S3_ACCESS_KEY": minio.access_key, "CAMI_S3_SECRET_KEY": minio.secret_key}
        archives = nodes({"log": f"kafka://{kafka.bootstrap}", "blobs": blobs}, root, keys)
        yield archives
        for archive in archives:
            archive.close()


@pytest.fixture()
def embedded(tmp_path: Path) -> Iterator[list[Archive]]:
    archives = nodes({"log": f"sqlite://{tmp_path}/events.db", "blobs": f"file://{tmp_path}/blobs"}, tmp_path)
    yield archives
    for archive in archives:
        archive.close()


def at_once(archives: list[Archive], objects: list[bytes]) -> list[Outcome]:
    """Each node receives its object at the same moment."""
    start = threading.Barrier(len(archives))
    outcomes: list[Outcome | None] = [None] * len(archives)

    def send(i: int) -> None:
        arrival = Arrival(channel="stow-rs", source_node=f"node-{i}", organisation="1.2.643.5.1.13.13.12.2.50.1001")
        start.wait()
        outcomes[i] = archives[i].ingestor.store_file(objects[i], arrival)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(archives))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert all(o is not None for o in outcomes)
    return [o for o in outcomes if o is not None]


def received(archive: Archive) -> Counter[tuple[str, int]]:
    """InstanceReceived events in the log, by (SOPInstanceUID, version)."""
    return received_versions(archive.event_log)


def same_object_to_both_nodes(archives: list[Archive]) -> None:
    study = new_study()
    same: list[str] = []
    for _ in range(ROUNDS):
        ds = ct_dataset(study, number=1)
        ds.SOPInstanceUID = generate_uid(prefix=ROOT_UID)
        data = part10(ds)
        outcomes = at_once(archives, [data, data])
        assert all(o.status == Status.SUCCESS for o in outcomes), [(o.status, o.reason) for o in outcomes]
        assert sorted(o.duplicate for o in outcomes) == [False, True]  # one recorded, one told it is held
        assert outcomes[0].version == outcomes[1].version == 1
        same.append(str(ds.SOPInstanceUID))

    # different bytes under one SOPInstanceUID at once: two versions, never two of version 1
    different: list[str] = []
    for _ in range(10):
        first = ct_dataset(study, number=1)
        first.SOPInstanceUID = generate_uid(prefix=ROOT_UID)
        second = ct_dataset(study, number=1)
        second.SeriesInstanceUID = first.SeriesInstanceUID
        second.SOPInstanceUID = first.SOPInstanceUID
        second.ImageComments = "corrected"
        outcomes = at_once(archives, [part10(first), part10(second)])
        assert all(o.stored and not o.duplicate for o in outcomes), [(o.status, o.reason) for o in outcomes]
        assert sorted(o.version or 0 for o in outcomes) == [1, 2]
        different.append(str(first.SOPInstanceUID))

    events = received(archives[0])
    for sop in same:  # one event for the one content, whichever node recorded it
        assert [(v, n) for (s, v), n in events.items() if s == sop] == [(1, 1)], sop
    for sop in different:  # one event per content
        assert sorted((v, n) for (s, v), n in events.items() if s == sop) == [(1, 1), (2, 1)], sop


def test_two_nodes_on_kafka_and_minio(on_servers: list[Archive]) -> None:
    same_object_to_both_nodes(on_servers)


def test_two_nodes_on_one_machine_sharing_the_embedded_log_and_blob_directory(embedded: list[Archive]) -> None:
    same_object_to_both_nodes(embedded)
