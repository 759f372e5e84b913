"""C-FIND matching (:func:`api.dicom.find.c_find_responses`) on a running archive's index.

Studies arrive through dcmtk's storescu; identifiers are encoded and decoded by pynetdicom's own
codec, as the Q/R SCP receives them (in UTF-8 and in ISO 8859-5), and every response identifier
must encode back. The network side (findscu against the SCP) is :mod:`api.dicom.qr`'s test."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode, encode

from api.access import AccessRecorder, Reader
from api.dicom.find import IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, PENDING, UNABLE_TO_PROCESS, c_find_responses
from schemas.events import Actor
from tests.support.find_studies import NAME_A, NAME_B, make_series, send
from tests.support.readside import ORG, ORG_B, ROOT_UID, ReadSide

WORKSTATION = Reader(Actor("RAD_WS1", "radiologist"), ORG, "127.0.0.1")


@dataclass
class Scene:
    side: ReadSide
    study_a: str
    study_b: str
    ct_series: str
    ct_sops: list[str]


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    side = ReadSide.start(tmp_path_factory.mktemp("c-find"))
    try:
        study_a, study_b = generate_uid(prefix=ROOT_UID), generate_uid(prefix=ROOT_UID)
        ct = make_series(study_a, 3, patient_id="QF-1", name=NAME_A)
        send(side, ct + make_series(study_a, 1, patient_id="QF-1", name=NAME_A, modality="MR", series_number=2))
        send(side, make_series(study_b, 1, patient_id="QF-2", name=NAME_B, study_date="20260201"), ORG_B)
        side.wait_indexed(study_a, 4)
        side.wait_indexed(study_b, 1)
        yield Scene(side, study_a, study_b, str(ct[0].SeriesInstanceUID), [str(d.SOPInstanceUID) for d in ct])
    finally:
        side.stop()


def wire(ds: Dataset) -> Dataset:
    """Through pynetdicom's codec (explicit VR little endian), as an identifier travels."""
    data = encode(ds, False, True)
    assert data is not None
    return decode(BytesIO(data), False, True)


def identifier(level: str, charset: str | None = None, **keys: Any) -> Dataset:
    ds = Dataset()
    if charset:
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return wire(ds)


def c_find(scene: Scene, ds: Dataset, model: str = "study") -> list[tuple[int, Dataset | None]]:
    side = scene.side
    recorder = AccessRecorder(side.archive.event_log, source_node="qr-scp:test")
    ae_title = side.archive.senders().ae_title
    answers = list(c_find_responses(side.archive.query_store, recorder, WORKSTATION, ds, model, ae_title))
    return [(status, wire(found) if found is not None else None) for status, found in answers]


def seen(side: ReadSide) -> set[str]:
    return {e.envelope.event_id for e in side.accesses()}


def new_accesses(side: ReadSide, before: set[str]) -> list[dict[str, Any]]:
    return [e.payload for e in side.accesses() if e.envelope.event_id not in before]


