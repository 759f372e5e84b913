"""DICOM service handlers for the Storage SCP: plain functions, dependencies as arguments.

Every handler answers with a DICOM status (never raises to pynetdicom): a refused object gets a
specific failure status with an ErrorComment and, where one element is at fault, the
OffendingElement; storage trouble is "out of resources" so the sender retries later.
"""

from __future__ import annotations

import logging
from typing import Any

from pydicom.dataset import Dataset

from ingest.ae_titles import ae_title, called_ae_title
from ingest.pipeline import Arrival, Ingestor, Outcome
from ingest.senders import Senders
from ingest.statuses import Status
from ingest.validation import Refusal
from schemas.events import Actor, new_event
from streams import EventLog, EventLogError
from streams.publisher import publish

log = logging.getLogger("cami.scp")


def handle_echo(event: Any) -> int:
    return int(Status.SUCCESS)


def arrival_for(event: Any, senders: Senders) -> Arrival:
    assoc = event.assoc
    calling = ae_title(assoc.requestor.ae_title)
    called = called_ae_title(assoc)
    sender = senders.lookup(calling)
    return Arrival(
        channel="dicom",
        source_node=calling,
        organisation=sender.organisation if sender else None,
        calling_ae_title=calling,
        called_ae_title=called,
        peer_address=assoc.requestor.address,
        actor=Actor(calling, "modality"),
        pathology=bool(sender and sender.pathology),
        emergency=bool(senders.emergency_ae_title and called == senders.emergency_ae_title),
        correlation_id=f"assoc-{id(assoc):x}",
        unknown_sender=sender is None,
        implementation_class_uid=ae_title(assoc.requestor.implementation_class_uid) or None,
        implementation_version_name=ae_title(assoc.requestor.implementation_version_name) or None,
    )


#: ErrorComment (0000,0902) is LO: 64 characters at most, no backslash, no control characters
ERROR_COMMENT_LENGTH = 64


def error_comment(comment: str) -> str:
    """``comment`` as an ErrorComment: LO-safe, and when too long, cut at the end of a clause
    or a word so the sender reads words, not a fragment (the full text is in the rejection event)."""
    flat = " ".join(comment.replace("\\", "/").split())
    flat = "".join(ch if " " <= ch <= "~" else "?" for ch in flat)
    if len(flat) <= ERROR_COMMENT_LENGTH:
        return flat
    head = flat[: ERROR_COMMENT_LENGTH + 1]
    cut = max(head.rfind(separator) for separator in (": ", "; ", ", ", " (", " - "))
    if cut >= 16:
        return flat[:cut]
    cut = head.rfind(" ")
    return (flat[:cut] if cut > 0 else flat[:ERROR_COMMENT_LENGTH]).rstrip(" ,;:(")


def status_dataset(outcome: Outcome) -> Dataset:
    response = Dataset()
    response.Status = int(outcome.status)
    if outcome.comment:
        response.ErrorComment = error_comment(outcome.comment)
    if outcome.offending:
        response.OffendingElement = list(outcome.offending)
    return response


def handle_store(event: Any, ingestor: Ingestor, senders: Senders) -> Dataset:
    may, reason = senders.may_store(ae_title(event.assoc.requestor.ae_title), event.assoc.requestor.address)
    if not may:  # a Q/R caller that is not a sender, or a sender calling from an address not its own
        return status_dataset(refuse_store(event, ingestor, senders, reason))
    try:
        arrival = arrival_for(event, senders)
        request = event.request
        dataset = request.DataSet.getvalue() if request.DataSet is not None else b""
        outcome = ingestor.store_dataset(
            dataset,
            str(event.context.transfer_syntax),
            arrival,
            sop_class_uid=str(request.AffectedSOPClassUID) if request.AffectedSOPClassUID else None,
            sop_instance_uid=str(request.AffectedSOPInstanceUID) if request.AffectedSOPInstanceUID else None,
        )
    except Exception as exc:  # a bug must not turn into a success, nor kill the association
        log.exception("C-STORE handler failed")
        outcome = Outcome(Status.OUT_OF_RESOURCES, f"internal error, nothing stored: {type(exc).__name__}")
    if not outcome.stored:
        log.warning(
            "refused %s from %s: %s",
            outcome.sop_instance_uid,
            ae_title(event.assoc.requestor.ae_title),
            outcome.comment,
        )
    return status_dataset(outcome)


