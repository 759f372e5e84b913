"""What an HL7 v2 message from the MIS means to the archive: the events it becomes, or the
reason it is refused. Pure: the message and a :class:`Context` in, events out; nothing here
touches the network or the log.

=================================  =============================================================
message                            events
=================================  =============================================================
ADT^A01 A04 A05 A08 A28 A31        PatientUpdated (PID: the patient's ID, name, birth date, sex)
ADT^A40                            PatientsMerged per PID/MRG pair (MRG-1: the prior ID)
ORM^O01, OMI^O23 (ORC-1 NW, XO)    OrderPlaced per ORC group (XO: the order as changed)
ORM^O01, OMI^O23 (ORC-1 CA...)     OrderCancelled per ORC group (CA, OC, DC, CR)
ORU^R01                            the report flow: ReportDrafted (OBR-25 P), + ReportSigned (F),
                                   ReportEdited when the texts changed, ReportAmended (C)
=================================  =============================================================

Where the order's fields come from (IHE Scheduled Workflow's conventions first, then the
common places): placer order number ORC-2/OBR-2 (required); accession number IPC-1/OBR-18;
Study Instance UID IPC-3/ZDS-1; requested procedure ID IPC-2/OBR-19; scheduled step ID
IPC-4/OBR-20; modality IPC-5/OBR-24; scheduled station AE title IPC-9/OBR-21; procedure code
OBR-4 (code^meaning^scheme, the regional classifier's code); start TQ1-7/ORC-7.4/OBR-27.4/OBR-36;
priority TQ1-9/ORC-7.6/OBR-27.6; referring doctor ORC-12/OBR-16 (XCN: code^family^given^middle);
referring organisation ORC-21.10/ORC-21.1/ORC-17.1, else the sending facility. Where the MIS sends
no accession number or study UID, CAMI (the order filler) assigns them, derived from the placer
order number so a repeated message gets the same ones.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import hl7

from ingest.hl7.fields import birth_date, first, person_name, priority, segments, sex, timestamp, value
from ingest.hl7.wire import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    SEGMENT_SEQUENCE_ERROR,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    UNSUPPORTED_PROCESSING_ID,
    UNSUPPORTED_VERSION_ID,
    Header,
    MessageRefused,
)
from ingest.reports.fold import fact
from ingest.reports.rules import (
    Author,
    ReportError,
    ReportState,
    amend,
    content_sha256,
    draft,
    edit,
    evolve,
    sign,
)
from schemas.events import Actor, Event, new_event
from schemas.uids import is_uid

#: the MIS as an event's actor: it registers patients, places orders and reports
MIS_ROLE = "mis"
#: a report that arrived as ORU is named by its order: same order, same report
RESULT_NAMESPACE = uuid.UUID("0c6f4a3e-8f0b-4b8e-9a57-3c1f1f5d2e11")
#: identifiers CAMI assigns as the order filler are derived from the placer's order number
ORDER_NAMESPACE = uuid.UUID("5b3a1c9e-2d47-4f0a-8c61-7e9d0b4a6f23")
#: DICOM's code for Study Instance UID in an OBX (DCM 110180; 113014 as some senders use)
_STUDY_UID_CODES = {"110180", "113014"}
#: OBX-3 codes of the conclusion (IHE's IMP, DCM's Impression family); the rest is the protocol
_CONCLUSION_CODES = {"IMP", "&IMP", "121072", "121073", "121074", "121075", "121076", "121077"}
_TEXT_TYPES = {"TX", "FT", "ST", "CE", "CWE", "ED"}
_PATIENT_EVENTS = {"A01", "A04", "A05", "A08", "A28", "A31"}
_PLACE = {"NW", "XO"}
_CANCEL = {"CA", "OC", "DC", "CR"}
MAX_SH = 16  # DICOM SH (accession number, requested procedure ID, AE titles)
MAX_LO = 64  # DICOM LO (patient ID)


@dataclass(frozen=True)
class Sender:
    """Who sent the message: MSH-3 (application), MSH-4 (facility), the facility as a regional
    organisation code when the directory knows it, and the peer's address."""

    application: str
    facility: str
    organisation: str | None
    peer_address: str | None = None

    @property
    def name(self) -> str:
        return f"{self.application or '?'}@{self.facility or '?'}"

    @property
    def actor(self) -> Actor:
        return Actor(f"hl7:{self.name}", MIS_ROLE)


