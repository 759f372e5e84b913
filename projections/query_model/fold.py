"""The ``query-model`` projection and the pure summaries of a study and its series.

The fold is the archive index's own (:class:`projections.archive_index.fold.ArchiveIndex`): the
same event gives the same instance, report, demographics and merge rows, keyed by their natural
keys with the log position as version, whichever store they go to. The query store
(:mod:`projections.query_model.store`) upserts them and, in the same transaction, recomputes the
study and series rows of the studies they touch with :func:`summarise_study`, so a study row is
always exactly what its newest instance versions say (counts, modalities in study, size), and
redelivery or a rebuild from offset 0 gives the same rows.

The rules are those of the archive index's views (:mod:`projections.archive_index.views`):

* the newest version of an instance (by SOPInstanceUID) is the highest version number, then the
  later arrival, then the later log position; only it is listed, under its own study and series;
* a study's or series' attributes are those of its newest arrival among those newest versions
  (arrival time, then log position), each attribute from the newest arrival that carries it (an
  object without a StudyDescription, say an SR, leaves the study's description as it was);
* a study is shown under the surviving ID of its patient (merges followed) with the latest
  PatientUpdated demographics of that ID where any came; what the images say is kept beside it
  (``image_name_folded``, ``recorded_patient_id``) for the study lists, which match it too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from projections.archive_index.fold import REPORT_MISSING, ArchiveIndex
from schemas.events import Event
from streams.processing import Row, Source

#: report status of a study from the stages of its reports' rows (the strongest wins)
_STATUS_RANK = {"none": 0, "draft": 1, "signed": 2, "amended": 3}
_STAGE_STATUS = {"draft": "draft", "signed": "signed", "amendment": "amended"}

#: DICOM attribute of PatientUpdated -> the study row column it replaces
DEMOGRAPHIC_COLUMNS = {
    "IssuerOfPatientID": "issuer",
    "PatientName": "patient_name",
    "PatientBirthDate": "birth_date",
    "PatientSex": "sex",
}


class QueryModel:
    """The query model projection (``query-model``): the archive index's pure fold, written into
    the query store instead of ClickHouse."""

    name = "query-model"

    def __init__(self) -> None:
        self._fold = ArchiveIndex()
        self.topics: Sequence[str] = self._fold.topics

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        return self._fold.apply(event, source)


def fold_name(value: str | None) -> str | None:
    """A person name for case-insensitive matching (Cyrillic too): what every query compares."""
    return None if value is None else value.lower()


def time_key(value: str | None) -> str:
    """A stored TM value as comparable ``HHMMSS.ffffff`` text (``1015`` -> ``101500.000000``)."""
    bare = (value or "").replace(":", "")
    return bare + "000000.000000"[len(bare) :]


def report_status(stages: Sequence[str]) -> str:
    """none / draft / signed / amended, from the stages of a study's report rows."""
    return max((_STAGE_STATUS[s] for s in stages), key=_STATUS_RANK.__getitem__, default="none")


def _newest(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    return max(rows, key=lambda r: (r["received_at"], r["log_version"]))


class _Latest:
    """Each attribute as the newest arrival that carries one (not NULL) gives it."""

    def __init__(self, rows: Sequence[Mapping[str, Any]]) -> None:
        self._rows = sorted(rows, key=lambda r: (r["received_at"], r["log_version"]), reverse=True)

    def __getitem__(self, column: str) -> Any:
        return next((r[column] for r in self._rows if r[column] is not None), None)


def _sorted_unique(values: Sequence[str]) -> list[str]:
    return sorted({v for v in values if v})


@dataclass(frozen=True)
class Patient:
    """The patient a study is shown under: the surviving ID and its PatientUpdated values."""

    patient_id: str
    demographics: Mapping[str, str]


def summarise_series(instances: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A series row from the newest versions of its instances (all of one series)."""
    newest = _Latest(instances)
    return {
        "study_uid": newest["study_uid"],
        "series_uid": newest["series_uid"],
        "series_number": newest["series_number"],
        "series_description": newest["series_description"],
        "modality": newest["modality"],
        "body_part": newest["body_part"],
        "instance_count": len(instances),
        "size": sum(int(i["size"]) for i in instances),
        "organisations": json.dumps(_sorted_unique([i["organisation"] for i in instances])),
        "missing": json.dumps(sorted({m for i in instances for m in json.loads(i["missing"])})),
        "last_received_us": max(int(i["received_at"]) for i in instances),
    }


def summarise_study(instances: Sequence[Mapping[str, Any]], stages: Sequence[str], patient: Patient) -> dict[str, Any]:
    """A study row from the newest versions of its instances (at least one), the stages of its
    report rows and the patient it is shown under (``patient`` resolves the newest arrival's
    recorded PatientID)."""
    newest = _Latest(instances)
    status = report_status(stages)
    instance_missing = {m for i in instances for m in json.loads(i["missing"])}
    missing = instance_missing if status in ("signed", "amended") else instance_missing | {REPORT_MISSING}
    row: dict[str, Any] = {
        "study_uid": newest["study_uid"],
        "patient_id": patient.patient_id,
        "recorded_patient_id": newest["patient_id"],
        "patient_ids": json.dumps(_sorted_unique([i["patient_id"] for i in instances])),
        "issuer": newest["issuer"],
        "patient_name": newest["patient_name"],
        "image_name_folded": fold_name(newest["patient_name"]),
        "birth_date": newest["birth_date"],
        "sex": newest["sex"],
        "study_date": newest["study_date"],
        "study_time": newest["study_time"],
        "time_key": time_key(newest["study_time"]),
        "study_id": newest["study_id"],
        "study_description": newest["study_description"],
        "accession_number": newest["accession_number"],
        "referring_physician": newest["referring_physician"],
        "referring_folded": fold_name(newest["referring_physician"]),
        "modalities": json.dumps(_sorted_unique([i["modality"] for i in instances])),
        "series_count": len({i["series_uid"] for i in instances}),
        "instance_count": len(instances),
        "size": sum(int(i["size"]) for i in instances),
        "organisations": json.dumps(_sorted_unique([i["organisation"] for i in instances])),
        "pathology": int(any(i["pathology"] for i in instances)),
        "emergency": int(any(i["emergency"] for i in instances)),
        "first_received_us": min(int(i["received_at"]) for i in instances),
        "last_received_us": max(int(i["received_at"]) for i in instances),
        "newest_received_us": int(_newest(instances)["received_at"]),
        "newest_log_version": int(_newest(instances)["log_version"]),
        "report_status": status,
        "missing": json.dumps(sorted(missing)),
    }
    for attribute, column in DEMOGRAPHIC_COLUMNS.items():
        if attribute in patient.demographics:
            row[column] = patient.demographics[attribute]
    row["name_folded"] = fold_name(row["patient_name"])
    return row
