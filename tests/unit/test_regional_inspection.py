"""The regional rules for an arriving object (``ingest.validation.inspect``) on in-memory pydicom
data sets: every refusal reason with its status, comment and offending element, the incomplete
package, the pathology and emergency marks, and what an accepted object's event carries.

The same rules are exercised end to end through the Storage SCP and STOW-RS in the integration
tier; here each rule is checked alone, without a server.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydicom import config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

from ingest.dicom import parse
from ingest.validation import PRIVATE_CREATOR, PRIVATE_GROUP, Inspection, Refusal, inspect

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
STUDY = "1.2.826.0.1.3680043.8.498.77.1"
SERIES = "1.2.826.0.1.3680043.8.498.77.1.1"
INSTANCE = "1.2.826.0.1.3680043.8.498.77.1.1.1"
A900 = 0xA900  # Status "data set does not match SOP class": what the peer sees for every refusal here

UID_TAGS = {
    "StudyInstanceUID": 0x0020000D,
    "SeriesInstanceUID": 0x0020000E,
    "SOPInstanceUID": 0x00080018,
    "SOPClassUID": 0x00080016,
}
INTEGER_TAGS = {
    "SeriesNumber": 0x00200011,
    "InstanceNumber": 0x00200013,
    "NumberOfFrames": 0x00280008,
    "Rows": 0x00280010,
    "Columns": 0x00280011,
}
#: everything an incomplete package can lack, in the order ``missing`` lists it
PACKAGE = [
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PerformingPhysicianCode",
    "PerformingPhysicianName",
    "ProcedureCode",
    "ProcedureCodeMeaning",
]


def put(ds: Dataset, keyword: str, value: Any) -> None:
    """Set an element as a sender might encode it: pydicom's own value checks are not applied."""
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    ds[tag] = DataElement(tag, dictionary_VR(tag), value, validation_mode=config.IGNORE)


def put_raw(ds: Dataset, tag: int, vr: str, encoded: bytes) -> None:
    """An element still as its bytes arrived (explicit VR little endian), the way a received data set holds it."""
    ds[tag] = RawDataElement(Tag(tag), vr, len(encoded), encoded, 0, False, True)


def code_item(value: str | None, scheme: str | None, meaning: str | None) -> Dataset:
    item = Dataset()
    for keyword, text in (("CodeValue", value), ("CodingSchemeDesignator", scheme), ("CodeMeaning", meaning)):
        if text is not None:
            setattr(item, keyword, text)
    return item