@dataclass(frozen=True)
class Context:
    """What interpreting a message may consult: the sender, the clock, the region's time zone (for
    timestamps without an offset), and two lookups the archive answers -- the study of an
    accession number (for an ORU that names no study) and a report's current state."""

    sender: Sender
    now: datetime
    zone: tzinfo
    study_of_accession: Callable[[str], str | None]
    report_state: Callable[[str], ReportState | None]


def check_header(header: Header) -> None:
    """Version (2.3 or later), processing id (not training) and message type, before the body is read."""
    version = header.version
    major, _, minor = version.partition(".")
    if major != "2" or not minor[:1].isdigit() or int(minor.split(".")[0]) < 3:
        raise MessageRefused(
            "AR",
            UNSUPPORTED_VERSION_ID,
            "unsupported-version",
            f"HL7 version {version or '(none)'!r} in MSH-12 is not supported (2.3 to 2.9)",
            "MSH-12",
        )
    if header.component(11)[:1].upper() == "T":
        raise MessageRefused(
            "AR",
            UNSUPPORTED_PROCESSING_ID,
            "training-message",
            "training messages (MSH-11 T) are not recorded in the archive",
            "MSH-11",
        )
    kind, trigger = header.component(9, 1), header.component(9, 2)
    if (kind, trigger) not in SUPPORTED and not (kind == "ADT" and trigger in _PATIENT_EVENTS):
        if kind in {"ADT", "ORM", "OMI", "ORU"}:
            raise MessageRefused(
                "AR",
                UNSUPPORTED_EVENT_CODE,
                "unsupported-event",
                f"{kind}^{trigger or '?'} is not taken (see the README's HL7 table)",
                "MSH-9",
            )
        raise MessageRefused(
            "AR",
            UNSUPPORTED_MESSAGE_TYPE,
            "unsupported-message-type",
            f"message type {kind or '(none)'!r} is not taken: ADT, ORM, OMI, ORU",
            "MSH-9",
        )


def interpret(message: hl7.Message, header: Header, context: Context) -> list[Event]:
    """The events ``message`` becomes (all of them, or a :class:`MessageRefused`)."""
    kind, trigger = header.component(9, 1), header.component(9, 2)
    if kind == "ADT" and trigger in _PATIENT_EVENTS:
        return [_patient_updated(message, context)]
    return SUPPORTED[(kind, trigger)](message, context)


# -- patients ------------------------------------------------------------------------------------
def _patient_id(pid: hl7.Segment | None, *, where: str = "PID-3") -> tuple[str, str | None]:
    """PID-3: the first repetition with an ID (CX: id^^^authority), and its issuer."""
    if pid is None:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "missing-pid", "the message has no PID segment", "PID")
    field = int(where.split("-")[1])
    for rep in range(1, 10):
        identifier = value(pid, field, 1, 1, rep)
        if identifier:
            if len(identifier) > MAX_LO or "\\" in identifier:
                raise MessageRefused(
                    "AE", DATA_TYPE_ERROR, "invalid-patient-id", f"{where} is not a DICOM LO patient ID", where
                )
            return identifier, value(pid, field, 4, 1, rep) or None
        if not value(pid, field, 1, 1, rep + 1):
            break
    raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "missing-patient-id", f"{where} (patient ID) is empty", where)


def _demographics(pid: hl7.Segment) -> dict[str, Any]:
    patient_id, issuer = _patient_id(pid)
    return {
        "PatientID": patient_id,
        "IssuerOfPatientID": issuer,
        "PatientName": person_name(pid, 5),
        "PatientBirthDate": birth_date(pid, 7, "PID-7"),
        "PatientSex": sex(pid, 8),
    }


def _common(context: Context, aggregate_id: str) -> dict[str, Any]:
    return {
        "aggregate_id": aggregate_id,
        "source_node": f"hl7:{context.sender.name}",
        "organisation": context.sender.organisation,
        "actor": context.sender.actor,
    }


def _patient_updated(message: hl7.Message, context: Context) -> Event:
    demographics = _demographics(_require(message, "PID"))
    return new_event("PatientUpdated", {**demographics, "source": "hl7"}, **_common(context, demographics["PatientID"]))


def _patients_merged(message: hl7.Message, context: Context) -> list[Event]:
    events = []
    pid: hl7.Segment | None = None
    for segment in message:
        name = str(segment[0][0])
        if name == "PID":
            pid = segment
        elif name == "MRG":
            surviving, issuer = _patient_id(pid)
            prior, prior_issuer = _patient_id(segment, where="MRG-1")
            if prior == surviving:
                raise MessageRefused(
                    "AE", DATA_TYPE_ERROR, "merge-into-itself", "MRG-1 names the surviving patient itself", "MRG-1"
                )
            payload = {
                "PatientID": surviving,
                "IssuerOfPatientID": issuer,
                "PriorPatientID": prior,
                "PriorIssuerOfPatientID": prior_issuer,
                "source": "hl7",
            }
            # keyed by the surviving ID, like every event of that patient's record
            events.append(new_event("PatientsMerged", payload, **_common(context, surviving)))
    if not events:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "missing-mrg", "ADT^A40 without an MRG segment", "MRG")
    return events


