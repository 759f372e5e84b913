"""STOW-RS (PS3.18 10.5) apart from HTTP: storing the parts of a request through the ingest
pipeline, the rule that an instance sent to ``/studies/{study}`` belongs to that study, and the
response data set.

Each part goes through the same pipeline as C-STORE. The answer is DICOM JSON:
ReferencedSOPSequence (0008,1199) with RetrieveURL (0008,1190) for stored instances,
FailedSOPSequence (0008,1198) with FailureReason (0008,1197) for the others. Failed items also
carry ErrorComment (0000,0902), a sentence saying which rule failed, and FailureAttributes
(0074,1048), the offending tags. Status: 200 all stored, 202 some failed (or stored with
warnings), 409 all failed, 503 nothing stored because storage was unavailable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from ingest.dicom import MalformedObject, read_header, split_part10, text
from ingest.multipart import DICOM, Part, media_type, read_part
from ingest.pipeline import Arrival, Ingestor, Outcome
from ingest.statuses import Status
from ingest.validation import Refusal, inspect
from schemas.uids import is_uid

# DICOM JSON attribute tags of the STOW-RS response (PS3.18 10.5.3)
RETRIEVE_URL = "00081190"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
ERROR_COMMENT = "00000902"
FAILURE_ATTRIBUTES = "00741048"

#: the refusal of an instance whose study is not the one in the request URL
STUDY_MISMATCH = Refusal(
    "study-mismatch",
    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    "StudyInstanceUID (0020,000D) of the instance differs from the study in the request URL",
    (0x0020000D,),
)


@dataclass(frozen=True)
class Identifiers:
    """The part's UIDs as far as they parse and are well-formed (the pipeline judges the rest)."""

    study: str | None = None
    series: str | None = None
    sop_class: str | None = None
    sop_instance: str | None = None


@dataclass(frozen=True)
class PartResult:
    outcome: Outcome
    ids: Identifiers = Identifiers()


def _identifiers(data: bytes) -> Identifiers:
    try:
        received = split_part10(data)
        header = read_header(data[received.dataset_offset :], received.transfer_syntax)
    except MalformedObject:
        return Identifiers()

    def uid(keyword: str) -> str | None:
        value = text(header, keyword)
        return value if value and is_uid(value) else None

    return Identifiers(uid("StudyInstanceUID"), uid("SeriesInstanceUID"), uid("SOPClassUID"), uid("SOPInstanceUID"))


def store_parts(
    ingestor: Ingestor, body: IO[bytes], parts: Sequence[Part], arrival: Arrival, study: str | None
) -> list[PartResult]:
    """Run every part through the ingest pipeline, reading each from the spooled body only when
    its turn comes (blocking; called from a worker thread)."""
    results: list[PartResult] = []
    for number, part in enumerate(parts, 1):
        media = media_type(part.content_type).get_content_type() if part.content_type else DICOM
        if media != DICOM:
            outcome = Outcome(
                Status.CANNOT_UNDERSTAND,
                f"part {number}: media type {media} is not application/dicom",
                reason="unsupported-part-type",
            )
            results.append(PartResult(outcome))
            continue
        data = read_part(body, part)
        ids = _identifiers(data)
        if study is not None and ids.study is not None and ids.study != study:
            results.append(PartResult(refuse_study_mismatch(ingestor, data, arrival), ids))
        else:
            results.append(PartResult(ingestor.store_file(data, arrival), ids))
        del data  # the next part is read only after this one is released
    return results


def refuse_study_mismatch(ingestor: Ingestor, data: bytes, arrival: Arrival) -> Outcome:
    """STOW-RS to ``/studies/{study}``: an instance of another study is refused (a failure the
    object's own checks would find first is the one reported), with the pipeline's status and
    its InstanceRejected event."""
    received = split_part10(data)
    inspection = inspect(read_header(data[received.dataset_offset :], received.transfer_syntax))
    return ingestor.refuse(inspection.refusal or STUDY_MISMATCH, arrival, data, inspection=inspection)


def _uid_attr(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_response(results: Sequence[PartResult], base_url: str, study: str | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DICOM JSON body) for the stored and failed instances."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings = False
    out_of_resources = False
    studies: set[str] = set()
    for result in results:
        o = result.outcome
        if o.stored:
            item: dict[str, Any] = {
                REFERENCED_SOP_CLASS_UID: _uid_attr(o.sop_class_uid),
                REFERENCED_SOP_INSTANCE_UID: _uid_attr(o.sop_instance_uid),
            }
            if o.study_instance_uid and result.ids.series:
                studies.add(o.study_instance_uid)
                url = (
                    f"{base_url}/dicomweb/studies/{o.study_instance_uid}/series/{result.ids.series}"
                    f"/instances/{o.sop_instance_uid}"
                )
                item[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
            if o.status == Status.WARNING_COERCED:
                warnings = True
                item[WARNING_REASON] = {"vr": "US", "Value": [int(o.status)]}
            referenced.append(item)
        else:
            out_of_resources = out_of_resources or o.status == Status.OUT_OF_RESOURCES
            item = {
                REFERENCED_SOP_CLASS_UID: _uid_attr(o.sop_class_uid or result.ids.sop_class),
                REFERENCED_SOP_INSTANCE_UID: _uid_attr(o.sop_instance_uid or result.ids.sop_instance),
                FAILURE_REASON: {"vr": "US", "Value": [int(o.status)]},
            }
            if o.comment:
                item[ERROR_COMMENT] = {"vr": "LO", "Value": [f"{o.reason}: {o.comment}" if o.reason else o.comment]}
            if o.offending:
                item[FAILURE_ATTRIBUTES] = {"vr": "AT", "Value": [f"{tag:08X}" for tag in o.offending]}
            failed.append(item)
    body: dict[str, Any] = {}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target and referenced:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base_url}/dicomweb/studies/{target}"]}
    if referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if not failed:
        status = 202 if warnings else 200
    elif referenced:
        status = 202
    else:
        status = 503 if out_of_resources else 409
    return status, body
