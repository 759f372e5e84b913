"""What the agent reads in an object: pathology and emergency marks, CAMI's hard rules, what is missing."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian

from api.demo.synthetic import part10_bytes, region, synthetic_study
from ingest.agent.config import DEFAULT_PATHOLOGY_CODES, Rules
from ingest.agent.rules import Marks, examine, file_problems, hard_rule_problems, marks, missing, sr_finding
from ingest.validation import PATHOLOGY_ELEMENT, PRIORITY_ELEMENT, PRIVATE_CREATOR, PRIVATE_GROUP, inspect

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
ABNORMAL = ("SCT", "263654008")


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(str(path))


def image(pathology: str | None = None, priority: str | None = None) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.1"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = "1.2.3.4.0"
    ds.PatientID = "1234567890123456"
    if pathology is not None or priority is not None:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        if pathology is not None:
            block.add_new(PATHOLOGY_ELEMENT, "CS", pathology)
        if priority is not None:
            block.add_new(PRIORITY_ELEMENT, "CS", priority)
    return ds


def code(scheme: str, value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator, item.CodeValue, item.CodeMeaning = scheme, value, meaning
    return item


def content(
    value_type: str, name: Dataset, children: list[Dataset] | None = None, concept: Dataset | None = None
) -> Dataset:
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = value_type
    item.ConceptNameCodeSequence = Sequence([name])
    if concept is not None:
        item.ConceptCodeSequence = Sequence([concept])
    if value_type == "TEXT":
        item.TextValue = "Очаг в S6 правого лёгкого"
    if children:
        item.ContentSequence = Sequence(children)
    return item


def report(finding: Dataset, sop_class: str = COMPREHENSIVE_SR) -> Dataset:
    """An SR whose finding sits three levels down: report > findings container > text > code."""
    ds = image()
    ds.SOPClassUID = sop_class
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"
    finding_item = content("CODE", code("DCM", "121071", "Finding"), concept=finding)
    observation = content("TEXT", code("DCM", "121073", "Impression"), [finding_item])
    findings = content("CONTAINER", code("DCM", "121070", "Findings"), [observation])
    ds.ContentSequence = Sequence([findings])
    return ds


def test_the_private_block_marks_pathology_and_emergency() -> None:
    assert marks(image("Y", "ROUTINE"), Rules()) == Marks(pathology=True, emergency=False)
    assert marks(image("N", "EMERGENCY"), Rules()) == Marks(pathology=False, emergency=True)
    assert marks(image(), Rules()) == Marks()
    # the private mark counts only when the rules say so; the emergency always does
    assert marks(image("Y", "EMERGENCY"), Rules(pathology_marks=("mis", "sr"))) == Marks(False, True)


def test_an_object_cami_would_refuse_still_carries_its_marks() -> None:
    ds = image("Y", "EMERGENCY")
    del ds.PatientID
    assert hard_rule_problems(ds) != []
    assert marks(ds, Rules()) == Marks(pathology=True, emergency=True)


def test_the_demo_regions_marks_are_read() -> None:
    org = region()[0]
    sick = synthetic_study(org, "CT", instances=1, seed=3, pathology=True, emergency=True)
    well = synthetic_study(org, "CT", instances=1, seed=4)
    for study, expected in ((sick, Marks(True, True)), (well, Marks())):
        ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10_bytes(study.instances[0])))
        assert marks(ds, Rules()) == expected
        assert hard_rule_problems(ds) == [] and missing(ds) == []


def test_an_sr_with_a_pathology_finding_deep_in_its_tree() -> None:
    abnormal = report(code(*ABNORMAL, "Abnormal"))
    assert ABNORMAL in DEFAULT_PATHOLOGY_CODES
    assert marks(abnormal, Rules()) == Marks(pathology=True, emergency=False, sr_pathology=True)
    assert sr_finding(abnormal, DEFAULT_PATHOLOGY_CODES)
    normal = report(code("SCT", "17621005", "Normal"))
    assert marks(normal, Rules()) == Marks()
    # the SR mark is off, or the finding's code is not in the configured list
    assert marks(abnormal, Rules(pathology_marks=("private", "mis"))) == Marks()
    assert marks(abnormal, Rules(pathology_codes=(("SCT", "86049000"),))) == Marks()
    # only structured reports count: the same tree in an image is not a report
    assert not sr_finding(report(code(*ABNORMAL, "Abnormal"), sop_class="1.2.840.10008.5.1.4.1.1.2"), (ABNORMAL,))
    # Basic Text and Enhanced SR too
    assert sr_finding(report(code(*ABNORMAL, "Abnormal"), "1.2.840.10008.5.1.4.1.1.88.11"), (ABNORMAL,))
    assert sr_finding(report(code(*ABNORMAL, "Abnormal"), "1.2.840.10008.5.1.4.1.1.88.22"), (ABNORMAL,))


def test_the_bundled_dcmtk_sr_finding_is_found_when_configured() -> None:
    ds = pydicom.dcmread(bundled("test-SR.dcm"))
    assert not sr_finding(ds, DEFAULT_PATHOLOGY_CODES)
    assert marks(ds, Rules(pathology_codes=(("99_OFFIS_DCMTK", "2222"),))).sr_pathology


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"])
def test_real_files_pass_the_hard_rules(name: str) -> None:
    path = bundled(name)
    ds = pydicom.dcmread(path)
    assert hard_rule_problems(ds) == []
    assert file_problems(path.read_bytes()) == []
    assert marks(ds, Rules()) == Marks()
    # CAMI would accept them as incomplete packages: no doctor's or procedure code
    assert {"PerformingPhysicianCode", "ProcedureCode"} <= set(missing(ds))


def test_what_cami_refuses_the_agent_holds_with_the_same_words() -> None:
    no_patient = image()
    del no_patient.PatientID
    refusal = inspect(no_patient).refusal
    assert refusal is not None
    assert hard_rule_problems(no_patient) == [refusal.comment]
    assert hard_rule_problems(no_patient) == [
        "PatientID (0010,0020) is missing: regional rules require a unique patient ID"
    ]
    bad_uid = image()
    bad_uid.SOPInstanceUID = "1.2.03.x"
    assert hard_rule_problems(bad_uid) == [
        "SOPInstanceUID (0008,0018) is not a valid UID (digits and dots, no leading zeros, max 64)"
    ]
    out_of_range = image()
    out_of_range.InstanceNumber = "4294967296"
    assert hard_rule_problems(out_of_range) == [
        "InstanceNumber (0020,0013) is out of range: the archive records -2147483648 to 2147483647"
    ]
    # a real file without a PatientID (the bundled SR) is refused by CAMI's write path too
    sr = bundled("test-SR.dcm")
    assert hard_rule_problems(pydicom.dcmread(sr)) == file_problems(sr.read_bytes()) == [refusal.comment]


def test_file_problems_runs_camis_write_path_checks() -> None:
    assert file_problems(bundled("MR_truncated.dcm").read_bytes()) == [
        "(7FE0,0010) declares 8192 bytes, only 8130 remain: truncated object or invalid length (byte 1154)"
    ]
    assert file_problems(b"not dicom") == ["not a DICOM Part-10 file (no 'DICM' marker after the 128-byte preamble)"]


def test_missing_lists_the_regional_attributes() -> None:
    org = region()[0]
    study = synthetic_study(org, "DX", instances=1, seed=5, incomplete=("PerformingPhysicianCode", "PatientSex"))
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(part10_bytes(study.instances[0])))
    assert missing(ds) == ["PatientSex", "PerformingPhysicianCode"]
    assert hard_rule_problems(ds) == []


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_the_finding_is_read_from_the_header_the_agent_parses(syntax: str) -> None:
    """The queue reads the marks from CAMI's own parse of the file (implicit VR, deflated)."""
    ds = pydicom.dcmread(bundled("test-SR.dcm"))
    ds.PatientID = "1234567890123456"
    ds.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    examination = examine(buffer.getvalue())
    assert examination.problems == [] and examination.transfer_syntax == syntax
    assert marks(examination.header, Rules(pathology_codes=(("99_OFFIS_DCMTK", "2222"),))).sr_pathology


def test_examine_refuses_what_is_not_a_dicom_object() -> None:
    with pytest.raises(ValueError, match="not a DICOM Part-10 file"):
        examine(b"\x00" * 200)