# -- orders --------------------------------------------------------------------------------------
def _groups(message: hl7.Message, starter: str) -> Iterator[dict[str, hl7.Segment]]:
    """Segments after each ``starter`` segment, by name (the first of each)."""
    group: dict[str, hl7.Segment] | None = None
    for segment in message:
        name = str(segment[0][0])
        if name == starter:
            if group is not None:
                yield group
            group = {name: segment}
        elif group is not None and name not in group:
            group[name] = segment
        elif group is None and name in {"OBR", "OBX", "IPC", "TQ1"}:
            raise MessageRefused(
                "AE", SEGMENT_SEQUENCE_ERROR, "segment-order", f"{name} before the first {starter}", name
            )
    if group is not None:
        yield group


def _derived(context: Context, placer: str, what: str) -> uuid.UUID:
    return uuid.uuid5(ORDER_NAMESPACE, f"{context.sender.facility}|{placer}|{what}")


def _accession(group: dict[str, hl7.Segment], context: Context, placer: str) -> str:
    given = value(group.get("IPC"), 1) or value(group.get("OBR"), 18)
    if given:
        if len(given) > MAX_SH or "\\" in given:
            raise MessageRefused(
                "AE",
                DATA_TYPE_ERROR,
                "invalid-accession",
                "the accession number is longer than 16 characters",
                "OBR-18",
            )
        return given
    # assigned here: "A" and 15 digits, the same for every message about this order
    digest = int.from_bytes(hashlib.sha256(_derived(context, placer, "accession").bytes).digest()[:8], "big")
    return f"A{digest % 10**15:015d}"


def _order(group: dict[str, hl7.Segment], pid: hl7.Segment | None, context: Context) -> Event:
    orc, obr, ipc, tq1 = group.get("ORC"), group.get("OBR"), group.get("IPC"), group.get("TQ1")
    control = value(orc, 1).upper()
    placer = value(orc, 2) or value(obr, 2)
    if not placer:
        raise MessageRefused(
            "AE",
            REQUIRED_FIELD_MISSING,
            "missing-placer-order-number",
            "ORC-2 / OBR-2 (placer order number) is empty",
            "ORC-2",
        )
    accession = _accession(group, context, placer)
    common = _common(context, placer)
    if control in _CANCEL:
        reason = value(orc, 16, 2) or value(orc, 16, 1) or None
        cancelled = {
            "placer_order_number": placer,
            "AccessionNumber": accession,
            "reason": reason,
            "placer_application": context.sender.name,
        }
        return new_event("OrderCancelled", cancelled, **common)
    if control not in _PLACE:
        raise MessageRefused(
            "AE",
            TABLE_VALUE_NOT_FOUND,
            "unsupported-order-control",
            f"ORC-1 {control or '(empty)'!r}: CAMI takes NW and XO (place), CA, OC, DC, CR (cancel)",
            "ORC-1",
        )
    if pid is None:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "missing-pid", "a new order needs a PID segment", "PID")
    demographics = _demographics(pid)
    study = value(ipc, 3) or value(group.get("ZDS"), 1)
    if study and not is_uid(study):
        raise MessageRefused(
            "AE", DATA_TYPE_ERROR, "invalid-uid", f"Study Instance UID {study!r} is not a UID", "IPC-3"
        )
    study = study or f"2.25.{_derived(context, placer, 'study').int}"
    station = value(ipc, 9) or value(obr, 21)
    if len(station) > MAX_SH:
        raise MessageRefused(
            "AE", DATA_TYPE_ERROR, "invalid-ae-title", "the scheduled station AE title is longer than 16", "IPC-9"
        )
    start = (
        timestamp(tq1, 7, context.zone, "TQ1-7")
        or timestamp(orc, 7, context.zone, "ORC-7.4", component=4)
        or timestamp(obr, 27, context.zone, "OBR-27.4", component=4)
        or timestamp(obr, 36, context.zone, "OBR-36")
        or timestamp(obr, 6, context.zone, "OBR-6")
    )
    urgency = value(tq1, 9) or value(orc, 7, 6) or value(obr, 27, 6) or value(obr, 5)
    # the ordering provider (ORC-12), else OBR-16: XCN, code^family^given^middle
    referrer, referrer_field = (orc, 12) if value(orc, 12, 1) or value(orc, 12, 2) else (obr, 16)
    modality = (value(ipc, 5) or value(obr, 24)).upper()
    payload: dict[str, Any] = {
        "placer_order_number": placer,
        "filler_order_number": value(orc, 3) or value(obr, 3) or None,
        "AccessionNumber": accession,
        "StudyInstanceUID": study,
        "RequestedProcedureID": value(ipc, 2) or value(obr, 19) or accession,
        **demographics,
        "ProcedureCodeValue": value(obr, 4, 1) or None,
        "ProcedureCodeMeaning": value(obr, 4, 2) or None,
        "ProcedureCodingScheme": value(obr, 4, 3) or None,
        "Modality": modality if modality.isalnum() and len(modality) <= 16 else None,
        "ScheduledStationAETitle": station or None,
        "ScheduledProcedureStepStartDateTime": start,
        "ReferringPhysicianName": person_name(referrer, referrer_field, offset=1),
        "ReferringPhysicianCode": value(referrer, referrer_field, 1) or None,
        "priority": priority(urgency),
        "ScheduledProcedureStepID": value(ipc, 4) or value(obr, 20) or placer[:MAX_SH],
        "ScheduledProcedureStepDescription": value(obr, 4, 2) or None,
        "referring_organisation": (
            value(orc, 21, 10) or value(orc, 21, 1) or value(orc, 17, 1) or context.sender.organisation or None
        ),
        "placer_application": context.sender.name,
    }
    return new_event("OrderPlaced", payload, **common)


