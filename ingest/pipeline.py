"""The write path, one object at a time, for every channel (C-STORE, STOW-RS, import).

    check the bytes -> apply the regional rules -> blob (durable) -> event (durable) -> "stored"

The sender hears success only after both the blob and the InstanceReceived event are durable.
If either backend fails, the answer is "out of resources" and nothing was acknowledged; a retry
is harmless: identical bytes under the same SOPInstanceUID are recognised (no second event),
different bytes become a new version and nothing is ever deleted. Only the organisation holding an
instance may version it, and never under another patient, study or series (:meth:`Ingestor._conflict`).

Several ingest nodes: each version is claimed in the store the nodes share before its event is
appended (:mod:`ingest.instance_claims`), so the same bytes arriving at two nodes at once are
recorded once and two different objects never both become version N.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from ingest.dicom import DEFAULT_MAX_INFLATED_BYTES, MalformedObject, Received, parse, part10, split_part10
from ingest.instance_claims import TAKEOVER_SECONDS, ClaimError, InstanceClaims, holder_gone
from ingest.sop_index import HeldInstance, SopIndex
from ingest.statuses import Status
from ingest.study_claims import StudyClaims
from ingest.validation import Inspection, Refusal, inspect
from schemas.codec import MAX_EVENT_BYTES, CodecError, encode
from schemas.events import SYSTEM, Actor, Event, new_event
from schemas.uids import is_uid
from streams import EventLog, EventLogError
from streams.blobs import BlobRef, BlobStore, BlobStoreError
from streams.publisher import publish, publish_encoded

log = logging.getLogger("cami.ingest")

#: how long an arrival waits for another node's event of the same bytes before asking for a retry
CLAIM_WAIT_SECONDS = 10.0


@dataclass(frozen=True)
class Arrival:
    """Who sent an object, how, and with which marks."""

    channel: str  # dicom, stow-rs, import
    source_node: str  # calling AE title, host or "import"
    organisation: str | None = None
    calling_ae_title: str | None = None
    called_ae_title: str | None = None
    peer_address: str | None = None
    actor: Actor = SYSTEM
    #: marks from the request or configuration; they add to marks in the object itself
    pathology: bool = False
    emergency: bool = False
    correlation_id: str | None = None
    #: accepted in pilot mode although the caller is not in the senders file
    unknown_sender: bool = False
    #: the sender's software as its association request announced it (for the Part-10 header)
    implementation_class_uid: str | None = None
    implementation_version_name: str | None = None


@dataclass(frozen=True)
class Outcome:
    status: Status
    comment: str | None = None
    reason: str | None = None
    offending: tuple[int, ...] = ()
    sop_instance_uid: str | None = None
    sop_class_uid: str | None = None
    study_instance_uid: str | None = None
    blob: BlobRef | None = None
    event: Event | None = None
    #: the same bytes were already held under this SOPInstanceUID (no new event)
    duplicate: bool = False
    version: int | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def stored(self) -> bool:
        return self.status in (Status.SUCCESS, Status.WARNING_COERCED)


class Refused(Exception):
    """The object is refused before anything is written; ``inspection`` when the rules ran."""

    def __init__(self, refusal: Refusal, inspection: Inspection | None = None) -> None:
        super().__init__(refusal.comment)
        self.refusal = refusal
        self.inspection = inspection


@dataclass(frozen=True)
class Recorded:
    """An object's InstanceReceived event as version 1, with its encoded bytes."""

    event: Event
    encoded: bytes


@dataclass(frozen=True)
class Examined:
    """An object that passed every check: it can be stored and its event written."""

    received: Received
    header: Dataset
    inspection: Inspection
    first_version: Recorded


def _malformed(exc: MalformedObject) -> Refused:
    return Refused(Refusal("malformed", Status.CANNOT_UNDERSTAND, str(exc)))


def _inspect(header: Dataset, sop_class_uid: str | None, sop_instance_uid: str | None) -> Inspection:
    try:
        inspection = inspect(header, request_sop_class_uid=sop_class_uid, request_sop_instance_uid=sop_instance_uid)
    except Exception as exc:
        # a value the rules cannot read (an attribute under a foreign VR, a hostile encoding):
        # the object is bad, not the archive; refusing stops a sender's endless retries
        log.warning("inspection failed: %r", exc)
        raise Refused(
            Refusal("undecodable", Status.CANNOT_UNDERSTAND, f"an attribute does not decode ({type(exc).__name__})")
        ) from None
    if inspection.refusal is not None:
        raise Refused(inspection.refusal, inspection)
    return inspection


