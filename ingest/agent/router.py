"""The agent's own Storage SCP: modalities and the local PACS forward studies to it (store and forward).

Every storage SOP class in every transfer syntax pynetdicom knows is accepted; of the syntaxes a peer
proposes, its first choice is taken (:func:`ingest.scp.follow_proposed_order`), so nothing is
transcoded on the way in. The data set is kept byte for byte behind a Part-10 header written as
CAMI's own Storage SCP writes it (:func:`ingest.dicom.part10`, with the sender's implementation class
UID), and the C-STORE is answered with success only once the queue has spooled and queued it durably
(:meth:`ingest.agent.model.Intake.accept` returned). Bad input gets a failure status with an
ErrorComment (0xC000 unreadable bytes, 0xA900 a data set that contradicts its request or that the
queue refuses), never a crash; only local storage trouble answers 0xA700 (the sender retries later).

A study sent to the emergency AE title is marked emergency. ``allowed_callers`` (AE titles), when
given, limits who may store; storage commitment reports are taken from any caller (they only
complete a transaction whose random UID the delivery is waiting for).

Storage Commitment, push model (PS3.4 Annex J): after the delivery's N-ACTION, CAMI reports with an
N-EVENT-REPORT on a *new* association to this SCP, proposing the SCP role for the Storage
Commitment SOP class. The router accepts that role selection, reads the TransactionUID, the
ReferencedSOPSequence and the FailedSOPSequence (with each FailureReason) into a
:class:`~ingest.agent.commitment.CommitmentReport`, hands it to the waiting delivery
(:meth:`~ingest.agent.commitment.CommitmentWaiter.report`) and answers status 0.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

from ingest.ae_titles import ae_title, called_ae_title
from ingest.agent.commitment import CommitmentReport, CommitmentWaiter
from ingest.agent.config import RouterConfig
from ingest.agent.model import Intake
from ingest.dicom import MalformedObject, part10, read_header, uid
from ingest.handlers import error_comment
from ingest.scp import MAX_PDU, _NoDelayServer, follow_proposed_order
from ingest.statuses import Status

log = logging.getLogger("cami.agent.router")

VERIFICATION = "1.2.840.10008.1.1"
STORAGE_COMMITMENT_PUSH = "1.2.840.10008.1.20.1"
#: event types of the commitment report (PS3.4 J.3.3): all committed / failures exist
COMMITMENT_EVENT_TYPES = (1, 2)
#: N-EVENT-REPORT statuses (PS3.7 10.1.1.1.8)
NO_SUCH_EVENT_TYPE = 0x0113
#: associations at once (pynetdicom's default is 10)
MAX_ASSOCIATIONS = 32
#: the source name the queue records for objects that came through the router
SOURCE = "router"


class RouterScp:
    """``start()`` listens (``port`` is then the one bound: ``config.port`` 0 picks a free one),
    ``stop()`` ends it; each association runs in its own thread."""

    def __init__(
        self,
        config: RouterConfig,
        queue: Intake,
        waiter: CommitmentWaiter,
        allowed_callers: set[str] | None = None,
    ) -> None:
        self.config = config
        self.queue = queue
        self.waiter = waiter
        self.allowed_callers = {c.strip() for c in allowed_callers} if allowed_callers is not None else None
        self.port = config.port
        self.ae = AE(ae_title=config.ae_title)
        self.ae.maximum_pdu_size = MAX_PDU
        # modalities, the PACS's C-MOVE sub-operations and CAMI's commitment reports at once
        self.ae.maximum_associations = MAX_ASSOCIATIONS
        # the emergency AE title is ours too: checked when the association is established
        self.ae.require_called_aet = False
        self.ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
        for context in AllStoragePresentationContexts:
            if context.abstract_syntax is not None:
                self.ae.add_supported_context(context.abstract_syntax, list(ALL_TRANSFER_SYNTAXES))
        # CAMI opens the report's association as the SCP of the SOP class: the router is then its SCU
        self.ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        self.handlers: list[Any] = [
            (evt.EVT_REQUESTED, follow_proposed_order),
            (evt.EVT_ESTABLISHED, self._check_called),
            (evt.EVT_C_ECHO, _handle_echo),
            (evt.EVT_C_STORE, self.handle_store),
            (evt.EVT_N_EVENT_REPORT, self.handle_event_report),
        ]
        self._server: _NoDelayServer | None = None
        self._lock = threading.Lock()

    @property
    def ae_titles(self) -> tuple[str, str]:
        return self.config.ae_title, self.config.emergency_ae_title

    def start(self) -> None:
        with self._lock:
            if self._server is not None:
                return
            server = cast(
                _NoDelayServer,
                self.ae.make_server(
                    (self.config.host, self.config.port), evt_handlers=self.handlers, server_class=_NoDelayServer
                ),
            )
            self.ae._servers.append(server)  # where AE.shutdown() finds it
            threading.Thread(target=server.serve_forever, name="cami-agent-router", daemon=True).start()
            self._server = server
            self.port = int(server.server_address[1])
        log.info("router listening on %s:%d as %s / %s", self.config.host, self.port, *self.ae_titles)

    def stop(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()  # closes the socket and unregisters it from the AE

    # -- handlers (each answers with a status, never raises into pynetdicom) ----------------------

    def _check_called(self, event: Any) -> None:
        called = called_ae_title(event.assoc)
        if called not in self.ae_titles:
            log.warning(
                "refusing association from %s@%s: called %r, not one of %s",
                ae_title(event.assoc.requestor.ae_title),
                event.assoc.requestor.address,
                called,
                "/".join(self.ae_titles),
            )
            event.assoc.abort()

    def handle_store(self, event: Any) -> Dataset:
        assoc = event.assoc
        calling = ae_title(assoc.requestor.ae_title)
        try:
            if self.allowed_callers is not None and calling not in self.allowed_callers:
                return _status(Status.NOT_AUTHORISED, f"calling AE title {calling!r} may not store here")
            emergency = called_ae_title(assoc) == self.config.emergency_ae_title
            return keep_stored(event, self.queue, source=SOURCE, calling_ae_title=calling, emergency=emergency)
        except Exception as exc:  # a bug must not become a success, nor end the association
            log.exception("C-STORE from %s failed", calling)
            return _status(Status.OUT_OF_RESOURCES, f"agent error, nothing kept: {type(exc).__name__}")

    def handle_event_report(self, event: Any) -> tuple[int, Dataset | None]:
        try:
            request = event.request
            if str(request.AffectedSOPClassUID or "") != STORAGE_COMMITMENT_PUSH:
                return int(Status.PROCESSING_FAILURE), None
            if event.event_type not in COMMITMENT_EVENT_TYPES:
                return NO_SUCH_EVENT_TYPE, None
            report = parse_commitment_report(event.event_information)
        except Exception as exc:  # undecodable Event Information, a missing TransactionUID...
            log.warning("refused storage commitment report from %s: %s", ae_title(event.assoc.requestor.ae_title), exc)
            return int(Status.INVALID_ARGUMENT_VALUE), None
        self.waiter.report(report)
        log.info(
            "storage commitment %s: %d committed, %d failed",
            report.transaction_uid,
            len(report.committed),
            len(report.failed),
        )
        return int(Status.SUCCESS), None


def keep_stored(event: Any, queue: Intake, *, source: str, calling_ae_title: str, emergency: bool) -> Dataset:
    """Hand a received C-STORE's data set, unchanged behind a Part-10 header, to the queue; the
    status to answer (success only once the queue accepted it). Also used by the poller's C-GET."""
    request = event.request
    dataset = request.DataSet.getvalue() if request.DataSet is not None else b""
    transfer_syntax = str(event.context.transfer_syntax)
    sop_class = str(request.AffectedSOPClassUID or "").strip()
    sop_instance = str(request.AffectedSOPInstanceUID or "").strip()
    if not sop_class or not sop_instance:
        return _status(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "C-STORE request lacks its SOP class/instance UID")
    try:
        header = read_header(dataset, transfer_syntax)
    except MalformedObject as exc:
        log.warning("refused %s from %s: %s", sop_instance, calling_ae_title, exc)
        return _status(Status.CANNOT_UNDERSTAND, f"unreadable data set: {exc}")
    # the Part-10 header names the request's UIDs: the data set must say the same
    for keyword, expected in (("SOPInstanceUID", sop_instance), ("SOPClassUID", sop_class)):
        found = uid(header, keyword)
        if found != expected:
            return _status(
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, f"data set {keyword} {found!r} differs from the request's"
            )
    # the sender's implementation (the peer: the requestor, or the acceptor in C-GET sub-operations)
    peer = event.assoc.acceptor if event.assoc.is_requestor else event.assoc.requestor
    wrapped = part10(
        dataset,
        sop_class,
        sop_instance,
        transfer_syntax,
        ae_title(peer.implementation_class_uid) or None,
        ae_title(peer.implementation_version_name) or None,
    ).part10
    try:
        queue.accept(wrapped, source=source, calling_ae_title=calling_ae_title, emergency=emergency)
    except MalformedObject as exc:
        log.warning("refused %s from %s: %s", sop_instance, calling_ae_title, exc)
        return _status(Status.CANNOT_UNDERSTAND, str(exc))
    except ValueError as exc:
        log.warning("refused %s from %s: %s", sop_instance, calling_ae_title, exc)
        return _status(Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, str(exc) or "refused by the agent's queue")
    return _status(Status.SUCCESS)