def _orders(message: hl7.Message, context: Context) -> list[Event]:
    pid = first(message, "PID")
    events = [_order(group, pid, context) for group in _groups(message, "ORC")]
    if not events:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "missing-orc", "the order message has no ORC segment", "ORC")
    return events


# -- results (reports) ---------------------------------------------------------------------------
def _texts(observations: list[hl7.Segment]) -> tuple[str, str, str | None]:
    """(protocol, conclusion, study UID) from a result's OBX segments."""
    protocol: list[str] = []
    conclusion: list[str] = []
    study: str | None = None
    for obx in observations:
        code = value(obx, 3, 1).upper()
        if code in _STUDY_UID_CODES:
            study = value(obx, 5) or study
            continue
        if value(obx, 2).upper() not in _TEXT_TYPES:
            continue
        lines = []
        for rep in range(1, 1000):
            line = value(obx, 5, 1, 1, rep) if value(obx, 2).upper() not in {"CE", "CWE"} else value(obx, 5, 2, 1, rep)
            if not line and not value(obx, 5, 1, 1, rep + 1):
                if line:
                    lines.append(line)
                break
            lines.append(line)
        text = "\n".join(lines).replace("\r", "\n").strip()
        if not text:
            continue
        meaning = value(obx, 3, 2).lower()
        to_conclusion = code in _CONCLUSION_CODES or any(w in meaning for w in ("impression", "conclusion", "заключ"))
        (conclusion if to_conclusion else protocol).append(text)
    return "\n".join(protocol), "\n".join(conclusion), study


def _results(message: hl7.Message, context: Context) -> list[Event]:
    pid = first(message, "PID")
    patient_id = _patient_id(pid)[0] if pid is not None else None
    events: list[Event] = []
    groups = list(_result_groups(message))
    if not groups:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, "missing-obr", "ORU^R01 without an OBR segment", "OBR")
    for obr, observations in groups:
        events.extend(_result(obr, observations, patient_id, context))
    return events


def _result_groups(message: hl7.Message) -> Iterator[tuple[hl7.Segment, list[hl7.Segment]]]:
    obr: hl7.Segment | None = None
    observations: list[hl7.Segment] = []
    for segment in message:
        name = str(segment[0][0])
        if name == "OBR":
            if obr is not None:
                yield obr, observations
            obr, observations = segment, []
        elif name == "OBX":
            if obr is None:
                raise MessageRefused("AE", SEGMENT_SEQUENCE_ERROR, "segment-order", "OBX before OBR", "OBX")
            observations.append(segment)
    if obr is not None:
        yield obr, observations