def _check_event(received: Received, inspection: Inspection, arrival: Arrival, store_name: str) -> Recorded:
    """Build and encode the InstanceReceived event the object would get, before any blob is
    written: a value the event cannot hold is a refusal now, not an orphan blob and a retry.
    Built as version 1 (a new instance, the common case): :meth:`Ingestor._store` appends it as it is
    when that holds, and builds another only for a new version."""
    blob = BlobRef(received.sha256, len(received.part10))
    try:
        event = instance_received_event(
            inspection.attributes, inspection, arrival, blob, 1, received.transfer_syntax, store_name
        )
        encoded = encode(event)
    except CodecError as exc:
        # the codec's message may quote the value (patient data): the comment names no value
        log.debug("InstanceReceived would not encode: %s", exc)
        raise Refused(
            Refusal(
                "unrecordable",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "a value does not fit the archive's records (InstanceReceived event schema)",
            ),
            inspection,
        ) from None
    if len(encoded) > MAX_EVENT_BYTES:
        raise Refused(
            Refusal("unrecordable", Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "attribute values too long to record"),
            inspection,
        )
    return Recorded(event, encoded)


def examine_dataset(
    dataset: bytes,
    transfer_syntax: str,
    arrival: Arrival,
    *,
    sop_class_uid: str | None = None,
    sop_instance_uid: str | None = None,
    store_name: str = "",
    max_inflated: int = DEFAULT_MAX_INFLATED_BYTES,
) -> Examined:
    """Every check a data set received by C-STORE must pass; raises :class:`Refused`."""
    try:
        header = parse(dataset, transfer_syntax, max_inflated)
    except MalformedObject as exc:
        raise _malformed(exc) from None
    inspection = _inspect(header, sop_class_uid, sop_instance_uid)
    attrs = inspection.attributes
    received = part10(
        dataset,
        attrs["SOPClassUID"],
        attrs["SOPInstanceUID"],
        transfer_syntax,
        arrival.implementation_class_uid,
        arrival.implementation_version_name,
    )
    return Examined(received, header, inspection, _check_event(received, inspection, arrival, store_name))


def examine_file(
    data: bytes,
    arrival: Arrival,
    *,
    store_name: str = "",
    meta_must_match: bool = True,
    max_inflated: int = DEFAULT_MAX_INFLATED_BYTES,
) -> Examined:
    """Every check a Part-10 file (import, STOW-RS) must pass; raises :class:`Refused`.

    ``meta_must_match=False`` (import of media): a file meta naming another SOP instance or class
    than the data set is kept as received. Files on media written by other systems often carry a
    stale meta (an anonymiser changed the data set and left the meta behind); the data set is what
    the archive indexes and sends, and refusing those files would lose valid studies. A client
    building a STOW-RS request now has no such excuse: there the meta must match."""
    try:
        received = split_part10(data)
        header = parse(data[received.dataset_offset :], received.transfer_syntax, max_inflated)
    except MalformedObject as exc:
        raise _malformed(exc) from None
    inspection = _inspect(header, None, None)
    attrs = inspection.attributes
    # the file meta must describe this data set (PS3.10 7.1), not another one
    for meta, keyword, tag in (
        (received.media_sop_instance_uid, "SOPInstanceUID", 0x00020003),
        (received.media_sop_class_uid, "SOPClassUID", 0x00020002),
    ):
        if meta_must_match and meta is not None and meta != attrs[keyword]:
            raise Refused(
                Refusal(
                    "meta-mismatch",
                    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"file meta {tag >> 16:04X},{tag & 0xFFFF:04X} contradicts the data set's {keyword}",
                    (tag,),
                ),
                inspection,
            )
    return Examined(received, header, inspection, _check_event(received, inspection, arrival, store_name))


