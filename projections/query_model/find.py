"""Finding studies and DICOM records in the query model: QIDO-RS, C-FIND and the study lists, the
ONE read module they all go through.

:func:`find` is DICOM matching for QIDO-RS and C-FIND (patient, study, series and instance levels,
every rule of :mod:`projections.archive_index.matching`), answering rows keyed by DICOM keyword;
:func:`search_studies` is the study list of the web pages, the CLI and C-MOVE/C-GET by patient.

Every value from a caller travels as a named ``:parameter``; the only SQL text assembled here is
made of fixed fragments chosen by code (which filters are present), never of caller input.
Wildcards: ``*`` any run, ``?`` one character; every other character, ``%``, ``_`` and ``\\``
included, matches itself. Person names match case-insensitively (Cyrillic too) on their
case-folded columns; a pattern with a literal start is also a range on that column's index.

The rows are those the fold keeps exact (:mod:`projections.query_model.store`): the newest version
of each instance, studies shown under the surviving patient ID (a prior ID's studies appear under
it) with the latest PatientUpdated demographics.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from datetime import date
from typing import Any

from projections.archive_index.matching import (
    ATTRIBUTES,
    LEVELS,
    Condition,
    DateRange,
    Integers,
    MatchingError,
    Text,
    TimeRange,
    Uids,
    Universal,
    wildcard_to_like,
)
from projections.archive_index.views import MAX_MERGE_HOPS, checked_page
from projections.query_model.fold import fold_name
from projections.query_model.store import MODALITY, ORGANISATION, PATIENT, QueryStore, moment

#: the attributes each level can return (and match): its own and those of the levels above
LEVEL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    level: tuple(k for k, a in ATTRIBUTES.items() if LEVELS.index(a.level) <= LEVELS.index(level)) for level in LEVELS
}
LEVEL_ATTRIBUTES["PATIENT"] = tuple(k for k, a in ATTRIBUTES.items() if a.level == "PATIENT")
for _level in ("STUDY", "SERIES", "IMAGE"):  # the patient counts are a patient-level view only
    LEVEL_ATTRIBUTES[_level] = tuple(k for k in LEVEL_ATTRIBUTES[_level] if not k.startswith("NumberOfPatient"))

#: keyword -> the column that answers it (``s`` study or patient view, ``r`` series, ``i`` instance)
_COLUMNS = {
    "PatientID": "s.patient_id",
    "PatientName": "s.patient_name",
    "IssuerOfPatientID": "s.issuer",
    "PatientBirthDate": "s.birth_date",
    "PatientSex": "s.sex",
    "NumberOfPatientRelatedStudies": "s.n_studies",
    "NumberOfPatientRelatedSeries": "s.n_series",
    "NumberOfPatientRelatedInstances": "s.n_instances",
    "StudyInstanceUID": "s.study_uid",
    "StudyDate": "s.study_date",
    "StudyTime": "s.study_time",
    "AccessionNumber": "s.accession_number",
    "StudyID": "s.study_id",
    "StudyDescription": "s.study_description",
    "ReferringPhysicianName": "s.referring_physician",
    "ModalitiesInStudy": "s.modalities",
    "NumberOfStudyRelatedSeries": "s.series_count",
    "NumberOfStudyRelatedInstances": "s.instance_count",
    "SeriesInstanceUID": "r.series_uid",
    "Modality": "r.modality",
    "SeriesNumber": "r.series_number",
    "SeriesDescription": "r.series_description",
    "BodyPartExamined": "r.body_part",
    "NumberOfSeriesRelatedInstances": "r.instance_count",
    "SOPInstanceUID": "i.sop_uid",
    "SOPClassUID": "i.sop_class_uid",
    "InstanceNumber": "i.instance_number",
    "Rows": "i.image_rows",
    "Columns": "i.image_columns",
    "NumberOfFrames": "i.frames",
}
#: person names are matched on their case-folded columns
_FOLDED = {"PatientName": "s.name_folded", "ReferringPhysicianName": "s.referring_folded"}
#: returned at instance level beside the attributes (when the caller names no subset)
_IMAGE_EXTRAS = {"TransferSyntaxUID": "i.transfer_syntax_uid", "Version": "i.version"}

_PATIENT_VIEW = """(
    SELECT patient_id, issuer, patient_name, name_folded, birth_date, sex, n_studies, n_series, n_instances
    FROM (
        SELECT patient_id, issuer, patient_name, name_folded, birth_date, sex,
               ROW_NUMBER() OVER (PARTITION BY patient_id
                                  ORDER BY newest_received_us DESC, newest_log_version DESC) AS newest,
               COUNT(*) OVER (PARTITION BY patient_id) AS n_studies,
               SUM(series_count) OVER (PARTITION BY patient_id) AS n_series,
               SUM(instance_count) OVER (PARTITION BY patient_id) AS n_instances
        FROM qm_studies AS s WHERE {inner}
    ) AS ranked
    WHERE newest = 1
) AS s"""

_SOURCES = {
    "STUDY": "qm_studies AS s",
    "SERIES": "qm_series AS r JOIN qm_studies AS s ON s.study_uid = r.study_uid",
    "IMAGE": (
        "qm_versions AS i JOIN qm_series AS r ON r.study_uid = i.study_uid AND r.series_uid = i.series_uid"
        " JOIN qm_studies AS s ON s.study_uid = i.study_uid"
    ),
}
#: newest studies first (the order of the ``qm_studies_newest`` index); studies without a date or time
#: last, on every engine (SQLite puts NULLs last in a descending order by itself, PostgreSQL first)
STUDY_ORDER = "s.study_date DESC NULLS LAST, s.study_time DESC NULLS LAST, s.study_uid"
_ORDER = {
    "PATIENT": "s.patient_id",
    "STUDY": STUDY_ORDER,
    "SERIES": f"{STUDY_ORDER}, r.series_number IS NULL, r.series_number, r.series_uid",
    "IMAGE": (
        f"{STUDY_ORDER}, r.series_number IS NULL, r.series_number, r.series_uid,"
        " i.instance_number IS NULL, i.instance_number, i.sop_uid"
    ),
}
#: the UIDs every row of a level carries (the RetrieveURL, the C-FIND unique keys)
_LEVEL_UIDS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}


class _Params:
    """Collects parameter values under generated names; the SQL only ever holds the names."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f":{name}"

    def many(self, values: Collection[Any]) -> str:
        return ", ".join(self(v) for v in values)