#: why a caller the association let in may not store (see :meth:`ingest.senders.Senders.may_store`)
STORE_REFUSALS = {
    "not-a-sender": "calling AE title may query/retrieve, not store",
    "address-not-allowed": "calling AE title may not store from this address",
}


def refuse_store(event: Any, ingestor: Ingestor, senders: Senders, reason: str) -> Outcome:
    """Refuse a C-STORE the caller's sender rule does not allow (0x0124), recorded as an
    InstanceRejected event like any other refusal: the association may still be fine for Q/R."""
    request = event.request
    try:
        dataset = request.DataSet.getvalue() if request.DataSet is not None else b""
        refusal = Refusal(reason, Status.NOT_AUTHORISED, STORE_REFUSALS.get(reason, "calling AE title may not store"))
        return ingestor.refuse(  # the ingestor records refusals; nothing is parsed or stored
            refusal,
            arrival_for(event, senders),
            dataset,
            str(request.AffectedSOPClassUID) if request.AffectedSOPClassUID else None,
            str(request.AffectedSOPInstanceUID) if request.AffectedSOPInstanceUID else None,
        )
    except Exception:  # the refusal stands even if it could not be recorded
        log.exception("could not record a refused C-STORE")
        return Outcome(Status.NOT_AUTHORISED, STORE_REFUSALS.get(reason, "calling AE title may not store"))


def record_association_rejected(
    event_log: EventLog, reason: str, calling: str, called: str | None, address: str | None, port: int | None
) -> None:
    rejection = new_event(
        "AssociationRejected",
        {
            "reason": reason,
            "calling_ae_title": calling or "?",
            "called_ae_title": called,
            "peer_address": address,
            "peer_port": port,
        },
        aggregate_id=calling or "?",
        source_node=calling or "?",
        actor=Actor(calling or "?", "modality"),
    )
    try:
        publish(event_log, rejection)
    except EventLogError as exc:
        log.error("could not record association rejection: %s", exc)


def handle_rejected(event: Any, senders: Senders, event_log: EventLog) -> None:
    """pynetdicom refused the association (A-ASSOCIATE-RJ); record who and why."""
    assoc = event.assoc
    calling = ae_title(assoc.requestor.ae_title)
    reason = "unknown-caller" if calling not in senders.known_ae_titles else "association-rejected"
    log.warning("rejected association from %s@%s: %s", calling, assoc.requestor.address, reason)
    record_association_rejected(
        event_log, reason, calling, called_ae_title(assoc) or None, assoc.requestor.address, assoc.requestor.port
    )


def handle_established(event: Any, senders: Senders, event_log: EventLog) -> None:
    """Refuse callers from an address none of their roles allows, or calling a wrong AE title
    (unknown AE titles never get this far: the association is rejected outright, see
    :func:`handle_rejected`). Each service then checks its own role's addresses: C-STORE in
    :func:`handle_store`, Query/Retrieve in ``api.dicom.qr``."""
    assoc = event.assoc
    calling = ae_title(assoc.requestor.ae_title)
    called = called_ae_title(assoc)
    allowed, reason = senders.allowed(calling, assoc.requestor.address)
    if allowed and called not in {senders.ae_title, senders.emergency_ae_title}:
        allowed, reason = False, "wrong-called-ae-title"
    if not allowed:
        log.warning("refusing association from %s@%s to %s: %s", calling, assoc.requestor.address, called, reason)
        record_association_rejected(event_log, reason, calling, called, assoc.requestor.address, assoc.requestor.port)
        assoc.abort()
