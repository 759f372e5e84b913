"""The pure summaries of the query model (:mod:`projections.query_model.fold`): a study and its
series from the newest versions of their instances."""

from __future__ import annotations

import json
from typing import Any

from projections.query_model.fold import Patient, report_status, summarise_series, summarise_study, time_key


def instance(sop: str, series: str, received_us: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "study_uid": "1.2.3", "series_uid": series, "sop_uid": sop, "version": 1, "log_version": received_us,
        "received_at": received_us, "patient_id": "P-1", "issuer": None, "patient_name": "Иванова^Анна",
        "birth_date": "19700101", "sex": "F", "study_date": "2026-01-10", "study_time": "1015", "study_id": "1",
        "study_description": "КТ ОГК", "accession_number": "ACC-1", "referring_physician": "Смирнов^Олег",
        "series_number": 1, "series_description": "axial", "modality": "CT", "body_part": "CHEST",
        "size": 1000, "organisation": "1.2.643.1", "pathology": 0, "emergency": 0, "missing": "[]",
    }  # fmt: skip
    row.update(values)
    return row


def test_each_attribute_comes_from_the_newest_arrival_that_carries_it() -> None:
    rows = [
        instance("1", "1.2.3.1", 10),
        instance("2", "1.2.3.1", 20, study_description="КТ ОГК повторно", missing='["PatientSex"]'),
        # the newest arrival: a document without a description or a series number, another modality
        instance(
            "3", "1.2.3.2", 30, study_description=None, series_number=None, modality="SR", organisation="1.2.643.2"
        ),
    ]
    study = summarise_study(rows, ["draft"], Patient("P-1", {}))
    assert study["study_description"] == "КТ ОГК повторно"  # the SR carries none: the one before it
    assert json.loads(study["modalities"]) == ["CT", "SR"]
    assert (study["series_count"], study["instance_count"], study["size"]) == (2, 3, 3000)
    assert json.loads(study["organisations"]) == ["1.2.643.1", "1.2.643.2"]
    assert json.loads(study["missing"]) == ["PatientSex", "Report"]  # no signed report yet
    assert study["report_status"] == "draft"
    assert (study["newest_received_us"], study["first_received_us"]) == (30, 10)
    assert study["time_key"] == "101500.000000"
    series = summarise_series([r for r in rows if r["series_uid"] == "1.2.3.2"])
    assert (series["series_number"], series["modality"], series["instance_count"]) == (None, "SR", 1)


def test_the_patient_shown_is_the_surviving_one_with_the_latest_demographics() -> None:
    rows = [instance("1", "1.2.3.1", 10, patient_id="P-OLD")]
    study = summarise_study(rows, ["signed", "amendment"], Patient("P-1", {"PatientName": "ПЕТРОВА^Анна"}))
    assert (study["patient_id"], study["recorded_patient_id"], json.loads(study["patient_ids"])) == (
        "P-1",
        "P-OLD",
        ["P-OLD"],
    )
    assert (study["patient_name"], study["name_folded"]) == ("ПЕТРОВА^Анна", "петрова^анна")
    assert study["image_name_folded"] == "иванова^анна"  # what the images say, for the study lists
    assert study["sex"] == "F"  # not updated: from the images
    assert study["report_status"] == "amended" and json.loads(study["missing"]) == []


def test_report_status_and_time_keys() -> None:
    assert report_status([]) == "none"
    assert report_status(["draft", "signed"]) == "signed"
    assert report_status(["amendment", "draft"]) == "amended"
    assert time_key("10:15") == "101500.000000" and time_key(None) == "000000.000000"