def parse_commitment_report(info: Dataset) -> CommitmentReport:
    """The Event Information of a commitment report (PS3.4 Table J.3-2); ValueError when unusable."""
    transaction_uid = str(info.get("TransactionUID", "") or "").strip()
    if not transaction_uid:
        raise ValueError("no TransactionUID")
    committed: list[tuple[str, str]] = []
    for item in info.get("ReferencedSOPSequence", None) or []:
        committed.append(_reference(item))
    failed: list[tuple[str, str, int]] = []
    for item in info.get("FailedSOPSequence", None) or []:
        sop_class, sop_instance = _reference(item)
        reason = item.get("FailureReason", None)
        failed.append((sop_class, sop_instance, int(reason) if reason is not None else int(Status.PROCESSING_FAILURE)))
    return CommitmentReport(transaction_uid, tuple(committed), tuple(failed))


def _reference(item: Dataset) -> tuple[str, str]:
    sop_class = str(item.get("ReferencedSOPClassUID", "") or "").strip()
    sop_instance = str(item.get("ReferencedSOPInstanceUID", "") or "").strip()
    if not sop_instance:
        raise ValueError("a referenced SOP item lacks its SOP instance UID")
    return sop_class, sop_instance


def _handle_echo(event: Any) -> int:
    return int(Status.SUCCESS)


def _status(status: Status, comment: str = "") -> Dataset:
    response = Dataset()
    response.Status = int(status)
    if comment:
        response.ErrorComment = error_comment(comment)
    return response
