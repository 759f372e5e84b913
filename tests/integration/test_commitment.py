"""Storage commitment against a pynetdicom requester: the failure and edge cases Orthanc cannot
produce on demand (a blob gone missing, malformed requests, an unreachable requester).

The requester is a real pynetdicom AE on loopback: it sends N-ACTION to CAMI's Storage SCP and
runs its own small SCP that accepts the N-EVENT-REPORT on a new association, as Annex J has it.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, build_role, evt

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.demo.synthetic import part10_bytes, region, synthetic_study
from ingest.commitment import (
    CLASS_INSTANCE_CONFLICT,
    EVENT_ALL_COMMITTED,
    EVENT_FAILURES_EXIST,
    NO_SUCH_OBJECT_INSTANCE,
    PROCESSING_FAILURE,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    StorageCommitment,
)
from ingest.pipeline import Arrival
from ingest.scp import StorageSCP
from ingest.statuses import Status
from tests.support.servers import free_port

REQUESTER = "MODALITY_CT1"


@dataclass
class Rig:
    archive: Archive
    scp: StorageSCP
    commitment: StorageCommitment
    reports: queue.Queue[tuple[int, Dataset]]
    references: list[tuple[str, str]]
    home: Path


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[Rig]:
    report_port = free_port()
    home = tmp_path / "cami"
    home.mkdir()
    (home / "senders.toml").write_text(
        f'[archive]\nae_title = "CAMI"\n\n[[sender]]\nae_title = "{REQUESTER}"\norganisation = "{region()[0].code}"\n'
        f'host = "127.0.0.1"\nport = {report_port}\n',
        encoding="utf-8",
    )
    archive = bootstrap(
        Settings(
            home=home,
            event_log_url=f"sqlite://{home}/events.db",
            blob_store_url=f"file://{home}/blobs",
            warehouse_url=f"chdb://{home}/clickhouse",
        )
    )
    study = synthetic_study(region()[0], "CT", instances=3, seed=77)
    for ds in study.instances:
        outcome = archive.ingestor.store_file(part10_bytes(ds), Arrival("import", "test"))
        assert outcome.stored, outcome
    senders = archive.senders()
    commitment = StorageCommitment(archive.sop_index, archive.blobs, senders, attempts=2, retry_delay=0.1)
    scp = StorageSCP(archive.ingestor, senders, archive.event_log, port=free_port(), commitment=commitment)
    scp.start()

    # the requester's own SCP, where the N-EVENT-REPORT arrives
    reports: queue.Queue[tuple[int, Dataset]] = queue.Queue()

    def on_report(event: Any) -> tuple[int, Dataset | None]:
        reports.put((int(event.event_type), event.event_information))
        return 0x0000, None

    listener = AE(ae_title=REQUESTER)
    listener.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
    server = listener.start_server(
        ("127.0.0.1", report_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        yield Rig(
            archive,
            scp,
            commitment,
            reports,
            [(str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in study.instances],
            home,
        )
    finally:
        if server is not None:
            server.shutdown()
        scp.stop()
        archive.close()


def n_action(rig: Rig, info: Dataset, action_type: int = 1) -> int:
    """Send one N-ACTION as the requester; returns CAMI's status."""
    ae = AE(ae_title=REQUESTER)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
    assoc = ae.associate(
        "127.0.0.1", rig.scp.port, ae_title="CAMI", ext_neg=[build_role(STORAGE_COMMITMENT_PUSH, scu_role=True)]
    )
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(info, action_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
    finally:
        assoc.release()
    return int(status.Status)


def request(transaction_uid: str | None, references: list[tuple[str, str]]) -> Dataset:
    info = Dataset()
    if transaction_uid is not None:
        info.TransactionUID = transaction_uid
    items = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        items.append(item)
    info.ReferencedSOPSequence = items
    return info


def test_all_held_is_event_type_1_on_a_new_association(rig: Rig) -> None:
    transaction = generate_uid()
    assert n_action(rig, request(transaction, rig.references)) == Status.SUCCESS
    event_type, info = rig.reports.get(timeout=30)
    assert event_type == EVENT_ALL_COMMITTED
    assert info.TransactionUID == transaction
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID) for i in info.ReferencedSOPSequence] == rig.references
    assert "FailedSOPSequence" not in info
    delivered = rig.commitment.wait_report(transaction, timeout=30)
    assert delivered is not None
    result, status = delivered
    assert status == 0 and len(result.committed) == 3


def test_each_failure_has_its_reason(rig: Rig) -> None:
    (ct, held), (_, conflicting), (_, lost) = rig.references
    digest = rig.archive.sop_index.latest(lost)
    assert digest is not None
    [blob] = [p for p in (rig.home / "blobs").rglob(digest.sha256) if p.is_file()]
    blob.unlink()  # the blob vanished behind the archive's back: not durable, cannot be committed
    unknown = generate_uid()
    mr = "1.2.840.10008.5.1.4.1.1.4"
    transaction = generate_uid()
    asked = [(ct, held), (mr, conflicting), (ct, lost), (ct, unknown)]
    assert n_action(rig, request(transaction, asked)) == Status.SUCCESS
    event_type, info = rig.reports.get(timeout=30)
    assert event_type == EVENT_FAILURES_EXIST
    assert [i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence] == [held]
    reasons = {i.ReferencedSOPInstanceUID: i.FailureReason for i in info.FailedSOPSequence}
    assert reasons == {conflicting: CLASS_INSTANCE_CONFLICT, lost: PROCESSING_FAILURE, unknown: NO_SUCH_OBJECT_INSTANCE}


def test_malformed_requests_are_refused_without_a_report(rig: Rig) -> None:
    assert n_action(rig, request(None, rig.references)) == Status.INVALID_ARGUMENT_VALUE
    assert n_action(rig, request("not-a-uid", rig.references)) == Status.INVALID_ARGUMENT_VALUE
    assert n_action(rig, request(generate_uid(), [("", rig.references[0][1])])) == Status.INVALID_ARGUMENT_VALUE
    assert n_action(rig, request(generate_uid(), rig.references), action_type=2) == Status.NO_SUCH_ACTION
    with pytest.raises(queue.Empty):
        rig.reports.get(timeout=2)
    # and the service still works afterwards
    transaction = generate_uid()
    assert n_action(rig, request(transaction, rig.references[:1])) == Status.SUCCESS
    assert rig.reports.get(timeout=30)[1].TransactionUID == transaction


def test_unreachable_requester_is_recorded_as_undelivered(rig: Rig) -> None:
    result = rig.commitment.check(generate_uid(), rig.references)
    assert result.event_type == EVENT_ALL_COMMITTED
    assert rig.commitment.send_report(result, "NOBODY", "127.0.0.1") is None  # default port 104: nobody there
    assert rig.commitment.reports[result.transaction_uid] == (result, None)
