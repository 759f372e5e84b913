"""One newest-version rule for every read of the archive index and the query model, on both
warehouse backends.

An instance is identified by its SOPInstanceUID. When the log holds a newer version of it filed
under another study (an object re-sent with the same SOPInstanceUID under another
StudyInstanceUID, as logs written before the write side refused that may hold), the newest version
wins everywhere: QIDO-RS/C-FIND (:func:`find`), the study lists (:func:`search_studies`), the views
C-MOVE/C-GET resolve through (:func:`study_series`, :func:`series_instances`) and the stored
instances WADO serves (:func:`stored_instances`) list it under its new study only. The query model
on both of its engines (SQLite, PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from projections.archive_index.matching import ATTRIBUTES, Condition, parse_condition
from projections.archive_index.views import (
    instance_location,
    series_instances,
    stored_instances,
    study_series,
)
from projections.query_model.find import find, search_studies
from projections.query_model.store import QueryStore
from projections.warehouse import Warehouse
from schemas.events import Event
from tests.support.postgres import QueryStores, project_into
from tests.support.region import ORG_A, T0, feed, received, uid

OLD, NEW, GONE = uid(7, 1), uid(7, 2), uid(7, 3)
OLD_SERIES, NEW_SERIES, GONE_SERIES = uid(7, 1, 1), uid(7, 2, 1), uid(7, 3, 1)
MOVED = uid(7, 1, 1, 1)  # version 1 in OLD, version 2 in NEW
STAYS = uid(7, 1, 1, 2)  # only ever in OLD
WHOLLY_MOVED = uid(7, 3, 1, 1)  # GONE's only instance: version 1 in GONE, version 2 in NEW
TIED = uid(7, 1, 1, 3)  # version 1 twice: in OLD, then later in NEW (the later arrival wins)
PATIENT = "P-MOVE"


def moved_events() -> list[Event]:
    def instance(study: str, series: str, sop: str, number: int, version: int, sha: str, hours: int, day: str) -> Event:
        return received(
            study, series, sop, patient_id=PATIENT, patient_name="Сидоров^Иван", organisation=ORG_A,
            study_date=day, instance_number=number, version=version, sha=sha, at=T0 + timedelta(hours=hours),
        )  # fmt: skip

    return [
        instance(OLD, OLD_SERIES, MOVED, 1, 1, "a", 0, "20260101"),
        instance(OLD, OLD_SERIES, STAYS, 2, 1, "c", 0, "20260101"),
        instance(OLD, OLD_SERIES, TIED, 3, 1, "d", 0, "20260101"),
        instance(GONE, GONE_SERIES, WHOLLY_MOVED, 1, 1, "e", 0, "20260103"),
        # the re-sends: the same organisation and patient, another study
        instance(NEW, NEW_SERIES, MOVED, 1, 2, "b", 1, "20260102"),
        instance(NEW, NEW_SERIES, WHOLLY_MOVED, 2, 2, "f", 1, "20260102"),
        instance(NEW, NEW_SERIES, TIED, 3, 1, "9", 2, "20260102"),
    ]


@pytest.fixture
def moved(warehouse: Warehouse, query_stores: QueryStores, tmp_path: Path) -> Iterator[tuple[Warehouse, QueryStore]]:
    """The archive index (warehouse) and the query model of the same log."""
    log, _ = feed(tmp_path, warehouse, moved_events())
    store = project_into(log, query_stores.open())
    log.close()
    yield warehouse, store  # the store is closed by query_stores


@pytest.fixture
def moved_index(warehouse: Warehouse, tmp_path: Path) -> Iterator[Warehouse]:
    """The archive index (warehouse) of the log alone."""
    log, _ = feed(tmp_path, warehouse, moved_events())
    log.close()
    yield warehouse


def keys(**values: str) -> dict[str, Condition]:
    return {k: parse_condition(ATTRIBUTES[k], v) for k, v in values.items()}


def sops(rows: list[dict[str, object]], key: str = "SOPInstanceUID") -> list[str]:
    return sorted(str(r[key]) for r in rows)


def test_qido_and_c_find_list_a_moved_instance_under_its_new_study_only(
    moved: tuple[Warehouse, QueryStore],
) -> None:
    _, w = moved
    # the study that lost its only instance is gone; the others count what they hold now
    studies = {s["StudyInstanceUID"]: s for s in find(w, "STUDY", {})}
    assert sorted(studies) == sorted([OLD, NEW])
    assert studies[OLD]["NumberOfStudyRelatedInstances"] == 1
    assert studies[NEW]["NumberOfStudyRelatedInstances"] == 3
    assert find(w, "STUDY", keys(StudyInstanceUID=GONE)) == []
    # a one-study page: the newest-dated study (GONE) holds nothing now; the page is the next one
    assert [s["StudyInstanceUID"] for s in find(w, "STUDY", {}, limit=1)] == [NEW]
    assert [s["StudyInstanceUID"] for s in find(w, "STUDY", {}, limit=1, offset=1)] == [OLD]

    # the instance itself: once, in its new place, in its newest version
    (found,) = find(w, "IMAGE", keys(SOPInstanceUID=MOVED))
    assert (found["StudyInstanceUID"], found["SeriesInstanceUID"], found["Version"]) == (NEW, NEW_SERIES, 2)
    (tied,) = find(w, "IMAGE", keys(SOPInstanceUID=TIED))
    assert tied["StudyInstanceUID"] == NEW  # equal version numbers: the later arrival
    for returned in (None, ["SOPInstanceUID", "StudyInstanceUID"]):  # the full and the lean form
        assert sops(find(w, "IMAGE", keys(StudyInstanceUID=OLD), returned=returned)) == [STAYS]
        assert sops(find(w, "IMAGE", keys(StudyInstanceUID=NEW), returned=returned)) == sorted(
            [MOVED, WHOLLY_MOVED, TIED]
        )
    (old_series,) = find(w, "SERIES", keys(StudyInstanceUID=OLD))
    assert old_series["NumberOfSeriesRelatedInstances"] == 1
    (patient,) = find(w, "PATIENT", keys(PatientID=PATIENT))
    assert (patient["NumberOfPatientRelatedStudies"], patient["NumberOfPatientRelatedInstances"]) == (2, 4)

    # the study lists (web pages, CLI, C-MOVE/C-GET by patient) agree
    listed = {s["study_uid"]: s for s in search_studies(w, patient_id=PATIENT)}
    assert sorted(listed) == sorted([OLD, NEW])
    assert (listed[OLD]["instance_count"], listed[NEW]["instance_count"]) == (1, 3)


def test_wado_and_c_move_serve_a_moved_instance_from_its_new_study_only(moved_index: Warehouse) -> None:
    w = moved_index
    # what C-MOVE/C-GET resolve a study or series identifier to
    assert [s["series_uid"] for s in study_series(w, OLD)] == [OLD_SERIES]
    assert study_series(w, OLD)[0]["instance_count"] == 1
    assert study_series(w, GONE) == []
    assert sops(series_instances(w, OLD, OLD_SERIES), "sop_uid") == [STAYS]
    new_rows = {r["sop_uid"]: r for r in series_instances(w, NEW, NEW_SERIES)}
    assert sorted(new_rows) == sorted([MOVED, WHOLLY_MOVED, TIED])
    assert (new_rows[MOVED]["version"], new_rows[MOVED]["blob_sha256"]) == (2, "b" * 64)

    # what WADO-RS/WADO-URI serve (study, series, one instance)
    assert [s.sop_uid for s in stored_instances(w, OLD)] == [STAYS]
    assert stored_instances(w, OLD, OLD_SERIES, MOVED) == []  # 404 at the old place
    assert stored_instances(w, GONE) == []
    (served,) = stored_instances(w, NEW, NEW_SERIES, MOVED)
    assert (served.study_uid, served.version, served.sha256) == (NEW, 2, "b" * 64)
    assert [s.sop_uid for s in stored_instances(w, NEW)] == [MOVED, WHOLLY_MOVED, TIED]  # by instance number
    (tied,) = stored_instances(w, NEW, sop_uid=TIED)
    assert tied.sha256 == "9" * 64

    # where the bytes are: the newest version, in its new place; an older one on request
    assert instance_location(w, MOVED) == {
        "sha256": "b" * 64, "size": 1000, "store": "file://", "version": 2, "study_uid": NEW, "series_uid": NEW_SERIES,
    }  # fmt: skip
    assert (instance_location(w, MOVED, version=1) or {}).get("study_uid") == OLD
