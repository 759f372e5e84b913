"""Modality Worklist SCP (PS3.4 K.6, C-FIND on the Modality Worklist Information Model): the
scheduled procedure steps of the orders the MIS placed, for the modality that asks.

:func:`worklist_responses` turns the request identifier into a query of the orders read model
(:func:`projections.orders.queries.worklist`) and the matches into response identifiers. Matched
keys: in the Scheduled Procedure Step Sequence, ScheduledStationAETitle, Modality and
ScheduledProcedureStepStartDate (a date or a range, in the region's time zone); at the top level
PatientID, AccessionNumber and PatientName (DICOM wildcards, case-insensitive). Other keys are
returned, never matched (PS3.4 C.2.2.1 allows it). A cancelled order and a step its modality has
completed or discontinued (MPPS) are no longer listed.

**Character set.** The response is written in the character set the request names in
SpecificCharacterSet (e.g. ``ISO_IR 144`` for Cyrillic in ISO 8859-5, ``ISO_IR 192`` UTF-8) when
every value of the response can be written in it, else in UTF-8 (``ISO_IR 192``), which any
value can: a name is never sent with characters lost.

**Who may ask**: a ``[[sender]]`` (the modality, role ``modality``) or a ``[[qr_caller]]`` whose
role may read the worklist; others get 0x0124. One RecordAccessed event (channel ``mwl``) per
request, durable before the first match leaves; 0xA700 when it cannot be recorded or the read
model cannot be read.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterator, Mapping
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from pydicom.charset import convert_encodings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from api.access import AccessRecorder, Reader
from ingest.ae_titles import ae_title
from ingest.senders import Senders
from projections.orders.queries import worklist
from projections.warehouse.base import Warehouse
from schemas.events import Actor
from schemas.policy import Action, may

log = logging.getLogger("cami.mwl")

MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"

PENDING = 0xFF00
SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700

UTF8 = "ISO_IR 192"


class WorklistError(ValueError):
    """An identifier the worklist cannot match (a malformed date range...)."""


def worklist_reader(assoc: Any, senders: Senders) -> Reader | None:
    """The caller as the access event records it, when it may read the worklist."""
    calling = ae_title(assoc.requestor.ae_title)
    address = assoc.requestor.address
    caller = senders.may_query(calling, address)
    if caller is not None and may(caller.role, Action.READ_WORKLIST):
        return Reader(Actor(calling, caller.role), caller.organisation, address)
    sender = senders.lookup(calling)
    if sender is not None and (not sender.addresses or address in sender.addresses):
        return Reader(Actor(calling, "modality"), sender.organisation, address)
    return None


def _text(ds: Dataset | None, keyword: str) -> str | None:
    if ds is None or keyword not in ds:
        return None
    value = ds.get(keyword)
    text = str(value).strip() if value is not None else ""
    return text or None


def _date_range(value: str | None, zone: tzinfo) -> tuple[datetime | None, datetime | None]:
    """A DA match value (``YYYYMMDD``, ``A-B``, ``-B``, ``A-``) as an instant range in ``zone``."""
    if not value:
        return None, None
    start, dash, end = value.partition("-")

    def day(text: str) -> date | None:
        text = text.strip()
        if not text:
            return None
        try:
            return datetime.strptime(text, "%Y%m%d").date()
        except ValueError:
            raise WorklistError(f"ScheduledProcedureStepStartDate {value!r} is not a date or range") from None

    first, last = day(start), day(end) if dash else day(start)
    lower = datetime.combine(first, time(), zone) if first else None
    upper = datetime.combine(last, time(), zone) + timedelta(days=1) - timedelta(microseconds=1) if last else None
    return lower, upper


def _wildcard(value: str | None) -> str | None:
    return None if value is None or value in ("*", "") else value


def _matches_name(pattern: str | None, name: str | None) -> bool:
    if pattern is None:
        return True
    return fnmatch.fnmatchcase((name or "").casefold(), pattern.casefold())


def _charset(asked: Any) -> str:
    values = [str(v).strip() for v in (asked if isinstance(asked, list | tuple) else [asked]) if str(v).strip()]
    return values[-1] if values else ""


def _writable(values: list[str], charset: str) -> bool:
    try:
        encodings = convert_encodings([charset])
    except Exception:
        return False
    try:
        for value in values:
            value.encode(encodings[0])
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def response_identifier(row: Mapping[str, Any], zone: tzinfo, charset: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.PatientName = row.get("patient_name") or ""
    ds.PatientID = row["patient_id"]
    ds.IssuerOfPatientID = row.get("issuer") or ""
    ds.PatientBirthDate = row.get("birth_date") or ""
    ds.PatientSex = row.get("sex") or ""
    ds.AccessionNumber = row["accession_number"]
    ds.ReferringPhysicianName = row.get("referring_name") or ""
    ds.StudyInstanceUID = row["study_uid"]
    ds.RequestedProcedureID = row["requested_procedure_id"]
    ds.RequestedProcedureDescription = row.get("procedure_meaning") or ""
    ds.RequestedProcedurePriority = {"STAT": "STAT", "URGENT": "HIGH"}.get(row.get("priority") or "", "ROUTINE")
    code = Dataset()
    if row.get("procedure_code"):
        code.CodeValue = row["procedure_code"]
        code.CodingSchemeDesignator = row.get("procedure_scheme") or "L"
        code.CodeMeaning = row.get("procedure_meaning") or ""
        ds.RequestedProcedureCodeSequence = DicomSequence([code])
    else:
        ds.RequestedProcedureCodeSequence = DicomSequence([])
    step = Dataset()
    step.ScheduledStationAETitle = row.get("station_ae_title") or ""
    start = row.get("scheduled_start")
    if isinstance(start, datetime):
        local = start.astimezone(zone)
        step.ScheduledProcedureStepStartDate = local.strftime("%Y%m%d")
        step.ScheduledProcedureStepStartTime = local.strftime("%H%M%S")
    else:
        step.ScheduledProcedureStepStartDate = ""
        step.ScheduledProcedureStepStartTime = ""
    step.Modality = row.get("modality") or ""
    step.ScheduledPerformingPhysicianName = ""
    step.ScheduledProcedureStepDescription = row.get("step_description") or ""
    step.ScheduledProcedureStepID = row["scheduled_step_id"]
    step.ScheduledProcedureStepStatus = "STARTED" if row.get("step_status") == "IN PROGRESS" else "SCHEDULED"
    if row.get("procedure_code"):
        step.ScheduledProtocolCodeSequence = DicomSequence([code])
    ds.ScheduledProcedureStepSequence = DicomSequence([step])
    return ds


def worklist_responses(
    warehouse: Warehouse,
    recorder: AccessRecorder,
    reader: Reader,
    identifier: Dataset,
    zone: tzinfo,
) -> Iterator[tuple[int, Dataset | None]]:
    """``(status, identifier)`` pairs: 0xFF00 per scheduled step, or one failure status."""
    step = None
    if "ScheduledProcedureStepSequence" in identifier and identifier.ScheduledProcedureStepSequence:
        step = identifier.ScheduledProcedureStepSequence[0]
    try:
        start_from, start_to = _date_range(_text(step, "ScheduledProcedureStepStartDate"), zone)
    except WorklistError as exc:
        log.info("worklist query refused: %s", exc)
        yield UNABLE_TO_PROCESS, None
        return
    station = _wildcard(_text(step, "ScheduledStationAETitle"))
    modality = _wildcard(_text(step, "Modality"))
    patient_id = _wildcard(_text(identifier, "PatientID"))
    accession = _wildcard(_text(identifier, "AccessionNumber"))
    name = _wildcard(_text(identifier, "PatientName"))
    rows = worklist(
        warehouse,
        station_ae_title=station,
        modality=modality,
        start_from=start_from,
        start_to=start_to,
        patient_id=patient_id,
        accession_number=accession,
    )
    rows = [r for r in rows if _matches_name(name, r.get("patient_name"))]
    query = {
        k: v
        for k, v in {
            "ScheduledStationAETitle": station,
            "Modality": modality,
            "ScheduledProcedureStepStartDate": _text(step, "ScheduledProcedureStepStartDate"),
            "PatientID": patient_id,
            "AccessionNumber": accession,
            "PatientName": name,
        }.items()
        if v
    }
    only_study = rows[0]["study_uid"] if len(rows) == 1 else None
    only_patient = patient_id or (rows[0]["patient_id"] if len({r["patient_id"] for r in rows}) == 1 and rows else None)
    recorder.record(
        reader,
        action="query",
        channel="mwl",
        study_uid=only_study,
        patient_id=only_patient,
        query={"model": "worklist", **query},
        results=len(rows),
    )
    asked = _charset(identifier.get("SpecificCharacterSet", ""))
    for row in rows:
        values = [
            str(row.get(k) or "") for k in ("patient_name", "referring_name", "procedure_meaning", "step_description")
        ]
        charset = asked if asked and _writable(values, asked) else UTF8
        yield PENDING, response_identifier(row, zone, charset)


def handle_worklist_find(
    event: Any,
    warehouse: Callable[[], Warehouse],
    recorder: AccessRecorder,
    senders: Senders,
    zone: tzinfo,
) -> Iterator[tuple[int, Dataset | None]]:
    """EVT_C_FIND on the Modality Worklist Information Model."""
    reader = worklist_reader(event.assoc, senders)
    if reader is None:
        yield NOT_AUTHORISED, None
        return
    try:
        identifier = event.identifier
    except Exception:
        yield UNABLE_TO_PROCESS, None
        return
    try:
        for status, match in worklist_responses(warehouse(), recorder, reader, identifier, zone):
            if event.is_cancelled:
                yield 0xFE00, None
                return
            yield status, match
    except Exception:
        log.exception("worklist query failed")
        yield OUT_OF_RESOURCES, None
