"""DICOM Query/Retrieve SCP on the Storage SCP's AE title and port (C-FIND, C-MOVE, C-GET).

The archive answers Query/Retrieve where it receives images, as Orthanc and dcm4chee do: the
Patient Root and Study Root information models, FIND, MOVE and GET. :func:`qr_services` builds
the presentation contexts and handlers; :meth:`api.bootstrap.Archive.storage_scp` passes them to
:class:`ingest.scp.StorageSCP` (ingest never imports the api).

**Who may ask.** Calling AE titles listed as ``[[qr_caller]]`` in the senders file (see
:mod:`ingest.senders`), each with an organisation and a role, from one of the caller's
``addresses`` when it lists some (a ``[[sender]]`` entry for the same AE title never widens
them); the role is checked as for a web user (:mod:`api.access`): C-FIND needs a patient-data
role, C-MOVE and C-GET an image role (so an auditor's station queries but does not retrieve).
An AE title the archive does not know at all is rejected at association (A-ASSOCIATE-RJ, as for
storage); when that association proposed Q/R, a RecordAccessed event with ``outcome =
"denied"`` records the attempt. A known AE title that may not use the service asked for (a
modality that only sends, an auditor moving, a caller from an address not its own) gets 0x0124
"Refused: Not Authorised", also recorded as denied.

**One access event per request**, durable before any data leaves: C-FIND records through
:func:`api.dicom.find.c_find_responses` (an identifier it refuses, which it does not record, is
recorded here as denied); C-MOVE and C-GET record here once the identifier is resolved (channel
``c-move``/``c-get``, action ``move``/``get``, the study when exactly one is retrieved, the
number of instances as ``results``; a refused request -- unknown destination, bad identifier,
not authorised -- as ``denied`` with no results). If the event log cannot take the event,
nothing is sent (C-FIND 0xA700, C-MOVE/C-GET 0xA702).

**What is retrieved.** Levels PATIENT (patient root only: the patient's studies, merges
followed), STUDY (one or a list of StudyInstanceUIDs), SERIES and IMAGE (hierarchical: the
unique keys of the levels above are required). Each instance is sent in its newest version,
as the original bytes from the blob store: the data set is offered in the transfer syntax it was
stored in, and an uncompressed one (implicit/explicit VR, deflated) also in explicit VR little
endian. Whenever the peer takes the stored syntax, the stored data set bytes go out unchanged
(:class:`StoredObject`: group-length elements, undefined lengths and a deflated stream
included), never re-encoded by pydicom. Only an uncompressed object the peer takes solely in
another uncompressed syntax is converted, and only if pydicom writes it back byte for byte in its
own syntax (else a failed sub-operation rather than an altered object). Compressed objects are
never transcoded: a peer that accepts none of their syntax gets a failed sub-operation for them.

**C-MOVE destinations** are AE titles the senders file names (``[[destination]]``, else a
``[[qr_caller]]`` or ``[[sender]]`` with ``host`` and ``port``); anything else is 0xA801. The
archive opens the sub-operation association calling the destination's AE title, proposing one
context per (SOP class, offered transfer syntax), so the exact stored syntax is used whenever the
destination takes it. **C-GET** sends over the requesting association: the peer proposes the
storage contexts with SCP/SCU role selection, the archive accepts the roles and, among the
syntaxes of one proposed context, the peer's first choice it supports (see :mod:`ingest.scp`):
a peer that proposes the stored syntax first gets the object as stored.

pynetdicom asks a C-MOVE handler for the destination first and a C-MOVE/C-GET handler for the
number of sub-operations before any status; a request refused after that point (not authorised,
a bad identifier) is answered as one failed "sub-operation" with the refusal as the final status,
nothing sent (for C-MOVE the destination association is opened and released unused).

Statuses: 0xFF00 pending, 0x0000 success, 0xB000 some sub-operations failed, 0xA702 none
succeeded or storage trouble, 0xA701 more than 65535 instances, 0xA801 unknown destination,
0xA900 an identifier that does not fit the model (level, missing unique keys), 0x0124 not
authorised, 0xFE00 cancelled.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, tzinfo
from enum import IntEnum
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import _config as pynetdicom_config
from pynetdicom import build_context, evt

from api.access import AccessRecorder, Reader
from api.dicom.find import MODEL_LEVELS, c_find_responses
from api.dicom.pending import PENDING_CODES, PendingResponses
from api.dicom.stored import install_stored_encoding, move_contexts, stored_dataset
from api.dicom.worklist import MODALITY_WORKLIST_FIND, handle_worklist_find
from ingest.ae_titles import ae_title
from ingest.scp import ExtraServices
from ingest.senders import Senders
from projections.archive_index.views import MAX_LIMIT, series_instances, study_series
from projections.query_model.find import search_studies
from projections.query_model.store import QueryStore
from projections.warehouse.base import Warehouse
from schemas.events import Actor
from schemas.policy import Action, may
from streams.blobs import BlobStore
from streams.log import EventLog

log = logging.getLogger("cami.qr")

PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"

#: abstract syntax -> (information model, service)
QR_SOP_CLASSES: dict[str, tuple[str, str]] = {
    PATIENT_ROOT_FIND: ("patient", "find"),
    PATIENT_ROOT_MOVE: ("patient", "move"),
    PATIENT_ROOT_GET: ("patient", "get"),
    STUDY_ROOT_FIND: ("study", "find"),
    STUDY_ROOT_MOVE: ("study", "move"),
    STUDY_ROOT_GET: ("study", "get"),
}

#: service -> (access channel, access action)
ACCESS: dict[str, tuple[str, str]] = {"find": ("c-find", "query"), "move": ("c-move", "move"), "get": ("c-get", "get")}


VERIFICATION = "1.2.840.10008.1.1"
#: transfer syntaxes for Q/R identifiers (never a pixel data compression)
IDENTIFIER_SYNTAXES = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
]

#: Number of ... Sub-operations are US: a retrieve may not name more instances than this
MAX_SUBOPERATIONS = 65535


class QrStatus(IntEnum):
    SUCCESS = 0x0000
    PENDING = 0xFF00
    CANCEL = 0xFE00
    #: general status (PS3.7 C.5): the calling AE title may not use this service
    NOT_AUTHORISED = 0x0124
    #: C-FIND: out of resources (the event log or the index is not available)
    OUT_OF_RESOURCES = 0xA700
    #: C-MOVE/C-GET: too many instances to count in one retrieve
    TOO_MANY_MATCHES = 0xA701
    #: C-MOVE/C-GET: unable to perform sub-operations (storage or event log trouble)
    UNABLE_TO_PERFORM_SUBOPERATIONS = 0xA702
    MOVE_DESTINATION_UNKNOWN = 0xA801
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900


class IdentifierError(ValueError):
    """The request identifier does not fit the information model (level, unique keys)."""


def status(code: QrStatus, comment: str | None = None) -> Dataset:
    ds = Dataset()
    ds.Status = int(code)
    if comment:
        ds.ErrorComment = comment[:64]  # LO
    return ds


# -- who is asking ------------------------------------------------------------------------------------
def reader_for(assoc: Any, senders: Senders) -> Reader | None:
    """The Q/R caller behind an association as the access event records it (None: not one, or
    not from one of its addresses: a sender's addresses never let its AE title query)."""
    calling = ae_title(assoc.requestor.ae_title)
    caller = senders.may_query(calling, assoc.requestor.address)
    if caller is None:
        return None
    return Reader(Actor(calling, caller.role), caller.organisation, assoc.requestor.address)


def _refused_reader(assoc: Any, senders: Senders) -> Reader:
    """Who was refused, as the denied access event records it."""
    calling = ae_title(assoc.requestor.ae_title)
    caller, sender = senders.qr_caller(calling), senders.lookup(calling)
    if caller is not None:  # a Q/R caller from an address not its own
        return Reader(Actor(calling, caller.role), caller.organisation, assoc.requestor.address)
    role = "modality" if sender is not None else "unknown"
    return Reader(Actor(calling or "?", role), sender.organisation if sender else None, assoc.requestor.address)


def _permitted(reader: Reader, service: str) -> bool:
    return may(reader.role, Action.READ_PATIENT_DATA if service == "find" else Action.READ_IMAGES)


# -- resolving a retrieve identifier --------------------------------------------------------------------
def _values(identifier: Dataset, keyword: str) -> list[str]:
    value = identifier.get(keyword)
    if value is None or value == "":
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    return [str(v).strip() for v in items if str(v).strip()]


def _one(identifier: Dataset, keyword: str, level: str) -> str:
    values = _values(identifier, keyword)
    if len(values) != 1:
        raise IdentifierError(f"{level} level needs exactly one {keyword}")
    return values[0]


def retrieve_level(identifier: Dataset, model: str) -> str:
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in MODEL_LEVELS[model]:
        raise IdentifierError(f"QueryRetrieveLevel must be one of {'/'.join(MODEL_LEVELS[model])}")
    return level


def resolve_instances(warehouse: Warehouse, store: QueryStore, identifier: Dataset, model: str) -> list[dict[str, Any]]:
    """The instances (newest versions, index rows) a C-MOVE/C-GET identifier names (a patient's
    studies from the query store, their series and instances from the archive index)."""
    level = retrieve_level(identifier, model)
    if level == "PATIENT":
        patient_id = _one(identifier, "PatientID", level)
        if "*" in patient_id or "?" in patient_id:
            raise IdentifierError("PatientID is a unique key here: no wildcards")
        study_uids = [s["study_uid"] for s in search_studies(store, patient_id=patient_id, limit=MAX_LIMIT)]
    else:
        study_uids = _values(identifier, "StudyInstanceUID")
        if not study_uids:
            raise IdentifierError(f"{level} level needs StudyInstanceUID")
    if level in ("PATIENT", "STUDY"):
        wanted = [(study, s["series_uid"]) for study in study_uids for s in study_series(warehouse, study)]
        sops: set[str] | None = None
    else:
        if len(study_uids) != 1:
            raise IdentifierError(f"{level} level needs exactly one StudyInstanceUID")
        if level == "SERIES":
            series = _values(identifier, "SeriesInstanceUID")
            if not series:
                raise IdentifierError("SERIES level needs SeriesInstanceUID")
            sops = None
        else:
            series = [_one(identifier, "SeriesInstanceUID", level)]
            sops = set(_values(identifier, "SOPInstanceUID"))
            if not sops:
                raise IdentifierError("IMAGE level needs SOPInstanceUID")
        wanted = [(study_uids[0], s) for s in series]
    rows: list[dict[str, Any]] = []
    for study, series_uid in wanted:
        rows.extend(r for r in series_instances(warehouse, study, series_uid) if sops is None or r["sop_uid"] in sops)
    return rows


def _only(values: list[str]) -> str | None:
    return values[0] if len(values) == 1 else None


def _access_fields(identifier: Dataset, level: str | None, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What the RecordAccessed event names: the single study/series/instance/patient retrieved."""

    def single(key: str) -> str | None:
        found = {str(r[key]) for r in rows}
        return found.pop() if len(found) == 1 else None

    query = {k: "\\".join(_values(identifier, k)) for k in _RETRIEVE_KEYS if _values(identifier, k)}
    if level:
        query["QueryRetrieveLevel"] = level
    return {
        "study_uid": single("study_uid") or _only(_values(identifier, "StudyInstanceUID")),
        "series_uid": single("series_uid") if level in ("SERIES", "IMAGE") else None,
        "sop_uid": single("sop_uid") if level == "IMAGE" else None,
        "patient_id": single("patient_id") or _only(_values(identifier, "PatientID")),
        "query": query,
    }


_RETRIEVE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


# -- handlers -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class QrDeps:
    """What the Q/R handlers need, and nothing more: the archive index (opened on first use:
    the embedded warehouse locks its directory), the blob store, the access recorder and the
    senders file as loaded once when the services were built."""

    warehouse: Callable[[], Warehouse]
    #: the query store C-FIND reads (opened on first use too)
    store: Callable[[], QueryStore]
    blobs: BlobStore
    recorder: AccessRecorder
    senders: Senders
    #: the region's time zone (worklist dates and times are local)
    zone: tzinfo = UTC


def _deny(
    deps: QrDeps, event: Any, service: str, identifier: Dataset | None, extra_query: dict[str, str] | None = None
) -> None:
    channel, action = ACCESS[service]
    reader = reader_for(event.assoc, deps.senders) or _refused_reader(event.assoc, deps.senders)
    fields: dict[str, Any] = _access_fields(identifier, None, []) if identifier is not None else {"query": {}}
    fields["query"] |= extra_query or {}
    try:
        deps.recorder.record(reader, action=action, channel=channel, outcome="denied", **fields)
    except Exception:
        log.exception("could not record a refused %s", channel)


def _identifier(event: Any) -> Dataset | None:
    try:
        identifier = event.identifier
        identifier.get("QueryRetrieveLevel")  # decodes lazily: fail here, not later
        return identifier if isinstance(identifier, Dataset) else None
    except Exception:
        return None


def handle_find(event: Any, deps: QrDeps) -> Iterator[tuple[Any, Dataset | None]]:
    """EVT_C_FIND: matching is :func:`api.dicom.find.c_find_responses` (it records the access);
    a worklist query goes to :func:`api.dicom.worklist.handle_worklist_find` (one C-FIND handler
    per AE: pynetdicom binds one)."""
    if str(event.request.AffectedSOPClassUID) == MODALITY_WORKLIST_FIND:
        yield from handle_worklist_find(event, deps.warehouse, deps.recorder, deps.senders, deps.zone)
        return
    model, service = QR_SOP_CLASSES[str(event.request.AffectedSOPClassUID)]
    identifier = _identifier(event)
    reader = reader_for(event.assoc, deps.senders)
    if reader is None or not _permitted(reader, service):
        _deny(deps, event, service, identifier)
        yield status(QrStatus.NOT_AUTHORISED, "calling AE title may not query this archive"), None
        return
    if identifier is None:
        yield status(QrStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier does not decode"), None
        return
    try:
        first = True
        syntax = str(event.context.transfer_syntax)
        answers = c_find_responses(
            deps.store(), deps.recorder, reader, identifier, model, deps.senders.ae_title, syntax
        )
        pending = PendingResponses(event)
        for code, match in answers:
            if event.is_cancelled:
                yield QrStatus.CANCEL, None
                return
            if first and int(code) not in (QrStatus.PENDING, QrStatus.SUCCESS):
                _deny(deps, event, service, identifier)  # a refused identifier: qr_find recorded nothing
            first = False
            if match is not None and isinstance(code, int) and code in PENDING_CODES and pending.send(code, match):
                continue  # sent as one PDU (api/dicom/pending.py)
            yield code, match
    except Exception as exc:  # an answer is owed: the index or the event log is not available
        log.exception("C-FIND failed")
        yield status(QrStatus.OUT_OF_RESOURCES, f"query failed: {type(exc).__name__}"), None


@dataclass
class _Plan:
    """A retrieve worked out before anything is sent: the rows, or the failure to answer."""

    rows: list[dict[str, Any]]
    failure: Dataset | None = None


def _plan(event: Any, deps: QrDeps, service: str, model: str, extra_query: dict[str, str]) -> _Plan:
    """Check the caller, resolve the identifier and record the ONE access event of the request."""
    identifier = _identifier(event)
    reader = reader_for(event.assoc, deps.senders)
    if reader is None or not _permitted(reader, service):
        _deny(deps, event, service, identifier)
        return _Plan([], status(QrStatus.NOT_AUTHORISED, "calling AE title may not retrieve from this archive"))
    channel, action = ACCESS[service]
    if identifier is None:
        deps.recorder.record(reader, action=action, channel=channel, query=extra_query, outcome="denied")
        return _Plan([], status(QrStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "identifier does not decode"))
    try:
        level = retrieve_level(identifier, model)
        rows = resolve_instances(deps.warehouse(), deps.store(), identifier, model)
    except IdentifierError as exc:
        fields = _access_fields(identifier, None, [])
        fields["query"] |= extra_query
        deps.recorder.record(reader, action=action, channel=channel, outcome="denied", **fields)
        return _Plan([], status(QrStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc)))
    fields = _access_fields(identifier, level, rows)
    fields["query"] |= extra_query
    if len(rows) > MAX_SUBOPERATIONS:
        deps.recorder.record(reader, action=action, channel=channel, outcome="denied", **fields)
        return _Plan([], status(QrStatus.TOO_MANY_MATCHES, f"more than {MAX_SUBOPERATIONS} instances"))
    deps.recorder.record(reader, action=action, channel=channel, results=len(rows), **fields)
    return _Plan(rows)


def _sub_operations(event: Any, blobs: BlobStore, rows: list[dict[str, Any]]) -> Iterator[tuple[Any, Dataset | None]]:
    for row in rows:
        if event.is_cancelled:
            yield QrStatus.CANCEL, None
            return
        yield QrStatus.PENDING, stored_dataset(blobs, row)


def _safe_plan(event: Any, deps: QrDeps, service: str, model: str, extra: dict[str, str]) -> _Plan:
    try:
        return _plan(event, deps, service, model, extra)
    except Exception as exc:  # the index or the event log failed: nothing may be sent untraced
        log.exception("C-%s failed before sending", service.upper())
        return _Plan([], status(QrStatus.UNABLE_TO_PERFORM_SUBOPERATIONS, f"retrieve failed: {type(exc).__name__}"))


def handle_move(event: Any, deps: QrDeps) -> Iterator[Any]:
    """EVT_C_MOVE: destination, number of sub-operations, then one pending dataset per instance.

    pynetdicom takes the destination first and answers a failure only from the status loop,
    after it has associated with the destination: a refusal (not authorised, a bad identifier)
    is therefore answered as the one "sub-operation" status, with no object sent."""
    model, service = QR_SOP_CLASSES[str(event.request.AffectedSOPClassUID)]
    move_destination = ae_title(event.move_destination)
    extra = {"MoveDestination": move_destination}
    destination = deps.senders.destination(move_destination)
    if destination is None:
        log.warning("C-MOVE to unknown destination %r refused", move_destination)
        _deny(deps, event, service, _identifier(event), extra)
        yield None, None  # 0xA801 Move Destination Unknown
        return
    plan = _safe_plan(event, deps, service, model, extra)
    if plan.failure is not None:
        yield destination.host, destination.port, {"contexts": [build_context(VERIFICATION)]}
        yield 1
        yield plan.failure, None
        return
    yield destination.host, destination.port, {"contexts": move_contexts(plan.rows)}
    yield len(plan.rows)
    yield from _sub_operations(event, deps.blobs, plan.rows)


def handle_get(event: Any, deps: QrDeps) -> Iterator[Any]:
    """EVT_C_GET: number of sub-operations, then one pending dataset per instance, sent back
    over the requesting association (the peer's storage contexts, SCP role)."""
    model, service = QR_SOP_CLASSES[str(event.request.AffectedSOPClassUID)]
    plan = _safe_plan(event, deps, service, model, {})
    if plan.failure is not None:
        yield 1
        yield plan.failure, None
        return
    yield len(plan.rows)
    yield from _sub_operations(event, deps.blobs, plan.rows)


def handle_rejected(event: Any, deps: QrDeps) -> None:
    """An association refused at A-ASSOCIATE (unknown calling AE title) that proposed Q/R: the
    attempt to read is recorded as a denied access (the storage side records the rejection)."""
    assoc = event.assoc
    if ae_title(assoc.requestor.ae_title) in deps.senders.known_ae_titles:
        return
    proposed = {str(cx.abstract_syntax) for cx in getattr(assoc.requestor, "requested_contexts", []) or []}
    services = {QR_SOP_CLASSES[uid][1] for uid in proposed if uid in QR_SOP_CLASSES}
    for service in ("get", "move", "find"):  # one event: the most revealing service asked for
        if service in services:
            channel, action = ACCESS[service]
            try:
                deps.recorder.record(
                    _refused_reader(assoc, deps.senders),
                    action=action,
                    channel=channel,
                    query={"reason": "unknown calling AE title"},
                    outcome="denied",
                )
            except Exception:
                log.exception("could not record a refused Q/R association")
            return


_PENDING = (0xFF00, 0xFF01)
Handler = Callable[[Any, QrDeps], Iterator[Any]]


def _status_code(code: Any) -> int | None:
    if isinstance(code, Dataset):
        return int(code.Status) if "Status" in code else None
    return int(code) if isinstance(code, int) else None


def counted(handler: Handler, channel: str, on_read: Callable[[str, str], None]) -> Handler:
    """``handler`` telling ``on_read(channel, status)`` once per request: the final status it
    answered (4 hex digits), ``0000`` for a C-FIND whose matches all went out, ``completed`` for
    a retrieve whose sub-operations all ran (their own outcomes go into the final status
    pynetdicom builds), ``aborted`` when the association ended first."""

    def answer(event: Any, deps: QrDeps) -> Iterator[Any]:
        told = False
        try:
            for item in handler(event, deps):
                if isinstance(item, tuple) and len(item) == 2:
                    code = _status_code(item[0]) if item[0] is not None else 0xA801  # destination unknown
                    if code is not None and code not in _PENDING and not told:
                        # counted before pynetdicom sends it: the peer may have the answer before
                        # this generator is resumed to its end
                        on_read(channel, f"{code:04X}")
                        told = True
                yield item
            if not told:  # no final status of its own: pynetdicom answers success after this end
                on_read(channel, "0000" if channel == "c-find" else "completed")
                told = True
        finally:
            if not told:
                on_read(channel, "aborted")

    return answer


def qr_services(
    warehouse: Callable[[], Warehouse],
    store: Callable[[], QueryStore],
    blobs: BlobStore,
    event_log: EventLog,
    senders: Senders,
    recorder: AccessRecorder | None = None,
    on_read: Callable[[str, str], None] | None = None,
    zone: tzinfo = UTC,
) -> ExtraServices:
    """Query/Retrieve as extra services of the Storage SCP (see :class:`ingest.scp.ExtraServices`);
    ``on_read(channel, status)`` is told of every request (the archive's metrics)."""
    recorder = recorder or AccessRecorder(event_log, socket.gethostname() or "local")
    install_stored_encoding()
    # identifiers hold patient data: never formatted for the debug log (pynetdicom formats each one
    # it sends or receives whether or not the log takes it, a large share of a C-FIND's cost)
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom's standard handlers format every PDU and DIMSE message sent or received, logged
    # or not (a C-FIND pays it twice per match); kept only when CAMI runs verbose (``cami -v``)
    if not logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    deps = QrDeps(warehouse, store, blobs, recorder, senders, zone)
    find: Handler = handle_find
    move: Handler = handle_move
    get: Handler = handle_get
    if on_read is not None:
        find, move, get = (
            counted(find, "c-find", on_read),
            counted(move, "c-move", on_read),
            counted(get, "c-get", on_read),
        )
    return ExtraServices(
        contexts=[(uid, IDENTIFIER_SYNTAXES) for uid in (*QR_SOP_CLASSES, MODALITY_WORKLIST_FIND)],
        handlers=[
            (evt.EVT_C_FIND, find, [deps]),
            (evt.EVT_C_MOVE, move, [deps]),
            (evt.EVT_C_GET, get, [deps]),
            (evt.EVT_REJECTED, handle_rejected, [deps]),
        ],
        storage_roles=True,
    )
