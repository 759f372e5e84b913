"""DICOM matching (QIDO-RS and C-FIND) through the query model's read module, on both query store
engines (SQLite, PostgreSQL).

The region of :mod:`tests.support.region` (five studies, two organisations, a merge,
a demographics update, hostile values) is projected by the real runner into the query store;
:func:`find` must answer each matching rule at each level as DICOM defines it, follow merges, and
never let a value act as SQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from projections.archive_index.matching import ATTRIBUTES, Condition, MatchingError, parse_condition
from projections.query_model.find import find, search_studies
from projections.query_model.store import QueryStore
from tests.support.postgres import QueryStores, project_into
from tests.support.region import (
    DECOY_NAME,
    HOSTILE_ACCESSION,
    HOSTILE_ID,
    HOSTILE_NAME,
    S1,
    S2,
    S3,
    S4,
    S5,
    publish,
    region_events,
    uid,
)


def keys(**values: str | list[str]) -> dict[str, Condition]:
    return {k: parse_condition(ATTRIBUTES[k], v, separators="\\,") for k, v in values.items()}


def studies(store: QueryStore, **values: str | list[str]) -> list[str]:
    return [r["StudyInstanceUID"] for r in find(store, "STUDY", keys(**values))]


@pytest.fixture
def region(query_stores: QueryStores, tmp_path: Path) -> Iterator[QueryStore]:
    log = publish(tmp_path, region_events())
    store = project_into(log, query_stores.open())
    log.close()
    yield store  # closed (a PostgreSQL schema dropped) by query_stores


def test_study_level_matching(region: QueryStore) -> None:
    w = region
    assert studies(w) == [S5, S4, S3, S1, S2]  # universal: everything, newest first
    # single value, list (comma and backslash), wildcard, case
    assert studies(w, StudyInstanceUID=S4) == [S4]
    assert studies(w, StudyInstanceUID=f"{S1},{S3}") == [S3, S1]
    assert studies(w, StudyInstanceUID=f"{S1}\\{S3}\\{S5}") == [S5, S3, S1]
    assert studies(w, StudyInstanceUID=[S2, S4]) == [S4, S2]  # a repeated parameter
    assert studies(w, ModalitiesInStudy="CT") == [S5, S1]
    assert studies(w, ModalitiesInStudy="CT,US") == [S5, S1, S2]
    assert studies(w, ModalitiesInStudy="?X") == [S4]
    assert studies(w, ModalitiesInStudy="ct") == []  # codes are case-sensitive
    assert studies(w, AccessionNumber="ACC-*") == [S5, S1, S2]
    assert studies(w, AccessionNumber="acc-1") == []
    # person names: wildcards, case-insensitive (Cyrillic too), the updated name counts
    assert studies(w, PatientName="петрова*") == [S5, S1, S2]
    assert studies(w, PatientName="Иванова*") == []  # matched as answered: the name is Петрова now
    assert studies(w, PatientName="ПЕТР?ВА^*") == [S5, S1, S2]  # the merged patient's new name
    assert studies(w, PatientName="петрова^анна") == [S5, S1, S2]
    assert studies(w, ReferringPhysicianName="смирнов*") == [S5, S4, S3, S1, S2]
    # dates and times
    assert studies(w, StudyDate="20260115") == [S3]
    assert studies(w, StudyDate="20260112-20260131") == [S4, S3]
    assert studies(w, StudyDate="-20260110") == [S1, S2]
    assert studies(w, StudyDate="20260120-") == [S5, S4]
    assert studies(w, StudyTime="1000-1100") == [S5, S4, S3, S1, S2]  # all at 10:15:00
    assert studies(w, StudyTime="-1014") == []
    assert studies(w, StudyTime="10") == [S5, S4, S3, S1, S2]  # 10 = the whole hour
    assert studies(w, StudyTime="1016-") == []
    assert studies(w, PatientBirthDate="19700101", ModalitiesInStudy="MR") == [S3]
    # several keys: all must match
    assert studies(w, ModalitiesInStudy="CT", StudyDate="-20260131") == [S1]


def test_merges_and_demographics_are_followed(region: QueryStore) -> None:
    w = region
    # asking for the prior or the surviving ID finds the whole merged patient
    assert studies(w, PatientID="P-OLD") == [S5, S1, S2]
    assert studies(w, PatientID="P-1") == [S5, S1, S2]
    assert studies(w, PatientID="P-?") == [S5, S4, S1, S2]  # P-OLD is shown as P-1
    [s2] = find(w, "STUDY", keys(StudyInstanceUID=S2))
    assert s2["PatientID"] == "P-1" and s2["PatientName"] == "Петрова^Анна"  # the latest name
    assert s2["PatientSex"] == "F" and s2["PatientBirthDate"] == "19700101"  # from the images
    assert (s2["NumberOfStudyRelatedSeries"], s2["NumberOfStudyRelatedInstances"]) == (1, 1)  # newest version once
    [s1] = find(w, "STUDY", keys(StudyInstanceUID=S1))
    assert s1["ModalitiesInStudy"] == ["CT"] and s1["NumberOfStudyRelatedInstances"] == 5  # duplicate collapsed
    assert s1["StudyDescription"] == "Компьютерная томография" and s1["StudyTime"] == "101500"

    patients = find(w, "PATIENT", {})
    by_id = {p["PatientID"]: p for p in patients}
    assert sorted(by_id) == sorted(["P-1", "P-4", HOSTILE_ID])  # P-OLD merged away
    p1 = by_id["P-1"]
    assert p1["PatientName"] == "Петрова^Анна"
    assert (
        p1["NumberOfPatientRelatedStudies"],
        p1["NumberOfPatientRelatedSeries"],
        p1["NumberOfPatientRelatedInstances"],
    ) == (3, 4, 7)
    assert [p["PatientID"] for p in find(w, "PATIENT", keys(PatientName="петрова*"))] == ["P-1"]
    assert [p["PatientID"] for p in find(w, "PATIENT", keys(PatientID="P-OLD"))] == ["P-1"]
    assert find(w, "PATIENT", keys(PatientName="Иванова*")) == []  # the patient is called Петрова now


def test_series_and_instance_levels(region: QueryStore) -> None:
    w = region
    series = find(w, "SERIES", keys(StudyInstanceUID=S1))
    assert [(s["SeriesNumber"], s["NumberOfSeriesRelatedInstances"]) for s in series] == [(1, 3), (2, 2)]
    assert series[0]["StudyInstanceUID"] == S1 and series[0]["Modality"] == "CT"
    assert series[0]["NumberOfStudyRelatedInstances"] == 5
    everywhere = find(w, "SERIES", keys(Modality="DX"))
    assert [s["SeriesInstanceUID"] for s in everywhere] == [uid(1, 4, 1), uid(1, 4, 2)]
    assert [s["SeriesInstanceUID"] for s in find(w, "SERIES", keys(SeriesNumber="2"))] == [uid(1, 4, 2), uid(1, 1, 2)]
    assert [s["SeriesInstanceUID"] for s in find(w, "SERIES", keys(PatientID="P-OLD", Modality="US"))] == [uid(1, 2, 1)]

    instances = find(w, "IMAGE", keys(StudyInstanceUID=S1, SeriesInstanceUID=uid(1, 1, 1)))
    assert [i["SOPInstanceUID"] for i in instances] == [uid(1, 1, 1, n) for n in range(3)]
    assert [i["InstanceNumber"] for i in instances] == [1, 2, 3]
    first = instances[0]
    assert (first["SOPClassUID"], first["Rows"], first["Columns"]) == ("1.2.840.10008.5.1.4.1.1.2", 512, 512)
    assert first["PatientName"] == "Петрова^Анна" and first["Modality"] == "CT"
    [newest] = find(w, "IMAGE", keys(SOPInstanceUID=uid(1, 2, 1, 0)))
    assert newest["Version"] == 2  # the newest version of a re-sent instance, once
    assert [
        i["SOPInstanceUID"] for i in find(w, "IMAGE", keys(InstanceNumber="2,3", SeriesInstanceUID=uid(1, 1, 1)))
    ] == [
        uid(1, 1, 1, 1),
        uid(1, 1, 1, 2),
    ]
    # naming one study and asking nothing of it: the rows come without the study's view, same order
    lean_keys = ["StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "SOPInstanceUID", "InstanceNumber"]
    for level in ("SERIES", "IMAGE"):
        full = find(w, level, keys(StudyInstanceUID=S1))
        lean = find(w, level, keys(StudyInstanceUID=S1), returned=lean_keys)
        assert "PatientName" not in lean[0] and "PatientName" in full[0]
        assert [{k: r[k] for k in lean_keys if k in r} for r in lean] == [
            {k: r[k] for k in lean_keys if k in r} for r in full
        ]
    # limit and offset page through a stable order
    every = [i["SOPInstanceUID"] for i in find(w, "IMAGE", {}, limit=100)]
    assert len(every) == 10
    pages = [i["SOPInstanceUID"] for o in range(0, 10, 3) for i in find(w, "IMAGE", {}, limit=3, offset=o)]
    assert pages == every


def test_hostile_values_match_literally(region: QueryStore) -> None:
    w = region
    assert studies(w, PatientName=HOSTILE_NAME.replace("\\", "?")) == [S3]
    assert studies(w, PatientName="o'brien^100%*") == [S3]  # % is literal, case folded
    assert sorted(studies(w, PatientName="O'Brien^100??*")) == sorted([S3, S4])
    assert studies(w, PatientName=DECOY_NAME.replace("\\", "?")) == [S4]
    # a backslash separates DICOM values (LO forbids it in a value): "P'5" or "%_Ж", neither exists
    assert studies(w, PatientID=HOSTILE_ID) == []
    assert studies(w, PatientID=HOSTILE_ID.replace("\\", "?")) == [S3]
    assert studies(w, PatientID="P'5?%*") == [S3] and studies(w, PatientID="P'5?%") == []
    assert studies(w, AccessionNumber=HOSTILE_ACCESSION.replace("\\", "*")) == [S3]
    assert studies(w, StudyDescription="' OR 1=1 --") == []
    assert find(w, "SERIES", keys(SeriesDescription="x') OR ('1'='1")) == []
    assert search_studies(w)  # the tables are still there


def test_keys_outside_the_level_are_refused(region: QueryStore) -> None:
    with pytest.raises(MatchingError) as caught:
        find(region, "STUDY", keys(SOPInstanceUID=uid(1, 1, 1, 0)))
    assert caught.value.attribute == "SOPInstanceUID"
    with pytest.raises(MatchingError):
        find(region, "PATIENT", keys(StudyDate="20260101"))
    with pytest.raises(ValueError):
        find(region, "STUDY", {}, limit=0)
    results: list[dict[str, Any]] = find(region, "STUDY", {}, limit=2, offset=4)
    assert [r["StudyInstanceUID"] for r in results] == [S2]