def _literal_start(pattern: str) -> str:
    """The characters before the first wildcard of a DICOM pattern."""
    for index, ch in enumerate(pattern):
        if ch in "*?":
            return pattern[:index]
    return pattern


def _prefix_range(column: str, pattern: str, param: _Params) -> str | None:
    """``column`` within the strings starting with the pattern's literal start: a range scan of its
    index, checked exactly by the LIKE beside it."""
    start = _literal_start(pattern)
    after = ord(start[-1]) + 1 if start else 0
    if not start or after > 0x10FFFF or 0xD800 <= after <= 0xDFFF:  # no next character to bound it
        return None
    end = start[:-1] + chr(after)
    return f"{column} >= {param(start)} AND {column} < {param(end)}"


def text_match(column: str, condition: Text, param: _Params, *, folded: bool = False) -> str:
    """Any of the condition's values: exact ones by equality, patterns by LIKE (escaped)."""

    def fold(value: str) -> str:
        return value.lower() if folded else value

    alternatives = []
    exact = [fold(v) for v in condition.exact]
    if exact:
        alternatives.append(f"{column} IN ({param.many(exact)})")
    for pattern in condition.patterns:
        like = f"{column} LIKE {param(wildcard_to_like(fold(pattern)))} ESCAPE '\\'"
        prefix = _prefix_range(column, fold(pattern), param) if len(condition.values) == 1 else None
        alternatives.append(f"({prefix} AND {like})" if prefix else like)
    return "(" + " OR ".join(alternatives) + ")"