def test_study_root_study_level(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    ask = identifier(
        "STUDY",
        "ISO_IR 192",
        PatientName="кузнецова*",
        PatientID="",
        StudyInstanceUID="",
        StudyDate="20260101-20260131",
        ModalitiesInStudy="",
        NumberOfStudyRelatedInstances="",
        InstitutionName="",  # an optional key the archive does not hold: returned empty
    )
    answers = c_find(scene, ask)
    assert [status for status, _ in answers] == [PENDING]
    found = answers[0][1]
    assert found is not None
    assert found.SpecificCharacterSet == "ISO_IR 192" and found.QueryRetrieveLevel == "STUDY"
    assert str(found.PatientName) == NAME_A and found.PatientID == "QF-1"
    assert found.StudyInstanceUID == scene.study_a and found.StudyDate == "20260110"
    assert list(found.ModalitiesInStudy) == ["CT", "MR"] and found.NumberOfStudyRelatedInstances == 4
    assert "InstitutionName" in found and found.InstitutionName == ""
    assert found.RetrieveAETitle == "CAMI"
    assert "AccessionNumber" not in found  # only what was asked (and the unique keys)

    [event] = new_accesses(side, before)
    assert (event["action"], event["channel"], event["results"], event["outcome"]) == ("query", "c-find", 1, "ok")
    assert '"PatientName": "кузнецова*"' in event["query"] and event["StudyInstanceUID"] is None


def test_cyrillic_in_iso_8859_5_and_lists(scene: Scene) -> None:
    ask = identifier("STUDY", "ISO_IR 144", PatientName="КУЗНЕЦОВА^МАРИЯ*", StudyInstanceUID="")
    [(status, found)] = c_find(scene, ask)
    assert status == PENDING and found is not None and found.StudyInstanceUID == scene.study_a
    both = c_find(scene, identifier("STUDY", StudyInstanceUID=[scene.study_a, scene.study_b], PatientID=""))
    assert sorted(str(f.PatientID) for _, f in both if f is not None) == ["QF-1", "QF-2"]
    assert c_find(scene, identifier("STUDY", PatientID="NOBODY")) == []  # no match: no pending answer


def test_patient_series_and_image_levels(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    [(_, patient)] = c_find(
        scene,
        identifier("PATIENT", PatientID="QF-1", PatientName="", PatientBirthDate="", NumberOfPatientRelatedStudies=""),
        "patient",
    )
    assert patient is not None and str(patient.PatientName) == NAME_A and patient.PatientBirthDate == "19720305"
    assert patient.NumberOfPatientRelatedStudies == 1

    series = c_find(scene, identifier("SERIES", StudyInstanceUID=scene.study_a, SeriesInstanceUID="", Modality=""))
    assert [(f.Modality, f.StudyInstanceUID) for _, f in series if f is not None] == [
        ("CT", scene.study_a),
        ("MR", scene.study_a),
    ]
    images = c_find(
        scene,
        identifier("IMAGE", StudyInstanceUID=scene.study_a, SeriesInstanceUID=scene.ct_series, SOPInstanceUID=""),
        "patient",
    )
    assert [f.SOPInstanceUID for _, f in images if f is not None] == scene.ct_sops
    modality = c_find(scene, identifier("SERIES", Modality="CT", SeriesInstanceUID=""))
    assert len(modality) == 2  # relational: the study key is not required

    events = new_accesses(side, before)
    assert sorted(e["results"] for e in events) == [1, 2, 2, 3]
    assert {e["channel"] for e in events} == {"c-find"}
    assert sorted(e["StudyInstanceUID"] or "" for e in events) == ["", "", scene.study_a, scene.study_a]


@pytest.mark.parametrize(
    ("model", "keys", "expected"),
    [
        ("study", {"PatientID": "QF-1"}, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),  # no QueryRetrieveLevel
        ("study", {"QueryRetrieveLevel": "PATIENT", "PatientID": "QF-1"}, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
        ("patient", {"QueryRetrieveLevel": "WARD"}, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS),
        ("study", {"QueryRetrieveLevel": "STUDY", "StudyDate": "20260131-20260101"}, UNABLE_TO_PROCESS),
        ("study", {"QueryRetrieveLevel": "STUDY", "StudyDate": "2026013"}, UNABLE_TO_PROCESS),
        ("study", {"QueryRetrieveLevel": "STUDY", "StudyTime": "2500"}, UNABLE_TO_PROCESS),
        ("study", {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": "1.2.*"}, UNABLE_TO_PROCESS),
        ("study", {"QueryRetrieveLevel": "SERIES", "SeriesInstanceUID": "1.02.3"}, UNABLE_TO_PROCESS),
        ("study", {"QueryRetrieveLevel": "STUDY", "NumberOfStudyRelatedInstances": "4"}, UNABLE_TO_PROCESS),
    ],
)
def test_bad_identifiers_get_failure_statuses(scene: Scene, model: str, keys: dict[str, str], expected: int) -> None:
    side = scene.side
    before = seen(side)
    ds = Dataset()
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    assert c_find(scene, wire(ds), model) == [(expected, None)]
    assert new_accesses(side, before) == []  # nothing was read