def _result(obr: hl7.Segment, observations: list[hl7.Segment], patient_id: str | None, context: Context) -> list[Event]:
    accession = value(obr, 18) or value(obr, 3) or value(obr, 2)
    if not accession:
        raise MessageRefused(
            "AE", REQUIRED_FIELD_MISSING, "missing-accession", "OBR-18 / OBR-3 (accession number) is empty", "OBR-18"
        )
    protocol, conclusion, study = _texts(observations)
    study = study or context.study_of_accession(accession)
    if not study:
        raise MessageRefused(
            "AE",
            UNKNOWN_KEY_IDENTIFIER,
            "unknown-study",
            f"no study with accession number {accession!r} is known (send its Study Instance UID in an OBX 110180)",
            "OBR-18",
        )
    if not is_uid(study):
        raise MessageRefused(
            "AE", DATA_TYPE_ERROR, "invalid-uid", f"Study Instance UID {study!r} is not a UID", "OBX-5"
        )
    status = value(obr, 25).upper() or "F"
    if status not in {"P", "F", "C", "R", "S", "I"}:
        raise MessageRefused(
            "AE", TABLE_VALUE_NOT_FOUND, "unsupported-result-status", f"OBR-25 {status!r}: P, F or C", "OBR-25"
        )
    interpreter = (
        {"code": value(obr, 32, 1, 1) or None, "name": _interpreter_name(obr)}
        if value(obr, 32, 1, 1) or value(obr, 32, 1, 2)
        else _responsible_observer(observations)
    )
    author = Author(context.sender.actor, interpreter, context.sender.organisation)
    report_id = str(uuid.uuid5(RESULT_NAMESPACE, f"{context.sender.facility}|{study}|{accession}"))
    state = context.report_state(report_id)
    node = f"hl7:{context.sender.name}"
    try:
        return _report_events(
            state, report_id, study, accession, patient_id, protocol, conclusion, status, author, context.now, node
        )
    except ReportError as exc:
        raise MessageRefused("AE", DATA_TYPE_ERROR, exc.code, str(exc), "OBR-25") from None


def _report_events(
    state: ReportState | None,
    report_id: str,
    study: str,
    accession: str,
    patient_id: str | None,
    protocol: str,
    conclusion: str,
    status: str,
    author: Author,
    now: datetime,
    node: str,
) -> list[Event]:
    final = status in {"F", "C"}
    if state is None:
        drafted = draft(
            report_id,
            study,
            protocol,
            conclusion,
            author,
            accession_number=accession,
            source_node=node,
            source="hl7",
            patient_id=patient_id,
        )
        if not final:
            return [drafted]
        return [drafted, sign(evolve(None, fact(drafted)), author, now, source_node=node, source="hl7")]
    same = content_sha256(protocol, conclusion) == content_sha256(state.protocol_text, state.conclusion_text)
    if state.signed:
        if same:
            return []  # the same result again (a lost ACK): already recorded
        if not final:
            raise MessageRefused(
                "AE",
                DATA_TYPE_ERROR,
                "report-signed",
                "the report is already signed: a correction is OBR-25 C",
                "OBR-25",
            )
        reason = "corrected result from the MIS (OBR-25 C)" if status == "C" else "changed final result from the MIS"
        return [amend(state, protocol, conclusion, reason, author, now, source_node=node)]
    events: list[Event] = []
    if not same:
        events.append(edit(state, protocol, conclusion, author, source_node=node))
    if final:
        current: ReportState | None = state
        for event in events:
            current = evolve(current, fact(event))
        events.append(sign(current, author, now, source_node=node, source="hl7"))
    return events


def _interpreter_name(obr: hl7.Segment) -> str | None:
    # OBR-32 is NDL: its first component is CNN (id&family&given&middle)
    parts = [value(obr, 32, 1, n) for n in (2, 3, 4)]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts) or None


def _responsible_observer(observations: list[hl7.Segment]) -> dict[str, str | None]:
    for obx in observations:
        if value(obx, 16, 1) or value(obx, 16, 2):
            return {"code": value(obx, 16, 1) or None, "name": person_name(obx, 16, offset=1)}
    return {"code": None, "name": None}


def _require(message: hl7.Message, name: str) -> hl7.Segment:
    segment = first(message, name)
    if segment is None:
        raise MessageRefused("AE", REQUIRED_FIELD_MISSING, f"missing-{name.lower()}", f"no {name} segment", name)
    return segment


SUPPORTED: dict[tuple[str, str], Callable[[hl7.Message, Context], list[Event]]] = {
    ("ADT", "A40"): _patients_merged,
    ("ORM", "O01"): _orders,
    ("OMI", "O23"): _orders,
    ("ORU", "R01"): _results,
}

__all__ = ["Context", "MessageRefused", "Sender", "check_header", "interpret", "segments"]