def _match(keyword: str, condition: Condition, param: _Params) -> str | None:
    """The SQL test of one key on its column, or None for universal matching."""
    if isinstance(condition, Universal):
        return None
    column = _COLUMNS[keyword]
    if keyword == "ModalitiesInStudy":
        inner = _match_value("k.value", condition, param)
        return (
            f"EXISTS (SELECT 1 FROM qm_study_keys AS k WHERE k.kind = '{MODALITY}' AND k.study_uid = s.study_uid"
            f" AND {inner})"
        )
    if isinstance(condition, DateRange):
        if keyword == "StudyDate":  # ISO dates in the column: NULL (no usable date) never matches
            bounds: tuple[str | None, str | None] = (
                condition.start.isoformat() if condition.start else None,
                condition.end.isoformat() if condition.end else None,
            )
            tests = []
        else:  # DA text (YYYYMMDD compares as dates)
            bounds = condition.dicom()
            column = f"COALESCE({column}, '')"
            tests = [f"{column} != ''"]
        if bounds[0] is not None and bounds[0] == bounds[1]:  # one day: an equality the index seeks
            tests.append(f"{column} = {param(bounds[0])}")
        else:
            if bounds[0] is not None:
                tests.append(f"{column} >= {param(bounds[0])}")
            if bounds[1] is not None:
                tests.append(f"{column} <= {param(bounds[1])}")
        return "(" + " AND ".join(tests) + ")"
    if isinstance(condition, TimeRange):
        tests = [f"COALESCE({column}, '') != ''"]
        if condition.start is not None:
            tests.append(f"s.time_key >= {param(condition.start)}")
        if condition.end is not None:
            tests.append(f"s.time_key <= {param(condition.end)}")
        return "(" + " AND ".join(tests) + ")"
    if isinstance(condition, Text) and condition.case_insensitive and keyword in _FOLDED:
        return text_match(_FOLDED[keyword], condition, param, folded=True)
    return _match_value(column, condition, param)


def _match_value(column: str, condition: Condition, param: _Params) -> str:
    if isinstance(condition, Uids | Integers):
        return f"{column} IN ({param.many(condition.values)})"
    assert isinstance(condition, Text)
    return text_match(column, condition, param)


