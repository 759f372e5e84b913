"""The regional rules for an arriving object (README, "Regional rules"), as a pure function.

Refused (nothing stored, a specific failure status and a rejection event): missing or invalid
PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, SOPClassUID; UIDs outside the
UID grammar; an object whose identifiers contradict the C-STORE request.

Accepted but *incomplete package* (listed in the event's ``missing``): patient name, birth
date and sex; the performing doctor's regional code and name; the procedure's code and name
from the regional classifier.

Pathology and emergency marks travel in a private block (creator ``CAMI``, group 0x0011):
``(0011,xx10)`` CS ``Y``/``N`` = detected pathology, ``(0011,xx11)`` CS ``EMERGENCY``/``ROUTINE``.
Import options, the sender's configuration and the called AE title can set them too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from ingest.dicom import HeaderValues, first_item, text, uid
from ingest.statuses import Status
from schemas.uids import is_uid

PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "CAMI"
PATHOLOGY_ELEMENT = 0x10
PRIORITY_ELEMENT = 0x11

_REQUIRED_UIDS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "SOPClassUID": 0x00080016,
}


#: integer attributes the InstanceReceived event carries (Avro int, the IS range of PS3.5 6.2)
_INTEGERS = {
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
}
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True)
class Refusal:
    """Why an object is refused, in words for people and a code for machines."""

    reason: str
    status: Status
    comment: str
    offending: tuple[int, ...] = ()


@dataclass(frozen=True)
class Inspection:
    attributes: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    pathology: bool = False
    emergency: bool = False
    refusal: Refusal | None = None


def _code(item: Dataset | None) -> tuple[str | None, str | None, str | None]:
    if item is None:
        return None, None, None
    return text(item, "CodeValue"), text(item, "CodingSchemeDesignator"), text(item, "CodeMeaning")


def _private_text(ds: Dataset, tag: int) -> str | None:
    """A private element's value as text, stripped (bytes when its VR is unknown: read as ASCII);
    None when absent, empty or not decodable."""
    try:
        value = ds[tag].value if tag in ds else None
    except Exception:  # a value that does not decode: as if absent
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return (str(value).strip() or None) if value is not None else None


def _private_marks(ds: Dataset) -> dict[int, str]:
    """CAMI's private elements present in ``ds`` (pathology, priority), by element number, their
    values stripped and upper-cased. Found by the private creator "CAMI" in whichever block of
    group 0011 the sender reserved. Only the group's creator elements present are looked at
    (pydicom's ``private_block`` tries all 240 slots, twice per object)."""
    base = PRIVATE_GROUP << 16
    # the tags only: iterating a Dataset itself would convert every element
    creators = sorted(int(t) for t in ds.keys() if base | 0x10 <= int(t) <= base | 0xFF)  # noqa: SIM118
    block = next((tag & 0xFF for tag in creators if _private_text(ds, tag) == PRIVATE_CREATOR), None)
    if block is None:
        return {}
    marks: dict[int, str] = {}
    for element in (PATHOLOGY_ELEMENT, PRIORITY_ELEMENT):
        mark = _private_text(ds, base | (block << 8) | element)
        if mark:
            marks[element] = mark.upper()
    return marks


def _clean_identifier(value: str) -> bool:
    """LO values: no control characters, no backslash (that would make several values)."""
    return not any(ord(ch) < 0x20 or ch == "\\" for ch in value)


def _several_values(ds: Dataset, keyword: str) -> bool:
    """True when a single-valued attribute arrived as several (``A\\B``): pydicom splits the value
    at the backslash before any check sees it, and its text would read ``['A', 'B']``."""
    try:
        return isinstance(ds.get(keyword), MultiValue)
    except Exception:  # a value that does not decode: text() reports it as absent
        return False


def inspect(
    ds: Dataset, *, request_sop_class_uid: str | None = None, request_sop_instance_uid: str | None = None
) -> Inspection:
    values = HeaderValues(ds)  # the top level's values; items are read by text() below
    uids: dict[str, str] = {}
    for keyword, tag in _REQUIRED_UIDS.items():
        value = uid(ds, keyword)
        if value is None:
            return Inspection(
                refusal=Refusal(
                    "missing-uid",
                    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"{keyword} {Tag(tag)} is missing: the archive needs it to identify the object",
                    (tag,),
                )
            )
        if not is_uid(value):
            return Inspection(
                refusal=Refusal(
                    "invalid-uid",
                    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"{keyword} {Tag(tag)} is not a valid UID (digits and dots, no leading zeros, max 64)",
                    (tag,),
                )
            )
        uids[keyword] = value
    if request_sop_instance_uid and request_sop_instance_uid != uids["SOPInstanceUID"]:
        return Inspection(
            refusal=Refusal(
                "uid-mismatch",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPInstanceUID differs from the request's AffectedSOPInstanceUID",
                (0x00080018,),
            )
        )
    if request_sop_class_uid and request_sop_class_uid != uids["SOPClassUID"]:
        return Inspection(
            refusal=Refusal(
                "uid-mismatch",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPClassUID differs from the request's AffectedSOPClassUID",
                (0x00080016,),
            )
        )
    patient_id = values.text("PatientID")
    if patient_id is None:
        return Inspection(
            refusal=Refusal(
                "missing-patient-id",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "PatientID (0010,0020) is missing: regional rules require a unique patient ID",
                (0x00100020,),
            )
        )
    if _several_values(ds, "PatientID") or not _clean_identifier(patient_id) or len(patient_id) > 64:
        return Inspection(
            refusal=Refusal(
                "invalid-patient-id",
                Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "PatientID (0010,0020) is invalid: control characters, a backslash or too long",
                (0x00100020,),
            )
        )

    for keyword, tag in _INTEGERS.items():
        number = values.integer(keyword)
        if number is not None and not _INT32_MIN <= number <= _INT32_MAX:
            return Inspection(
                refusal=Refusal(
                    "value-out-of-range",
                    Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                    f"{keyword} {Tag(tag)} is out of range: the archive records -2147483648 to 2147483647",
                    (tag,),
                )
            )

    doctor = first_item(ds, "PerformingPhysicianIdentificationSequence", "PersonIdentificationCodeSequence")
    doctor_code = text(doctor, "CodeValue") if doctor is not None else None
    doctor_name = values.text("PerformingPhysicianName")
    procedure = first_item(ds, "ProcedureCodeSequence") or first_item(ds, "RequestedProcedureCodeSequence")
    procedure_code, procedure_scheme, procedure_meaning = _code(procedure)

    attributes: dict[str, Any] = {
        **uids,
        "PatientID": patient_id,
        "IssuerOfPatientID": values.text("IssuerOfPatientID"),
        "PatientName": values.text("PatientName"),
        "PatientBirthDate": values.text("PatientBirthDate"),
        "PatientSex": values.text("PatientSex"),
        "SpecificCharacterSet": _charset(ds),
        "StudyDate": values.text("StudyDate"),
        "StudyTime": values.text("StudyTime"),
        "AccessionNumber": values.text("AccessionNumber"),
        "StudyID": values.text("StudyID"),
        "StudyDescription": values.text("StudyDescription"),
        "ReferringPhysicianName": values.text("ReferringPhysicianName"),
        "Modality": values.text("Modality"),
        "SeriesNumber": values.integer("SeriesNumber"),
        "SeriesDescription": values.text("SeriesDescription"),
        "BodyPartExamined": values.text("BodyPartExamined"),
        "InstanceNumber": values.integer("InstanceNumber"),
        "NumberOfFrames": values.integer("NumberOfFrames"),
        "Rows": values.integer("Rows"),
        "Columns": values.integer("Columns"),
        "InstitutionName": values.text("InstitutionName"),
        "PerformingPhysician": {"code": doctor_code, "name": doctor_name},
        "ProcedureCodeValue": procedure_code,
        "ProcedureCodingScheme": procedure_scheme,
        "ProcedureCodeMeaning": procedure_meaning,
    }
    checks = [
        ("PatientName", attributes["PatientName"]),
        ("PatientBirthDate", attributes["PatientBirthDate"]),
        ("PatientSex", attributes["PatientSex"]),
        ("PerformingPhysicianCode", doctor_code),
        ("PerformingPhysicianName", doctor_name),
        ("ProcedureCode", procedure_code),
        ("ProcedureCodeMeaning", procedure_meaning),
    ]
    missing = [name for name, value in checks if value is None]
    marks = _private_marks(ds)
    return Inspection(
        attributes=attributes,
        missing=missing,
        pathology=marks.get(PATHOLOGY_ELEMENT) == "Y",
        emergency=marks.get(PRIORITY_ELEMENT) == "EMERGENCY",
    )


def _charset(ds: Dataset) -> str | None:
    try:
        value = ds.get("SpecificCharacterSet")
    except Exception:  # not decodable: the values are read with the default repertoire anyway
        return None
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value) or None