class Ingestor:
    def __init__(
        self,
        blobs: BlobStore,
        event_log: EventLog,
        sop_index: SopIndex,
        store_name: str | None = None,
        refresh_index: Callable[[], None] | None = None,
        document_hooks: Sequence[Callable[[Dataset, Outcome, Arrival], list[Event]]] = (),
        max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
        on_outcome: Callable[[str, str, str, float], None] | None = None,
        claims: InstanceClaims | None = None,
        node: str | None = None,
    ):
        self.blobs = blobs
        self.event_log = event_log
        self.sop_index = sop_index
        self.store_name = store_name or blobs.backend
        #: reads the log into the SOP index (events this node could not confirm may still be there)
        self.refresh_index = refresh_index
        #: called after a new (non-duplicate) store; their events are published (e.g. SR -> report)
        self.document_hooks = tuple(document_hooks)
        #: how far a deflated data set may inflate before it is refused (a deflate bomb)
        self.max_inflated_bytes = max_inflated_bytes
        #: SOPInstanceUIDs whose event append failed ambiguously (the log may hold it anyway)
        self._uncertain: set[str] = set()
        #: outcomes since start, by kind ("stored", "duplicate", or the refusal reason)
        self.counts: Counter[str] = Counter()
        #: told (channel, outcome, rejection reason, seconds) of every object (the archive's metrics)
        self.on_outcome = on_outcome
        self._study_claims = StudyClaims()
        #: claims on instance versions shared with the other ingest nodes (None: this node is alone)
        self.claims = claims
        #: this process, as its claims name it (a restarted node is another node: its old claims age out)
        self.node = node or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- entry points --------------------------------------------------------------------------
    def _counted(self, outcome: Outcome, arrival: Arrival, started: float) -> Outcome:
        kind = "duplicate" if outcome.duplicate else "stored" if outcome.stored else "rejected"
        reason = (outcome.reason or "?") if kind == "rejected" else ""
        self.counts[reason or kind] += 1
        if self.on_outcome is not None:
            self.on_outcome(arrival.channel, kind, reason, time.perf_counter() - started)
        return outcome

    def store_dataset(
        self,
        dataset: bytes,
        transfer_syntax: str,
        arrival: Arrival,
        *,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> Outcome:
        """A data set as received by C-STORE (no file meta), in ``transfer_syntax``."""
        started = time.perf_counter()
        try:
            checked = examine_dataset(
                dataset,
                transfer_syntax,
                arrival,
                sop_class_uid=sop_class_uid,
                sop_instance_uid=sop_instance_uid,
                store_name=self.store_name,
                max_inflated=self.max_inflated_bytes,
            )
        except Refused as refused:
            return self._counted(
                self.refuse(refused.refusal, arrival, dataset, sop_class_uid, sop_instance_uid, refused.inspection),
                arrival,
                started,
            )
        return self._counted(self._store(checked, arrival), arrival, started)

    def store_file(self, data: bytes, arrival: Arrival, *, meta_must_match: bool = True) -> Outcome:
        """A Part-10 file (import, STOW-RS), kept exactly as received (see :func:`examine_file`)."""
        started = time.perf_counter()
        try:
            checked = examine_file(
                data,
                arrival,
                store_name=self.store_name,
                meta_must_match=meta_must_match,
                max_inflated=self.max_inflated_bytes,
            )
        except Refused as refused:
            return self._counted(
                self.refuse(refused.refusal, arrival, data, None, None, refused.inspection), arrival, started
            )
        return self._counted(self._store(checked, arrival), arrival, started)

    # -- the write path ------------------------------------------------------------------------
    @contextmanager
    def _instance_lock(self, sop_instance_uid: str) -> Iterator[None]:
        """Serialise concurrent arrivals of one SOPInstanceUID (two associations, same object)."""
        with self._locks_guard:
            lock = self._locks.setdefault(sop_instance_uid, threading.Lock())
        with lock:
            yield
        with self._locks_guard:
            if not lock.locked():
                self._locks.pop(sop_instance_uid, None)

    def _store(self, checked: Examined, arrival: Arrival) -> Outcome:
        received, inspection = checked.received, checked.inspection
        attrs = inspection.attributes
        uid = attrs["SOPInstanceUID"]
        base = {
            "sop_instance_uid": uid,
            "sop_class_uid": attrs["SOPClassUID"],
            "study_instance_uid": attrs["StudyInstanceUID"],
            "missing": inspection.missing,
        }
        digest = received.sha256
        # a claim on the study first: two new instances of one study under two patients must not
        # both pass the check (ingest.study_claims); always claim, then instance lock, so two
        # arrivals cannot deadlock
        with self._study_claims.claim(attrs["StudyInstanceUID"], attrs["PatientID"]), self._instance_lock(uid):
            if uid in self._uncertain and self.refresh_index is not None:
                # a broker that died after writing but before acknowledging leaves the event in
                # the log: learn it before deciding, so a re-send does not record it twice
                try:
                    pending = set(self._uncertain)
                    self.refresh_index()
                    self._uncertain -= pending  # the log has been read past all of them
                except Exception as exc:
                    log.error("cannot refresh the SOP index from the log: %s", exc)
                    return Outcome(
                        Status.OUT_OF_RESOURCES,
                        "archive event log unavailable, nothing recorded",
                        reason="log-unavailable",
                        **base,
                    )
            held = self.sop_index.versions(uid)
            same = next((version for version in held if version.sha256 == digest), None)
            if same is None:
                # decided before the blob is written: a refused conflict leaves nothing behind
                conflict = self._conflict(attrs, arrival, held)
                if conflict is not None:
                    return self.refuse(conflict, arrival, received.part10, inspection=inspection)
            try:
                blob = self.blobs.put(received.part10, known_sha256=digest, likely_new=same is None)
            except BlobStoreError as exc:
                log.error("blob store failed for %s: %s", uid, exc)
                refusal = Refusal(
                    "storage-unavailable",
                    Status.OUT_OF_RESOURCES,
                    "archive storage unavailable, nothing stored; please retry",
                )
                return self.refuse(refusal, arrival, received.part10, inspection=inspection)
            if same is not None:  # identical bytes, whoever sends them: nothing changes
                return Outcome(Status.SUCCESS, None, blob=blob, duplicate=True, version=same.version, **base)
            number = held[-1].version + 1 if held else 1
            if self.claims is not None:
                claimed = self._claim_version(uid, digest, number, blob, base)
                if isinstance(claimed, Outcome):
                    return claimed
                number = claimed
            if number == 1:
                event, encoded = checked.first_version.event, checked.first_version.encoded
            else:
                event = instance_received_event(
                    attrs, inspection, arrival, blob, number, received.transfer_syntax, self.store_name
                )
                encoded = encode(event)
            try:
                publish_encoded(self.event_log, event, encoded)
            except (EventLogError, TimeoutError) as exc:
                log.error("event log failed for %s: %s", uid, exc)
                # the broker may have written it before failing to acknowledge: check on re-send
                self._uncertain.add(uid)
                return Outcome(
                    Status.OUT_OF_RESOURCES,
                    f"archive event log unavailable, nothing recorded: {exc}",
                    reason="log-unavailable",
                    blob=blob,
                    **base,
                )
            if self.claims is not None:
                try:  # nodes waiting for the same bytes may answer now
                    self.claims.replace(uid, number, digest, self.node, recorded=True)
                except ClaimError as exc:  # they fall back to the log after their wait
                    log.error("cannot mark version %d of %s recorded: %s", number, uid, exc)
            self.sop_index.record(
                HeldInstance(
                    uid,
                    number,
                    blob.sha256,
                    attrs["SOPClassUID"],
                    attrs["StudyInstanceUID"],
                    attrs["SeriesInstanceUID"],
                    attrs["PatientID"],
                    arrival.organisation,
                )
            )
        outcome = Outcome(Status.SUCCESS, None, blob=blob, event=event, version=number, **base)
        self._run_document_hooks(checked.header, outcome, arrival)
        return outcome

    def _claim_version(self, uid: str, digest: str, number: int, blob: BlobRef, base: dict[str, Any]) -> int | Outcome:
        """The version this node records these bytes as (claimed in the store every node shares:
        :mod:`ingest.instance_claims`), or the answer when another node records them."""
        assert self.claims is not None
        deadline = time.monotonic() + CLAIM_WAIT_SECONDS
        while True:
            try:
                holder = self.claims.claim(uid, number, digest, self.node)
            except ClaimError as exc:
                log.error("cannot claim version %d of %s: %s", number, uid, exc)
                return Outcome(
                    Status.OUT_OF_RESOURCES,
                    "archive storage unavailable, nothing recorded; please retry",
                    reason="storage-unavailable",
                    blob=blob,
                    **base,
                )
            if holder is None or holder.node == self.node:  # ours (a failed append of ours: ours to finish)
                return number
            if holder.sha256 != digest:
                # another node records other bytes as this version: learn what it did, try the next one
                held = self._learn(uid)
                same = next((v for v in held if v.sha256 == digest), None)
                if same is not None:
                    return Outcome(Status.SUCCESS, None, blob=blob, duplicate=True, version=same.version, **base)
                number = max(number + 1, held[-1].version + 1 if held else 1)
                continue
            # the same bytes, being recorded through another node: wait until its event is durable
            # (the holder marks its claim), then they are held; no second event
            while holder is not None and not holder_gone(holder.node):
                if holder is not None and holder.sha256 == digest and holder.recorded:
                    return Outcome(Status.SUCCESS, None, blob=blob, duplicate=True, version=number, **base)
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.02)
                try:
                    holder = self.claims.read(uid, number)
                except ClaimError as exc:
                    log.error("cannot read the claim on version %d of %s: %s", number, uid, exc)
            if holder is None or holder.sha256 != digest:
                continue  # the claim changed meanwhile: decide again
            same = next((v for v in self._learn(uid) if v.sha256 == digest), None)
            if same is not None:  # recorded, the mark lost (its node stopped right after the append)
                return Outcome(Status.SUCCESS, None, blob=blob, duplicate=True, version=same.version, **base)
            if holder.age >= TAKEOVER_SECONDS or holder_gone(holder.node):  # never recorded: this node does
                try:
                    self.claims.replace(uid, number, digest, self.node, recorded=False)
                except ClaimError as exc:
                    log.error("cannot take over version %d of %s: %s", number, uid, exc)
                    continue
                return number
            return Outcome(
                Status.OUT_OF_RESOURCES,
                "the same object is being stored through another archive node; please retry",
                reason="claimed-elsewhere",
                blob=blob,
                **base,
            )

    def _learn(self, uid: str) -> list[HeldInstance]:
        """The versions of ``uid`` after reading what the other nodes recorded meanwhile."""
        if self.refresh_index is not None:
            try:
                self.refresh_index()
            except Exception as exc:  # the log is down: decide on what is known, the claim still guards
                log.error("cannot refresh the SOP index from the log: %s", exc)
        return list(self.sop_index.versions(uid))

    def _conflict(self, attrs: dict[str, Any], arrival: Arrival, held: Sequence[HeldInstance]) -> Refusal | None:
        """Why new bytes may not join what is held (None: they may). Viewers rely on the patient
        and the study of what they open: only the organisation that sent an instance may send a
        new version of it, and never under another study, series or patient. A patient's identity
        is corrected by PatientUpdated / PatientsMerged events, not by re-sending objects.
        The comments fit ErrorComment (LO, 64 characters): the sender knows which object it sent."""
        if held:
            # the first version is the record its owner sent; later ones share its identifiers
            original = held[0]
            if arrival.organisation != original.organisation:
                return Refusal(
                    "conflict-organisation",
                    Status.CONFLICTS_WITH_HELD,
                    "instance held for another organisation; kept unchanged",
                )
            if (attrs["StudyInstanceUID"], attrs["SeriesInstanceUID"]) != (
                original.study_instance_uid,
                original.series_instance_uid,
            ):
                return Refusal(
                    "conflict-study",
                    Status.CONFLICTS_WITH_HELD,
                    "instance held under another study or series; kept unchanged",
                )
        holder = self.sop_index.study(attrs["StudyInstanceUID"])
        if holder is not None and holder.patient_id != attrs["PatientID"]:
            return Refusal(
                "conflict-patient",
                Status.CONFLICTS_WITH_HELD,
                "study held under another PatientID; correct it by patient merge",
            )
        return None

    def _run_document_hooks(self, header: Dataset, outcome: Outcome, arrival: Arrival) -> None:
        """Derived events (a report from an SR...): failures are logged; the instance stays stored."""
        for hook in self.document_hooks:
            try:
                for derived in hook(header, outcome, arrival):
                    publish(self.event_log, derived)
            except Exception as exc:
                log.error("document hook %s failed for %s: %s", hook, outcome.sop_instance_uid, exc)

    def refuse(
        self,
        refusal: Refusal,
        arrival: Arrival,
        data: bytes,
        sop_class_uid: str | None = None,
        sop_instance_uid: str | None = None,
        inspection: Inspection | None = None,
    ) -> Outcome:
        """Answer the refusal; record it as an InstanceRejected event (best effort: the refusal
        stands regardless). Nothing is parsed or stored. Also for refusals a protocol adapter
        decides before the pipeline runs (a sender rule, a STOW URL naming another study)."""
        attrs = inspection.attributes if inspection else {}
        payload: dict[str, Any] = {
            "reason": refusal.reason,
            "status": int(refusal.status),
            "error_comment": refusal.comment,
            "StudyInstanceUID": _uid_or_none(attrs.get("StudyInstanceUID")),
            "SeriesInstanceUID": _uid_or_none(attrs.get("SeriesInstanceUID")),
            "SOPInstanceUID": _uid_or_none(attrs.get("SOPInstanceUID") or sop_instance_uid),
            "SOPClassUID": _uid_or_none(attrs.get("SOPClassUID") or sop_class_uid),
            "PatientID": attrs.get("PatientID"),
            "received_bytes": len(data),
            "received_sha256": hashlib.sha256(data).hexdigest(),
            "channel": arrival.channel,
            "calling_ae_title": arrival.calling_ae_title,
            "called_ae_title": arrival.called_ae_title,
            "peer_address": arrival.peer_address,
        }
        aggregate = str(payload["StudyInstanceUID"] or arrival.organisation or arrival.source_node)
        rejection = new_event(
            "InstanceRejected",
            payload,
            aggregate_id=aggregate,
            source_node=arrival.source_node,
            organisation=arrival.organisation,
            actor=arrival.actor,
            correlation_id=arrival.correlation_id,
        )
        event: Event | None = rejection
        try:
            publish(self.event_log, rejection)
        except (EventLogError, TimeoutError) as exc:
            log.error("could not record rejection (%s): %s", refusal.reason, exc)
            event = None
        return Outcome(
            refusal.status,
            refusal.comment,
            reason=refusal.reason,
            offending=refusal.offending,
            sop_instance_uid=_uid_or_none(attrs.get("SOPInstanceUID") or sop_instance_uid),
            sop_class_uid=_uid_or_none(attrs.get("SOPClassUID") or sop_class_uid),
            study_instance_uid=_uid_or_none(attrs.get("StudyInstanceUID")),
            event=event,
        )


