"""Storage Commitment, push model (PS3.4 Annex J): "does the archive hold these objects durably?"

The requester sends N-ACTION (action type 1) with a transaction UID and the SOP instances it
wants committed. The archive answers the N-ACTION at once; once that answer has gone out, it
checks each instance (known in the SOP index with that SOP class, and its blob present in the
blob store) and reports the result with N-EVENT-REPORT (event type 1: all committed, 2: failures
exist) on a **new association** to the requester, calling the requester's AE title and proposing
the SCP role for the Storage Commitment SOP class (SCP/SCU role selection, as Annex J asks of a
report sent on an association the SCP opens). The requester's address comes from the senders
file (``host``/``port``); without one, the address the request came from and the default port.

This is what Orthanc (1.6+) expects as a requester: it keeps a "pending" report for the
transaction, sends the N-ACTION on an association of its own and releases it as soon as the
N-ACTION response arrives, then waits for the N-EVENT-REPORT on its DICOM port (it accepts the
Storage Commitment context there with both roles). It takes the report from an AE title it knows
as a modality (``DicomModalities``), answers it with status 0, and lists the instances under
``Success`` / ``Failures`` of ``GET /storage-commitment/{transaction UID}``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dimse_messages import N_ACTION_RSP

from ingest.senders import Senders
from ingest.sop_index import SopIndex
from ingest.statuses import Status
from schemas.uids import is_uid
from streams.blobs import BlobStore, BlobStoreError

log = logging.getLogger("cami.commitment")

STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
#: the well-known SOP instance of the Storage Commitment Push Model
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
#: action type of "Request Storage Commitment" (PS3.4 J.3.2)
REQUEST_STORAGE_COMMITMENT = 1
#: event types of the report (PS3.4 J.3.3)
EVENT_ALL_COMMITTED = 1
EVENT_FAILURES_EXIST = 2
#: FailureReason values (PS3.3 C.14.1.1)
PROCESSING_FAILURE = 0x0110
NO_SUCH_OBJECT_INSTANCE = 0x0112
REFERENCED_SOP_CLASS_NOT_SUPPORTED = 0x0122
CLASS_INSTANCE_CONFLICT = 0x0119
#: N-ACTION failure status: the request names another SOP instance than the well-known one (PS3.7 10.1.4)
INVALID_OBJECT_INSTANCE = 0x0117

#: how many delivered (or given up) reports are kept for status pages and tests
REPORTS_KEPT = 1000
#: how long the report waits for the N-ACTION response to leave before it goes anyway
RESPONSE_SENT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CommitmentResult:
    transaction_uid: str
    committed: list[tuple[str, str]]
    failed: list[tuple[str, str, int]]

    @property
    def event_type(self) -> int:
        return EVENT_ALL_COMMITTED if not self.failed else EVENT_FAILURES_EXIST

    def report(self) -> Dataset:
        """The N-EVENT-REPORT's Event Information (PS3.4 Table J.3-2)."""
        ds = Dataset()
        ds.TransactionUID = self.transaction_uid
        # required for event type 1 (even when the request listed nothing), 1C for type 2
        if self.committed or not self.failed:
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
    def __init__(
        self,
        sop_index: SopIndex,
        blobs: BlobStore,
        senders: Senders,
        *,
        default_port: int = 104,
        attempts: int = 3,
        retry_delay: float = 1.0,
        refresh_index: Callable[[], None] | None = None,
    ):
        self.sop_index = sop_index
        #: reads the log into the SOP index: an instance stored through another ingest node is in the
        #: log (its sender was told "stored" only after that) but maybe not yet in this node's index
        self.refresh_index = refresh_index
        self.blobs = blobs
        self.senders = senders
        self.default_port = default_port
        self.attempts = attempts
        self.retry_delay = retry_delay
        #: the last reports (transaction UID -> result, the requester's N-EVENT-REPORT status or None
        #: when it could not be delivered), oldest first, for status pages and tests
        self.reports: OrderedDict[str, tuple[CommitmentResult, int | None]] = OrderedDict()
        self._reports_lock = threading.Lock()
        self._reported = threading.Condition(self._reports_lock)

    def check(self, transaction_uid: str, references: list[tuple[str, str]]) -> CommitmentResult:
        committed: list[tuple[str, str]] = []
        failed: list[tuple[str, str, int]] = []
        if self.refresh_index is not None and any(
            is_uid(sop_instance) and self.sop_index.latest(sop_instance) is None for _, sop_instance in references
        ):
            # whichever node the requester asks: catch up with the log once before saying "no such object"
            try:
                self.refresh_index()
            except Exception as exc:  # the log unreachable: answer from what this node knows
                log.warning(
                    "storage commitment %s: the SOP index could not catch up with the log: %s", transaction_uid, exc
                )
        for sop_class, sop_instance in references:
            if not (is_uid(sop_class) and is_uid(sop_instance)):
                failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
                continue
            held = self.sop_index.latest(sop_instance)
            if held is None:
                failed.append((sop_class, sop_instance, NO_SUCH_OBJECT_INSTANCE))
            elif held.sop_class_uid != sop_class:
                failed.append((sop_class, sop_instance, CLASS_INSTANCE_CONFLICT))
            else:
                try:
                    durable = self.blobs.exists(held.sha256)
                except BlobStoreError as exc:
                    log.warning("storage commitment: blob store unavailable for %s: %s", sop_instance, exc)
                    durable = False
                if durable:
                    committed.append((sop_class, sop_instance))
                else:
                    failed.append((sop_class, sop_instance, PROCESSING_FAILURE))
        return CommitmentResult(transaction_uid, committed, failed)

    def send_report(
        self, result: CommitmentResult, requester_ae: str, address: str, attempts: int | None = None
    ) -> int | None:
        """Deliver the N-EVENT-REPORT on a new association; returns the requester's status, or None
        if it could not be delivered after ``attempts`` tries."""
        attempts = self.attempts if attempts is None else attempts
        sender = self.senders.lookup(requester_ae)
        host = (sender.host if sender and sender.host else None) or address
        port = (sender.port if sender and sender.port else None) or self.default_port
        ae = AE(ae_title=self.senders.ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
        role = build_role(STORAGE_COMMITMENT_PUSH, scp_role=True)
        code: int | None = None
        for attempt in range(1, attempts + 1):
            try:
                code = self._deliver(ae, role, result, requester_ae, host, port)
            except Exception as exc:  # a broken peer must not kill the reporting thread silently
                log.warning("storage commitment report to %s@%s:%s: %s", requester_ae, host, port, exc)
                code = None
            if code is not None:
                break
            log.warning("storage commitment report to %s@%s:%s failed (attempt %d)", requester_ae, host, port, attempt)
            if attempt < attempts:
                time.sleep(self.retry_delay * attempt)
        self._remember(result, code)
        log.info(
            "storage commitment %s to %s: %d committed, %d failed, report %s",
            result.transaction_uid,
            requester_ae,
            len(result.committed),
            len(result.failed),
            "not delivered" if code is None else f"status 0x{code:04X}",
        )
        return code

    def _deliver(
        self, ae: AE, role: Any, result: CommitmentResult, requester_ae: str, host: str, port: int
    ) -> int | None:
        assoc = ae.associate(host, port, ae_title=requester_ae, ext_neg=[role])
        if not assoc.is_established:
            return None
        try:
            status, _ = assoc.send_n_event_report(
                result.report(), result.event_type, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
            )
        finally:
            if assoc.is_established:
                assoc.release()
        if status is None or "Status" not in status:
            return None  # no answer (timeout, abort): try again
        return int(status.Status)

    def _remember(self, result: CommitmentResult, code: int | None) -> None:
        with self._reported:
            self.reports[result.transaction_uid] = (result, code)
            self.reports.move_to_end(result.transaction_uid)
            while len(self.reports) > REPORTS_KEPT:
                self.reports.popitem(last=False)
            self._reported.notify_all()

    def wait_report(self, transaction_uid: str, timeout: float) -> tuple[CommitmentResult, int | None] | None:
        """Block until the report of ``transaction_uid`` was delivered or given up (None on timeout)."""
        with self._reported:
            self._reported.wait_for(lambda: transaction_uid in self.reports, timeout)
            return self.reports.get(transaction_uid)


def _parse_request(info: Dataset) -> tuple[str, list[tuple[str, str]]] | str:
    """(transaction UID, references) from the Action Information, or why it is unusable."""
    transaction_uid = str(info.get("TransactionUID", "") or "").strip()
    if not is_uid(transaction_uid):
        return "missing or invalid TransactionUID"
    references = []
    for item in info.get("ReferencedSOPSequence", None) or []:
        sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
        sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
        if not sop_class or not sop_instance:
            return "a Referenced SOP Sequence item lacks its SOP class or instance UID"
        references.append((sop_class, sop_instance))
    return transaction_uid, references


def handle_n_action(event: Any, commitment: StorageCommitment) -> tuple[int, Dataset | None]:
    """N-ACTION handler: accept the request, report asynchronously after the response is sent."""
    request = event.request
    if request.RequestedSOPClassUID != STORAGE_COMMITMENT_PUSH:
        return int(Status.PROCESSING_FAILURE), None
    if request.RequestedSOPInstanceUID != STORAGE_COMMITMENT_INSTANCE:
        return INVALID_OBJECT_INSTANCE, None
    if event.action_type != REQUEST_STORAGE_COMMITMENT:
        return int(Status.NO_SUCH_ACTION), None
    try:
        parsed = _parse_request(event.action_information)
    except Exception as exc:  # undecodable Action Information
        parsed = f"undecodable request ({type(exc).__name__})"
    if isinstance(parsed, str):
        log.warning("refused storage commitment request: %s", parsed)
        return int(Status.INVALID_ARGUMENT_VALUE), None
    transaction_uid, references = parsed
    assoc = event.assoc
    requester = str(assoc.requestor.ae_title).strip()
    address = assoc.requestor.address

    # The report must not overtake this N-ACTION's response: wait until pynetdicom has sent it.
    answered = threading.Event()
    message_id = request.MessageID

    def on_sent(sent: Any) -> None:
        message = sent.message
        if isinstance(message, N_ACTION_RSP) and message.command_set.MessageIDBeingRespondedTo == message_id:
            answered.set()

    assoc.bind(evt.EVT_DIMSE_SENT, on_sent)

    def report() -> None:
        if not answered.wait(RESPONSE_SENT_TIMEOUT_S):
            log.warning("storage commitment %s: response not seen leaving; reporting anyway", transaction_uid)
        assoc.unbind(evt.EVT_DIMSE_SENT, on_sent)
        result = commitment.check(transaction_uid, references)
        commitment.send_report(result, requester, address)

    threading.Thread(target=report, name=f"cami-commitment-{transaction_uid[-8:]}", daemon=True).start()
    log.info("storage commitment %s requested by %s for %d instances", transaction_uid, requester, len(references))
    return int(Status.SUCCESS), None