def complete() -> Dataset:
    """A CT image with everything the regional rules ask for (no pixel data: they do not look at it)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = CT_IMAGE
    ds.SOPInstanceUID = INSTANCE
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.PatientID = "4650123456789012"
    ds.IssuerOfPatientID = "RU-MIS"
    ds.PatientName = "Иванова^Мария^Петровна"
    ds.PatientBirthDate = "19720305"
    ds.PatientSex = "F"
    ds.StudyDate = "20261124"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-1"
    ds.StudyID = "77"
    ds.StudyDescription = "Компьютерная томография"
    ds.ReferringPhysicianName = "Смирнов^Олег"
    ds.Modality = "CT"
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Грудная клетка"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = 12
    ds.NumberOfFrames = 1
    ds.Rows = 512
    ds.Columns = 512
    ds.InstitutionName = "ГБУЗ ОКБ"
    ds.PerformingPhysicianName = "Орлова^Анна"
    person = Dataset()
    person.PersonIdentificationCodeSequence = [code_item("123-456-789 00", "RU-SNILS", "Орлова Анна")]
    ds.PerformingPhysicianIdentificationSequence = [person]
    ds.ProcedureCodeSequence = [code_item("A06.09.005", "RU-NMU", "КТ органов грудной полости")]
    return ds


def _without(*keywords: str) -> Dataset:
    ds = complete()
    for keyword in keywords:
        delattr(ds, keyword)
    return ds


def refusal_of(ds: Dataset, **request: str) -> Refusal:
    found = inspect(ds, **request)
    assert found.refusal is not None, f"accepted: {found}"
    assert found.attributes == {} and found.missing == [], "a refused object carries no event attributes"
    assert found.refusal.status == A900
    return found.refusal


# -- accepted --------------------------------------------------------------------------------------
def test_a_complete_object_is_accepted_with_every_attribute_of_its_event() -> None:
    found = inspect(complete(), request_sop_class_uid=CT_IMAGE, request_sop_instance_uid=INSTANCE)
    assert found == Inspection(
        attributes={
            "StudyInstanceUID": STUDY,
            "SeriesInstanceUID": SERIES,
            "SOPInstanceUID": INSTANCE,
            "SOPClassUID": CT_IMAGE,
            "PatientID": "4650123456789012",
            "IssuerOfPatientID": "RU-MIS",
            "PatientName": "Иванова^Мария^Петровна",
            "PatientBirthDate": "19720305",
            "PatientSex": "F",
            "SpecificCharacterSet": "ISO_IR 192",
            "StudyDate": "20261124",
            "StudyTime": "101500",
            "AccessionNumber": "ACC-1",
            "StudyID": "77",
            "StudyDescription": "Компьютерная томография",
            "ReferringPhysicianName": "Смирнов^Олег",
            "Modality": "CT",
            "SeriesNumber": 3,
            "SeriesDescription": "Грудная клетка",
            "BodyPartExamined": "CHEST",
            "InstanceNumber": 12,
            "NumberOfFrames": 1,
            "Rows": 512,
            "Columns": 512,
            "InstitutionName": "ГБУЗ ОКБ",
            "PerformingPhysician": {"code": "123-456-789 00", "name": "Орлова^Анна"},
            "ProcedureCodeValue": "A06.09.005",
            "ProcedureCodingScheme": "RU-NMU",
            "ProcedureCodeMeaning": "КТ органов грудной полости",
        },
        missing=[],
        pathology=False,
        emergency=False,
        refusal=None,
    )


def test_without_a_request_to_compare_with_the_object_is_judged_alone() -> None:
    assert inspect(complete()).refusal is None


def test_uids_are_read_as_encoded_less_their_padding() -> None:
    ds = complete()
    put_raw(ds, 0x0020000D, "UI", STUDY.encode() + b"\x00")  # PS3.5 9.1: one trailing NUL pads an odd length
    found = inspect(ds)
    assert found.refusal is None
    assert found.attributes["StudyInstanceUID"] == STUDY


def test_a_multi_valued_character_set_is_kept_as_encoded() -> None:
    ds = complete()
    ds.SpecificCharacterSet = ["ISO 2022 IR 6", "ISO 2022 IR 144"]
    assert inspect(ds).attributes["SpecificCharacterSet"] == "ISO 2022 IR 6\\ISO 2022 IR 144"


@pytest.mark.parametrize("keyword", list(INTEGER_TAGS))
def test_an_absent_integer_is_recorded_as_unknown(keyword: str) -> None:
    found = inspect(_without(keyword))
    assert found.refusal is None
    assert found.attributes[keyword] is None


@pytest.mark.parametrize("keyword", ["SeriesNumber", "InstanceNumber", "NumberOfFrames"])
def test_an_integer_string_that_is_not_a_number_is_recorded_as_unknown(keyword: str) -> None:
    ds = complete()
    put_raw(ds, INTEGER_TAGS[keyword], "IS", b"twelve")
    found = inspect(ds)
    assert found.refusal is None
    assert found.attributes[keyword] is None


@pytest.mark.parametrize("keyword", ["SeriesNumber", "InstanceNumber"])
@pytest.mark.parametrize("number", [-(2**31), 2**31 - 1])
def test_integers_at_the_ends_of_the_recorded_range_are_accepted(keyword: str, number: int) -> None:
    ds = complete()
    put(ds, keyword, str(number))
    found = inspect(ds)
    assert found.refusal is None
    assert found.attributes[keyword] == number


# -- refused: identifiers --------------------------------------------------------------------------
@pytest.mark.parametrize("keyword", list(UID_TAGS))
@pytest.mark.parametrize("how", ["absent", "empty", "padding only"])
def test_a_missing_uid_is_refused_naming_the_element(keyword: str, how: str) -> None:
    ds = complete()
    if how == "absent":
        delattr(ds, keyword)
    else:
        put_raw(ds, UID_TAGS[keyword], "UI", b"" if how == "empty" else b"\x00\x00")
    refusal = refusal_of(ds)
    assert refusal.reason == "missing-uid"
    assert refusal.offending == (UID_TAGS[keyword],)
    assert refusal.comment.startswith(f"{keyword} {Tag(UID_TAGS[keyword])} is missing")


@pytest.mark.parametrize("keyword", list(UID_TAGS))
@pytest.mark.parametrize(
    "encoded",
    [
        b"1.2.03",  # a leading zero in a component
        b"1.2.3\n",  # a trailing newline is not padding
        b"1.2.3 .4",  # a space inside
        b"1.2.abc",  # not digits
        b"1.2.",  # an empty component
        b"12",  # one component
        ("1." + "2" * 63).encode(),  # 65 characters, over the 64 of the UI VR
    ],
)
def test_a_uid_outside_the_grammar_is_refused_naming_the_element(keyword: str, encoded: bytes) -> None:
    ds = complete()
    put_raw(ds, UID_TAGS[keyword], "UI", encoded + b"\x00" * (len(encoded) % 2))
    refusal = refusal_of(ds)
    assert refusal.reason == "invalid-uid"
    assert refusal.offending == (UID_TAGS[keyword],)
    assert refusal.comment.startswith(f"{keyword} {Tag(UID_TAGS[keyword])} is not a valid UID")


def test_a_uid_of_64_characters_is_accepted() -> None:
    ds = complete()
    longest = "1." + "2" * 62
    ds.SOPInstanceUID = longest
    found = inspect(ds)
    assert found.refusal is None
    assert found.attributes["SOPInstanceUID"] == longest


def test_the_uids_are_checked_study_series_instance_class() -> None:
    ds = complete()
    del ds.SOPClassUID
    put_raw(ds, UID_TAGS["SeriesInstanceUID"], "UI", b"1.02")
    assert refusal_of(ds).offending == (UID_TAGS["SeriesInstanceUID"],)


def test_an_instance_uid_other_than_the_request_is_refused() -> None:
    refusal = refusal_of(complete(), request_sop_instance_uid=INSTANCE + ".9", request_sop_class_uid=CT_IMAGE)
    assert refusal.reason == "uid-mismatch"
    assert refusal.offending == (UID_TAGS["SOPInstanceUID"],)
    assert refusal.comment == "SOPInstanceUID differs from the request's AffectedSOPInstanceUID"


def test_a_class_uid_other_than_the_request_is_refused() -> None:
    mr_image = "1.2.840.10008.5.1.4.1.1.4"
    refusal = refusal_of(complete(), request_sop_instance_uid=INSTANCE, request_sop_class_uid=mr_image)
    assert refusal.reason == "uid-mismatch"
    assert refusal.offending == (UID_TAGS["SOPClassUID"],)
    assert refusal.comment == "SOPClassUID differs from the request's AffectedSOPClassUID"


def test_an_invalid_uid_is_reported_before_a_mismatch_with_the_request() -> None:
    ds = complete()
    put_raw(ds, UID_TAGS["SOPInstanceUID"], "UI", b"1.2.03")
    assert refusal_of(ds, request_sop_instance_uid=INSTANCE).reason == "invalid-uid"


# -- refused: patient ID ---------------------------------------------------------------------------
@pytest.mark.parametrize("value", [None, "", "   "])
def test_a_missing_patient_id_is_refused(value: str | None) -> None:
    ds = complete()
    if value is None:
        del ds.PatientID
    else:
        put(ds, "PatientID", value)
    refusal = refusal_of(ds)
    assert refusal.reason == "missing-patient-id"
    assert refusal.offending == (0x00100020,)
    assert "PatientID (0010,0020) is missing" in refusal.comment


@pytest.mark.parametrize("value", ["P-1\x01", "P\t1", "P\n1", "P" * 65])
def test_a_patient_id_with_control_characters_or_too_long_is_refused(value: str) -> None:
    ds = complete()
    put(ds, "PatientID", value)
    refusal = refusal_of(ds)
    assert refusal.reason == "invalid-patient-id"
    assert refusal.offending == (0x00100020,)
    assert "PatientID (0010,0020) is invalid" in refusal.comment


@pytest.mark.parametrize("encoded", [b"A\\B", b"P-1\\P-2 "])
def test_a_patient_id_sent_as_several_values_is_refused(encoded: bytes) -> None:
    # as received: pydicom splits the value at the backslash when it decodes it, so a check of the
    # decoded text alone would see "['A', 'B']" and record that as the patient's ID
    ds = complete()
    put_raw(ds, 0x00100020, "LO", encoded)
    refusal = refusal_of(ds)
    assert refusal.reason == "invalid-patient-id"
    assert refusal.offending == (0x00100020,)


def test_a_patient_id_of_64_characters_is_accepted() -> None:
    ds = complete()
    put(ds, "PatientID", "P" * 64)
    assert inspect(ds).attributes["PatientID"] == "P" * 64


def test_identifiers_come_before_the_patient() -> None:
    ds = complete()
    del ds.PatientID
    del ds.StudyInstanceUID
    assert refusal_of(ds).reason == "missing-uid"


# -- refused: values the archive cannot record -----------------------------------------------------
@pytest.mark.parametrize("keyword", list(INTEGER_TAGS))
@pytest.mark.parametrize("number", [2**31, -(2**31) - 1, 10**11])
def test_an_integer_outside_32_bits_is_refused_naming_the_element(keyword: str, number: int) -> None:
    ds = complete()
    if dictionary_VR(INTEGER_TAGS[keyword]) == "IS":
        put(ds, keyword, str(number))
    else:  # US: two bytes on the wire can hold no such number; an element read as IS could
        put_raw(ds, INTEGER_TAGS[keyword], "IS", str(number).encode() + b" " * (len(str(number)) % 2))
    refusal = refusal_of(ds)
    assert refusal.reason == "value-out-of-range"
    assert refusal.offending == (INTEGER_TAGS[keyword],)
    assert refusal.comment.startswith(f"{keyword} {Tag(INTEGER_TAGS[keyword])} is out of range")


# -- accepted, incomplete package ------------------------------------------------------------------
def _doctor_code(code: str | None) -> Dataset:
    ds = complete()
    ds.PerformingPhysicianIdentificationSequence[0].PersonIdentificationCodeSequence = [
        code_item(code, "RU-SNILS", "Орлова Анна")
    ]
    return ds


def _procedure(value: str | None, meaning: str | None) -> Dataset:
    ds = complete()
    ds.ProcedureCodeSequence = [code_item(value, "RU-NMU", meaning)]
    return ds


@pytest.mark.parametrize(
    ("ds", "missing"),
    [
        (_without("PatientName"), ["PatientName"]),
        (_without("PatientBirthDate"), ["PatientBirthDate"]),
        (_without("PatientSex"), ["PatientSex"]),
        (_without("PerformingPhysicianIdentificationSequence"), ["PerformingPhysicianCode"]),
        (_doctor_code(None), ["PerformingPhysicianCode"]),
        (_without("PerformingPhysicianName"), ["PerformingPhysicianName"]),
        (_without("ProcedureCodeSequence"), ["ProcedureCode", "ProcedureCodeMeaning"]),
        (_procedure(None, "КТ органов грудной полости"), ["ProcedureCode"]),
        (_procedure("A06.09.005", None), ["ProcedureCodeMeaning"]),
    ],
    ids=[
        "name",
        "birth-date",
        "sex",
        "doctor-sequence",
        "doctor-code",
        "doctor-name",
        "procedure-sequence",
        "procedure-code",
        "procedure-meaning",
    ],
)
def test_an_incomplete_package_is_accepted_listing_what_it_lacks(ds: Dataset, missing: list[str]) -> None:
    found = inspect(ds)
    assert found.refusal is None
    assert found.missing == missing


def test_an_object_with_only_its_identifiers_lacks_the_whole_package() -> None:
    ds = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        setattr(ds, keyword, getattr(complete(), keyword))
    found = inspect(ds)
    assert found.refusal is None
    assert found.missing == PACKAGE
    assert found.attributes["PerformingPhysician"] == {"code": None, "name": None}
    assert found.attributes["SpecificCharacterSet"] is None


def test_the_requested_procedure_stands_in_for_a_missing_procedure_code() -> None:
    ds = _without("ProcedureCodeSequence")
    ds.RequestedProcedureCodeSequence = [code_item("A06.09.006", "RU-NMU", "КТ головы")]
    found = inspect(ds)
    assert found.missing == []
    assert found.attributes["ProcedureCodeValue"] == "A06.09.006"
    assert found.attributes["ProcedureCodeMeaning"] == "КТ головы"


def test_blank_values_count_as_missing() -> None:
    ds = complete()
    ds.PatientName = "  "
    ds.PatientSex = ""
    found = inspect(ds)
    assert found.missing == ["PatientName", "PatientSex"]
    assert found.attributes["PatientName"] is None and found.attributes["PatientSex"] is None


# -- pathology and emergency marks -----------------------------------------------------------------
def _marked(pathology: str | None, priority: str | None, creator: str = PRIVATE_CREATOR) -> Dataset:
    ds = complete()
    block = ds.private_block(PRIVATE_GROUP, creator, create=True)
    for element, value in ((0x10, pathology), (0x11, priority)):
        if value is not None:
            tag = block.get_tag(element)
            ds[tag] = DataElement(tag, "CS", value, validation_mode=config.IGNORE)
    return ds


@pytest.mark.parametrize(
    ("pathology", "priority", "marks"),
    [
        ("Y", "EMERGENCY", (True, True)),
        ("N", "ROUTINE", (False, False)),
        ("Y", None, (True, False)),
        (None, "EMERGENCY", (False, True)),
        ("y ", "emergency", (True, True)),  # case and padding do not matter
        ("YES", "URGENT", (False, False)),  # only the two defined values mark
    ],
)
def test_pathology_and_emergency_travel_in_the_cami_private_block(
    pathology: str | None, priority: str | None, marks: tuple[bool, bool]
) -> None:
    found = inspect(_marked(pathology, priority))
    assert found.refusal is None
    assert (found.pathology, found.emergency) == marks


def test_the_same_elements_under_another_private_creator_mark_nothing() -> None:
    found = inspect(_marked("Y", "EMERGENCY", creator="OTHER VENDOR"))
    assert (found.pathology, found.emergency) == (False, False)


@pytest.mark.parametrize("little_endian_syntax", ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"])
def test_the_cami_block_is_found_after_another_vendors_block_in_received_bytes(little_endian_syntax: str) -> None:
    """As a sender's bytes arrive (implicit VR too: no VR on the wire), with another vendor's
    block reserved first, so CAMI's marks sit at (0011,11xx)."""
    ds = complete()
    other = ds.private_block(PRIVATE_GROUP, "OTHER VENDOR", create=True)
    other.add_new(0x10, "CS", "N")  # the same element numbers in the other block mark nothing
    other.add_new(0x11, "CS", "ROUTINE")
    ours = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR + " ", create=True)  # padded as LO values are
    ours.add_new(0x10, "CS", "Y")
    ours.add_new(0x11, "CS", "EMERGENCY")
    assert ours.get_tag(0x10) == 0x00111110
    implicit = little_endian_syntax == "1.2.840.10008.1.2"
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = implicit, True
    write_dataset(buffer, ds)
    found = inspect(parse(buffer.getvalue(), little_endian_syntax))
    assert found.refusal is None
    assert (found.pathology, found.emergency) == (True, True)


def test_marks_do_not_save_an_object_the_rules_refuse() -> None:
    ds = _marked("Y", "EMERGENCY")
    del ds.PatientID
    assert refusal_of(ds).reason == "missing-patient-id"