def _uid_or_none(value: str | None) -> str | None:
    """Only well-formed UIDs go into events: a hostile value is described, not repeated."""
    return value if value and is_uid(value) else None


def instance_received_event(
    attrs: dict[str, Any],
    inspection: Inspection,
    arrival: Arrival,
    blob: BlobRef,
    version: int,
    transfer_syntax: str,
    store_name: str,
) -> Event:
    """The InstanceReceived event of a stored object (validated against its schema here)."""
    missing = list(inspection.missing)
    if arrival.unknown_sender:
        missing.append("KnownSender")
    payload = {
        **attrs,
        "TransferSyntaxUID": transfer_syntax,
        "blob": {"sha256": blob.sha256, "size": blob.size, "store": store_name},
        "version": version,
        "pathology": inspection.pathology or arrival.pathology,
        "emergency": inspection.emergency or arrival.emergency,
        "missing": missing,
        "channel": arrival.channel,
        "calling_ae_title": arrival.calling_ae_title,
        "called_ae_title": arrival.called_ae_title,
        "peer_address": arrival.peer_address,
    }
    return new_event(
        "InstanceReceived",
        payload,
        aggregate_id=attrs["StudyInstanceUID"],
        source_node=arrival.source_node,
        organisation=arrival.organisation,
        actor=arrival.actor,
        correlation_id=arrival.correlation_id,
    )
