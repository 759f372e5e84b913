"""C-FIND response identifiers written as element bytes (implicit and explicit VR little endian)
are byte for byte what pydicom writes from ordinary elements, and read back to the same values."""

from __future__ import annotations

from datetime import date
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dsutils import decode, encode

from api.dicom.find import ResponseIdentifiers

ROWS: dict[str, list[dict[str, Any]]] = {
    "STUDY": [
        {
            "StudyInstanceUID": "1.2.826.0.1.3680043.8.498.8.123",  # odd length: padded with NUL
            "PatientID": "BP-12",
            "PatientName": "Иванов^Иван",  # 21 bytes in UTF-8: padded with a space
            "StudyDate": date(2021, 3, 4),
            "StudyTime": "101500",
            "ModalitiesInStudy": ["CT", "MR"],
            "AccessionNumber": "A1",
            "NumberOfStudyRelatedInstances": 20,
            "StudyDescription": "Исследование\\органов",
        },
        {"StudyInstanceUID": "1.2.3", "PatientID": "", "PatientName": None, "ModalitiesInStudy": []},
    ],
    "SERIES": [{"StudyInstanceUID": "1.2.3", "SeriesInstanceUID": "1.2.3.4", "Modality": "CT", "SeriesNumber": 7}],
    "IMAGE": [
        {
            "StudyInstanceUID": "1.2.3",
            "SeriesInstanceUID": "1.2.3.4",
            "SOPInstanceUID": "1.2.3.4.5",
            "InstanceNumber": -3,
            "Rows": 512,
            "Columns": 8,
        }
    ],
}


def _asked(level: str) -> list[Any]:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    identifier.SpecificCharacterSet = "ISO_IR 192"
    keywords = {
        "STUDY": ("PatientName", "PatientID", "StudyDate", "StudyTime", "ModalitiesInStudy", "AccessionNumber",
                  "NumberOfStudyRelatedInstances", "StudyDescription", "StudyInstanceUID", "PatientBirthDate"),
        "SERIES": ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber"),
        "IMAGE": ("SeriesInstanceUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns"),
    }[level]  # fmt: skip
    for keyword in keywords:
        setattr(identifier, keyword, None)
    identifier.ReferencedStudySequence = Sequence()  # a key the archive does not hold: returned empty
    identifier.add_new(0x00091010, "LO", None)  # a private one too
    return [e for e in identifier if e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")]


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian])
@pytest.mark.parametrize("level", ["STUDY", "SERIES", "IMAGE"])
def test_pre_encoded_identifiers_are_the_bytes_pydicom_writes(level: str, syntax: str) -> None:
    implicit = syntax == ImplicitVRLittleEndian
    asked = _asked(level)
    ordinary = ResponseIdentifiers(asked, level, "CAMI", "patient")
    pre_encoded = ResponseIdentifiers(asked, level, "CAMI", "patient", syntax)
    for row in ROWS[level]:
        expected = encode(ordinary(row), implicit, True)
        written = encode(pre_encoded(row), implicit, True)
        assert expected is not None and written == expected
        back = decode(BytesIO(written), implicit, True)
        assert back.SpecificCharacterSet == "ISO_IR 192" and back.QueryRetrieveLevel == level
        if level == "STUDY" and row["PatientName"]:
            assert str(back.PatientName) == "Иванов^Иван"
            assert list(back.ModalitiesInStudy) == ["CT", "MR"]
            assert back.NumberOfStudyRelatedInstances == 20
        if level == "IMAGE":
            assert (back.Rows, back.Columns, back.InstanceNumber) == (512, 8, -3)


def test_another_transfer_syntax_gets_ordinary_elements() -> None:
    asked = _asked("SERIES")
    identifier = ResponseIdentifiers(asked, "SERIES", "CAMI", "study", "1.2.840.10008.1.2.2")(ROWS["SERIES"][0])
    assert not any(element.is_raw for element in identifier.elements())
    written = encode(identifier, False, False)  # explicit VR big endian, as pynetdicom would send it
    assert written is not None
    back = decode(BytesIO(written), False, False)
    assert (back.SeriesNumber, back.Modality, back.SeriesInstanceUID) == (7, "CT", "1.2.3.4")