def find(
    store: QueryStore,
    level: str,
    keys: Mapping[str, Condition],
    *,
    limit: int = 100,
    offset: int = 0,
    returned: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """DICOM matching at ``level`` (PATIENT, STUDY, SERIES or IMAGE): the records whose attributes
    meet every condition of ``keys`` (keyword -> condition from :mod:`projections.archive_index.matching`), as
    dicts keyed by DICOM keyword, a page of ``limit`` from ``offset``.

    Order: patients by ID; studies newest first; series and instances by number within their
    study. ``PatientID`` is the surviving ID of a merged patient (asking for a prior ID finds the
    patient), and the patient's demographics are the latest PatientUpdated ones where any came.
    ``returned`` names the attributes the caller will use (None: every one of the level); the rows
    then carry those, the matching keys and the level's UIDs.
    Raises :class:`MatchingError` for a key the level does not have."""
    if level not in _ORDER:
        raise MatchingError("QueryRetrieveLevel", f"must be one of {', '.join(LEVELS)}")
    for keyword in keys:
        if keyword not in LEVEL_ATTRIBUTES[level]:
            raise MatchingError(keyword, f"is not an attribute of the {level} level")
    page = checked_page(limit, offset)
    param = _Params()
    where: list[str] = []
    patient_where: list[str] = []  # the patient view's key: tested before its rows are grouped
    for keyword, condition in keys.items():
        if keyword == "PatientID" and isinstance(condition, Text) and not condition.patterns:
            surviving = sorted(set(resolve_patients(store, condition.exact).values()))
            test: str | None = f"s.patient_id IN ({param.many(surviving)})"
        else:
            test = _match(keyword, condition, param)
        if test is not None:
            (patient_where if level == "PATIENT" and keyword == "PatientID" else where).append(test)
    source = (
        _PATIENT_VIEW.format(inner=" AND ".join(patient_where) or "1 = 1") if level == "PATIENT" else _SOURCES[level]
    )
    lower = [k for k, c in keys.items() if not isinstance(c, Universal) and ATTRIBUTES[k].level in ("SERIES", "IMAGE")]
    if level in ("SERIES", "IMAGE") and not lower:
        # every study has a series and an instance: the page lies within the first ``limit +
        # offset`` matching studies, which the study index gives in order
        study_where = " AND ".join(where) or "1 = 1"
        window = param(page["limit"] + page["offset"])
        where.append(
            f"s.study_uid IN (SELECT s.study_uid FROM qm_studies AS s WHERE {study_where}"
            f" ORDER BY {STUDY_ORDER} LIMIT {window})"
        )
    if level == "IMAGE":
        where.append("i.newest = 1")  # the newest version of each instance, the one every read lists
    wanted = list(LEVEL_ATTRIBUTES[level])
    if returned is not None:
        chosen = {*returned, *keys, *_LEVEL_UIDS[level]}
        wanted = [k for k in wanted if k in chosen]
    columns = [f'{_COLUMNS[k]} AS "{k}"' for k in wanted]
    if level == "IMAGE" and returned is None:
        columns += [f'{expr} AS "{k}"' for k, expr in _IMAGE_EXTRAS.items()]
    sql = (
        f"SELECT {', '.join(columns)} FROM {source} WHERE {' AND '.join(where) or '1 = 1'}"
        f" ORDER BY {_ORDER[level]} LIMIT {param(page['limit'])} OFFSET {param(page['offset'])}"
    )
    rows = store.select(sql, param.values)
    for row in rows:
        if row.get("StudyDate") is not None:
            row["StudyDate"] = date.fromisoformat(row["StudyDate"])
        if "ModalitiesInStudy" in row:
            row["ModalitiesInStudy"] = json.loads(row["ModalitiesInStudy"])
    return rows


# -- patients: merges -----------------------------------------------------------------------------------
def resolve_patients(store: QueryStore, ids: Collection[str]) -> dict[str, str]:
    """Each ID -> the surviving ID at the end of its merge chain (itself when never merged)."""
    resolved: dict[str, str] = {}
    for patient_id in ids:
        current, seen = patient_id, {patient_id}
        for _ in range(MAX_MERGE_HOPS):
            found = store.select("SELECT patient_id FROM qm_merges WHERE prior_patient_id = :id", {"id": current})
            if not found or found[0]["patient_id"] in seen:
                break
            current = str(found[0]["patient_id"])
            seen.add(current)
        resolved[patient_id] = current
    return resolved


def linked_patient_ids(store: QueryStore, patient_id: str) -> tuple[str, list[str]]:
    """(surviving ID, every ID whose records now belong to it, the surviving one included)."""
    surviving = resolve_patients(store, [patient_id])[patient_id]
    group, frontier = {surviving}, {surviving}
    for _ in range(MAX_MERGE_HOPS):
        param = _Params()
        found = store.select(
            f"SELECT prior_patient_id FROM qm_merges WHERE patient_id IN ({param.many(sorted(frontier))})",
            param.values,
        )
        frontier = {str(r["prior_patient_id"]) for r in found} - group
        if not frontier:
            break
        group |= frontier
    # a prior ID re-merged elsewhere later is not this patient's any more
    resolved = resolve_patients(store, group)
    return surviving, sorted(i for i in group if resolved[i] == surviving)


# -- the study lists ------------------------------------------------------------------------------------
def _study(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "study_uid": row["study_uid"],
        "patient_id": row["patient_id"],
        "recorded_patient_ids": json.loads(row["patient_ids"]),
        "issuer_of_patient_id": row["issuer"],
        "patient_name": row["patient_name"],
        "patient_birth_date": row["birth_date"],
        "patient_sex": row["sex"],
        "study_date": date.fromisoformat(row["study_date"]) if row["study_date"] else None,
        "study_time": row["study_time"],
        "study_id": row["study_id"],
        "study_description": row["study_description"],
        "accession_number": row["accession_number"],
        "referring_physician": row["referring_physician"],
        "modalities": json.loads(row["modalities"]),
        "series_count": int(row["series_count"]),
        "instance_count": int(row["instance_count"]),
        "size": int(row["size"]),
        "organisations": json.loads(row["organisations"]),
        "pathology": bool(row["pathology"]),
        "emergency": bool(row["emergency"]),
        "first_received": moment(int(row["first_received_us"])),
        "last_received": moment(int(row["last_received_us"])),
        "report_status": row["report_status"],
        "missing": json.loads(row["missing"]),
    }


def _has_key(kind: str, value: str, param: _Params) -> str:
    return (
        f"EXISTS (SELECT 1 FROM qm_study_keys AS k WHERE k.kind = '{kind}' AND k.value = {param(value)}"
        " AND k.study_uid = s.study_uid)"
    )


def _studies(store: QueryStore, where: list[str], param: _Params, limit: int, offset: int) -> list[dict[str, Any]]:
    page = checked_page(limit, offset)
    sql = (
        f"SELECT s.* FROM qm_studies AS s WHERE {' AND '.join(where) or '1 = 1'}"
        f" ORDER BY {STUDY_ORDER} LIMIT {param(page['limit'])} OFFSET {param(page['offset'])}"
    )
    return [_study(row) for row in store.select(sql, param.values)]


def search_studies(
    store: QueryStore,
    *,
    patient_id: str | None = None,
    patient_name: str | None = None,
    study_date_from: date | None = None,
    study_date_to: date | None = None,
    modality: str | None = None,
    accession: str | None = None,
    study_uid: str | None = None,
    organisation: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Studies matching every given criterion, newest first.

    ``patient_id`` follows merges both ways (asking for a prior or the surviving ID finds all of
    the patient's studies); ``patient_name`` takes DICOM wildcards, ignores case and matches the
    name in the images or the latest name from PatientUpdated of a patient ID the study was
    recorded under; the other criteria match exactly."""
    param = _Params()
    where: list[str] = []
    if patient_id is not None:
        _, ids = linked_patient_ids(store, patient_id)
        where.append(
            f"s.study_uid IN (SELECT study_uid FROM qm_study_keys WHERE kind = '{PATIENT}'"
            f" AND value IN ({param.many(ids)}))"
        )
    if patient_name is not None:
        folded = fold_name(patient_name) or ""
        like = param(wildcard_to_like(folded))
        image = f"s.image_name_folded LIKE {like} ESCAPE '\\'"
        prefix = _prefix_range("s.image_name_folded", folded, param)
        where.append(
            f"(({prefix + ' AND ' if prefix else ''}{image}) OR s.study_uid IN ("
            f"SELECT k.study_uid FROM qm_study_keys AS k JOIN qm_demographics AS d ON d.patient_id = k.value"
            f" WHERE k.kind = '{PATIENT}' AND d.attribute = 'PatientName' AND d.value_folded LIKE {like} ESCAPE '\\'))"
        )
    if study_date_from is not None:
        where.append(f"s.study_date >= {param(study_date_from.isoformat())}")
    if study_date_to is not None:
        where.append(f"s.study_date <= {param(study_date_to.isoformat())}")
    if modality is not None:
        where.append(_has_key(MODALITY, modality, param))
    if accession is not None:
        where.append(f"s.accession_number = {param(accession)}")
    if study_uid is not None:
        where.append(f"s.study_uid = {param(study_uid)}")
    if organisation is not None:
        where.append(_has_key(ORGANISATION, organisation, param))
    return _studies(store, where, param, limit, offset)


def study_of_accession(store: QueryStore, accession: str) -> str | None:
    """The one study recorded under ``accession`` (None: none, or more than one)."""
    rows = store.select(
        "SELECT study_uid FROM qm_studies WHERE accession_number = :accession ORDER BY study_uid LIMIT 2",
        {"accession": accession},
    )
    return str(rows[0]["study_uid"]) if len(rows) == 1 else None


def patient_timeline(store: QueryStore, patient_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Every study of the patient across organisations, newest first, merges followed."""
    return search_studies(store, patient_id=patient_id, limit=limit)


def incomplete_packages(
    store: QueryStore, organisation: str | None = None, *, limit: int = 1000, offset: int = 0
) -> list[dict[str, Any]]:
    """Studies whose package lacks something (attributes listed by the instances' ``missing``, or
    a signed report), newest first; optionally only those an organisation sent."""
    param = _Params()
    where = ["s.missing != '[]'"]
    if organisation is not None:
        where.append(_has_key(ORGANISATION, organisation, param))
    return _studies(store, where, param, limit, offset)
