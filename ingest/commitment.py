"""Storage Commitment, push model (PS3.4 Annex J): "does the archive hold these objects durably?"

The requester sends N-ACTION (action type 1) with a transaction UID and the SOP instances it
wants committed. The archive answers the N-ACTION at once, checks each instance (known in the
SOP index with that SOP class, and its blob present in the blob store), and then reports the
result with N-EVENT-REPORT (event type 1: all committed, 2: failures exist) on a new
association to the requester, proposing the SCP role for the Storage Commitment SOP class as
Annex J asks. The requester's address comes from the senders file (``host``/``port``); without
one, the address the request came from and the configured port are used.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role

from ingest.blobs import BlobStore, BlobStoreError
from ingest.senders import Senders
from ingest.sop_index import SopIndex
from ingest.statuses import Status

log = logging.getLogger("cami.commitment")

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
#: the well-known SOP instance of the Storage Commitment Push Model
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: FailureReason values (PS3.3 C.14.1.1)
NO_SUCH_OBJECT_INSTANCE = 0x0112
CLASS_INSTANCE_CONFLICT = 0x0119
PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class CommitmentResult:
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]

    @property
    def event_type(self) -> int:
        return 1 if not self.failed else 2

    def report(self) -> Dataset:
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        if self.committed:
            ds.ReferencedSOPSequence = [_reference(c, i) for c, i in self.committed]
        if self.failed:
            failed = []
            for sop_class, sop_instance, reason in self.failed:
                item = _reference(sop_class, sop_instance)
                item.FailureReason = reason
                failed.append(item)
            ds.FailedSOPSequence = failed
        return ds


def _reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


class StorageCommitment:
    def __init__(self, sop_index: SopIndex, blobs: BlobStore, senders: Senders, *, default_port: int = 104):
        self.sop_index = sop_index
        self.blobs = blobs
        self.senders = senders
        self.default_port = default_port
        #: the last reports sent (transaction UID -> result), for status pages and tests
        self.reports: dict[str, tuple[CommitmentResult, int | None]] = {}

    def check(self, transaction_uid: str, references: list[tuple[str, str]]) -> CommitmentResult:
        committed: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        for sop_class, sop_instance in references:
            held = self.sop_index.latest(sop_instance)
            if held is None:
                failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
            elif held.sop_class_uid != sop_class:
                failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
            else:
                try:
                    durable = self.blobs.exists(held.sha256)
                except BlobStoreError:
                    durable = False
                if durable:
                    committed.append((sop_class, sop_instance))
                else:
                    failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
        return CommitmentResult(transaction_uid, committed, failed)

    def send_report(self, result: CommitmentResult, requester_ae: str, address: str, attempts: int = 3) -> int | None:
        """Deliver the N-EVENT-REPORT; returns the requester's status, or None if undeliverable."""
        sender = self.senders.lookup(requester_ae)
        host = (sender.host if sender and sender.host else None) or address
        port = (sender.port if sender and sender.port else None) or self.default_port
        ae = AE(ae_title=self.senders.ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
        role = build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)
        for attempt in range(1, attempts + 1):
            assoc = ae.associate(host, port, ae_title=requester_ae, ext_neg=[role])
            if assoc.is_established:
                try:
                    status, _ = assoc.send_n_event_report(
                        result.report(), result.event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
                    )
                finally:
                    assoc.release()
                code = int(status.Status) if status is not None and "Status" in status else None
                self.reports[result.transaction_uid] = (result, code)
                log.info(
                    "storage commitment %s reported to %s: %d committed, %d failed (status %s)",
                    result.transaction_uid,
                    requester_ae,
                    len(result.committed),
                    len(result.failed),
                    code,
                )
                return code
            log.warning("storage commitment report to %s@%s:%s failed (attempt %d)", requester_ae, host, port, attempt)
            time.sleep(attempt)
        self.reports[result.transaction_uid] = (result, None)
        return None


def handle_n_action(event: Any, commitment: StorageCommitment) -> tuple[int, Dataset | None]:
    """N-ACTION handler: accept the request, report asynchronously after the response is sent."""
    if event.request.RequestedSOPClassUID != STORAGE_COMMITMENT_PUSH:
        return int(Status.PROCESSING_FAILURE), None
    if event.action_type != 1:
        return int(Status.NO_SUCH_ACTION), None
    try:
        info = event.action_information
        transaction_uid = str(info.TransactionUID)
        references = [
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in info.get("ReferencedSOPSequence", [])
        ]
    except Exception as exc:
        log.warning("malformed storage commitment request: %s", exc)
        return int(Status.INVALID_ARGUMENT_VALUE), None
    requester = str(event.assoc.requestor.ae_title).strip()
    address = event.assoc.requestor.address

    def report() -> None:
        result = commitment.check(transaction_uid, references)
        commitment.send_report(result, requester, address)

    # the report goes out on its own association, after this N-ACTION has been answered
    threading.Thread(target=report, name=f"cami-commitment-{transaction_uid[-8:]}", daemon=True).start()
    return int(Status.SUCCESS), None
