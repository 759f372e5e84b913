"""Finding studies and DICOM records in the archive index: QIDO-RS, C-FIND and the study lists.

Every value from a caller travels as a ClickHouse ``{name:Type}`` parameter; the only SQL text
assembled here is made of fixed fragments chosen by code (which filters are present), never of
user input. Patient-name matching takes DICOM wildcards (``*`` any run, ``?`` one character) and
ignores case; every other character, ``%``, ``_`` and ``\\`` included, matches itself.

:func:`find` is DICOM matching for QIDO-RS and C-FIND (patient, study, series and instance levels,
every rule of :mod:`projections.archive_index.matching`), answering rows keyed by DICOM keyword;
:func:`search_studies` is the study list of the web pages, the CLI and C-MOVE/C-GET by patient.

Study and series views are computed from the *newest version* of each instance
(:func:`projections.archive_index.views.newest_versions`; see :mod:`projections.archive_index.fold`
for why they are not stored); ``FINAL`` collapses redelivered rows. Patient merges are followed (a
prior ID's studies appear under the surviving ID) and the latest demographics from PatientUpdated
replace what the images carry.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import date
from typing import Any

from projections.archive_index.fold import INSTANCES, PATIENTS_TABLE, REPORT_MISSING, REPORTS_TABLE
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
from projections.archive_index.views import (
    NEWEST_ARRIVAL,
    apply_patients,
    checked_page,
    linked_patient_ids,
    merge_map,
    newest_versions,
)
from projections.warehouse.base import Warehouse

_STUDY_SQL = f"""
WITH
    latest AS ({{latest}}),
    report_status AS (
        SELECT study_uid,
               multiIf(countIf(stage = 'amendment') > 0, 'amended',
                       countIf(stage = 'signed') > 0, 'signed', 'draft') AS status
        FROM {REPORTS_TABLE} FINAL
        WHERE study_uid IN (SELECT study_uid FROM latest)
        GROUP BY study_uid
    ),
    studies AS (
        SELECT study_uid,
               argMax(patient_id, {NEWEST_ARRIVAL}) AS newest_patient_id,
               arraySort(groupUniqArray(patient_id)) AS patient_ids,
               argMax(issuer_of_patient_id, {NEWEST_ARRIVAL}) AS issuer_of_patient_id,
               argMax(patient_name, {NEWEST_ARRIVAL}) AS patient_name,
               argMax(patient_birth_date, {NEWEST_ARRIVAL}) AS patient_birth_date,
               argMax(patient_sex, {NEWEST_ARRIVAL}) AS patient_sex,
               argMax(study_date, {NEWEST_ARRIVAL}) AS study_date,
               argMax(study_time, {NEWEST_ARRIVAL}) AS study_time,
               argMax(study_id, {NEWEST_ARRIVAL}) AS study_id,
               argMax(study_description, {NEWEST_ARRIVAL}) AS study_description,
               argMax(accession_number, {NEWEST_ARRIVAL}) AS accession_number,
               argMax(referring_physician, {NEWEST_ARRIVAL}) AS referring_physician,
               arraySort(arrayFilter(m -> m != '', groupUniqArray(modality))) AS modalities,
               uniqExact(series_uid) AS series_count,
               count() AS instance_count,
               sum(blob_size) AS size,
               arraySort(arrayFilter(o -> o != '', groupUniqArray(organisation))) AS organisations,
               arraySort(groupUniqArrayArray(missing)) AS instance_missing,
               max(pathology) AS pathology,
               max(emergency) AS emergency,
               min(received_at) AS first_received,
               max(received_at) AS last_received
        FROM latest
        GROUP BY study_uid
    )
SELECT s.study_uid AS study_uid, s.newest_patient_id AS patient_id, s.patient_ids AS patient_ids,
       s.issuer_of_patient_id AS issuer_of_patient_id, s.patient_name AS patient_name,
       s.patient_birth_date AS patient_birth_date, s.patient_sex AS patient_sex,
       s.study_date AS study_date, s.study_time AS study_time, s.study_id AS study_id,
       s.study_description AS study_description, s.accession_number AS accession_number,
       s.referring_physician AS referring_physician, s.modalities AS modalities,
       s.series_count AS series_count, s.instance_count AS instance_count, s.size AS size,
       s.organisations AS organisations, s.pathology AS pathology, s.emergency AS emergency,
       s.first_received AS first_received, s.last_received AS last_received,
       if(r.status = '', 'none', r.status) AS report_status,
       arraySort(arrayDistinct(arrayConcat(
           s.instance_missing,
           if(r.status IN ('signed', 'amended'), CAST([], 'Array(String)'), ['{REPORT_MISSING}'])
       ))) AS missing
FROM studies AS s
LEFT JOIN report_status AS r ON r.study_uid = s.study_uid
WHERE {{having}}
ORDER BY study_date DESC NULLS LAST, study_time DESC NULLS LAST, study_uid
LIMIT {{{{limit:UInt32}}}} OFFSET {{{{offset:UInt32}}}}
"""


# -- studies ----------------------------------------------------------------------------------------
def _studies(
    warehouse: Warehouse,
    where: Sequence[str],
    having: Sequence[str],
    params: Mapping[str, Any],
    limit: int,
    offset: int,
) -> list[dict[str, Any]]:
    """``where`` picks candidate studies from any instance row (uses the skipping indexes);
    ``having`` is then checked exactly on the study built from the newest versions."""
    candidates = f"study_uid IN (SELECT study_uid FROM {INSTANCES} WHERE {' AND '.join(where)})" if where else "1"
    sql = _STUDY_SQL.format(latest=newest_versions(candidates), having=" AND ".join(having) if having else "1")
    result = warehouse.query(sql, {**params, **checked_page(limit, offset)})
    return apply_patients(warehouse, result.dicts())


def search_studies(
    warehouse: Warehouse,
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
    the patient's studies); ``patient_name`` takes DICOM wildcards, ignores case and matches the name in the
    images or the latest name from PatientUpdated; the other criteria match exactly."""
    where: list[str] = []
    having: list[str] = []
    params: dict[str, Any] = {}
    if patient_id is not None:
        _, ids = linked_patient_ids(warehouse, patient_id)
        where.append("patient_id IN {patient_ids:Array(String)}")
        having.append("hasAny(s.patient_ids, {patient_ids:Array(String)})")
        params["patient_ids"] = ids
    if patient_name is not None:
        where.append(
            "(lowerUTF8(patient_name) LIKE lowerUTF8({patient_name:String}) OR patient_id IN ("
            f"SELECT patient_id FROM {PATIENTS_TABLE} FINAL "
            "WHERE attribute = 'PatientName' AND lowerUTF8(value) LIKE lowerUTF8({patient_name:String})))"
        )
        params["patient_name"] = wildcard_to_like(patient_name)
    if study_date_from is not None:
        where.append("study_date >= {date_from:Date32}")
        having.append("s.study_date >= {date_from:Date32}")
        params["date_from"] = study_date_from
    if study_date_to is not None:
        where.append("study_date <= {date_to:Date32}")
        having.append("s.study_date <= {date_to:Date32}")
        params["date_to"] = study_date_to
    if modality is not None:
        where.append("modality = {modality:String}")
        having.append("has(s.modalities, {modality:String})")
        params["modality"] = modality
    if accession is not None:
        where.append("accession_number = {accession:String}")
        having.append("s.accession_number = {accession:String}")
        params["accession"] = accession
    if study_uid is not None:
        where.append("study_uid = {study_uid:String}")
        params["study_uid"] = study_uid
    if organisation is not None:
        where.append("organisation = {organisation:String}")
        having.append("has(s.organisations, {organisation:String})")
        params["organisation"] = organisation
    return _studies(warehouse, where, having, params, limit, offset)


def patient_timeline(warehouse: Warehouse, patient_id: str, *, limit: int = 1000) -> list[dict[str, Any]]:
    """Every study of the patient across organisations, newest first, merges followed."""
    return search_studies(warehouse, patient_id=patient_id, limit=limit)


def incomplete_packages(
    warehouse: Warehouse, organisation: str | None = None, *, limit: int = 1000, offset: int = 0
) -> list[dict[str, Any]]:
    """Studies whose package lacks something (attributes listed by the instances' ``missing``, or
    a signed report), newest first; optionally only those an organisation sent."""
    where: list[str] = []
    having = ["length(missing) > 0"]
    params: dict[str, Any] = {}
    if organisation is not None:
        where.append("organisation = {organisation:String}")
        having.append("has(s.organisations, {organisation:String})")
        params["organisation"] = organisation
    return _studies(warehouse, where, having, params, limit, offset)


# -- DICOM matching: QIDO-RS and C-FIND ---------------------------------------------------------------
# Each level is a flat view whose columns are named by DICOM keyword, built from the newest instance
# versions with merges followed (PatientID is the surviving ID) and the latest PatientUpdated
# demographics applied; the matching keys are then checked on that view, exactly as the caller
# sees the values. Before that, the keys that instance rows can answer pick the candidate studies
# (``study_uid IN (...)``), so a narrow query reads a few studies by the primary key.

_MERGED_PATIENT = "transform(patient_id, {merge_from:Array(String)}, {merge_to:Array(String)}, patient_id)"

_DEMOGRAPHICS = f"""
    SELECT patient_id AS d_patient,
           anyIf(value, attribute = 'PatientName') AS d_name, countIf(attribute = 'PatientName') AS d_has_name,
           anyIf(value, attribute = 'PatientBirthDate') AS d_birth,
           countIf(attribute = 'PatientBirthDate') AS d_has_birth,
           anyIf(value, attribute = 'PatientSex') AS d_sex, countIf(attribute = 'PatientSex') AS d_has_sex,
           anyIf(value, attribute = 'IssuerOfPatientID') AS d_issuer,
           countIf(attribute = 'IssuerOfPatientID') AS d_has_issuer
    FROM {PATIENTS_TABLE} FINAL
    GROUP BY patient_id
"""

_PATIENT_COLUMNS = """
    if(d.d_has_name > 0, d.d_name, v.image_name) AS PatientName,
    if(d.d_has_birth > 0, d.d_birth, v.image_birth) AS PatientBirthDate,
    if(d.d_has_sex > 0, d.d_sex, v.image_sex) AS PatientSex,
    if(d.d_has_issuer > 0, d.d_issuer, v.image_issuer) AS IssuerOfPatientID
"""

_PATIENT_AGGREGATES = f"""
    argMax(patient_name, {NEWEST_ARRIVAL}) AS image_name,
    argMax(patient_birth_date, {NEWEST_ARRIVAL}) AS image_birth,
    argMax(patient_sex, {NEWEST_ARRIVAL}) AS image_sex,
    argMax(issuer_of_patient_id, {NEWEST_ARRIVAL}) AS image_issuer
"""

_STUDY_VIEW = f"""
    SELECT v.*, {_PATIENT_COLUMNS}
    FROM (
        SELECT study_uid AS StudyInstanceUID,
               argMax(merged_patient_id, {NEWEST_ARRIVAL}) AS PatientID,
               {_PATIENT_AGGREGATES},
               argMax(study_date, {NEWEST_ARRIVAL}) AS StudyDate,
               argMax(study_time, {NEWEST_ARRIVAL}) AS StudyTime,
               argMax(accession_number, {NEWEST_ARRIVAL}) AS AccessionNumber,
               argMax(study_id, {NEWEST_ARRIVAL}) AS StudyID,
               argMax(study_description, {NEWEST_ARRIVAL}) AS StudyDescription,
               argMax(referring_physician, {NEWEST_ARRIVAL}) AS ReferringPhysicianName,
               arraySort(arrayFilter(m -> m != '', groupUniqArray(modality))) AS ModalitiesInStudy,
               toInt64(uniqExact(series_uid)) AS NumberOfStudyRelatedSeries,
               toInt64(count()) AS NumberOfStudyRelatedInstances
        FROM latest GROUP BY study_uid
    ) AS v
    LEFT JOIN demographics AS d ON d.d_patient = v.PatientID
"""

_SERIES_VIEW = f"""
    SELECT study_uid AS r_study, series_uid AS SeriesInstanceUID,
           argMax(modality, {NEWEST_ARRIVAL}) AS Modality,
           argMax(series_number, {NEWEST_ARRIVAL}) AS SeriesNumber,
           argMax(series_description, {NEWEST_ARRIVAL}) AS SeriesDescription,
           argMax(body_part, {NEWEST_ARRIVAL}) AS BodyPartExamined,
           toInt64(count()) AS NumberOfSeriesRelatedInstances
    FROM latest GROUP BY study_uid, series_uid
"""

_IMAGE_VIEW = """
    SELECT study_uid AS i_study, series_uid AS i_series, sop_uid AS SOPInstanceUID,
           sop_class_uid AS SOPClassUID, instance_number AS InstanceNumber, rows AS Rows, columns AS Columns,
           frames AS NumberOfFrames, transfer_syntax_uid AS TransferSyntaxUID, version AS Version
    FROM latest
"""

_PATIENT_VIEW = f"""
    SELECT v.*, {_PATIENT_COLUMNS}
    FROM (
        SELECT merged_patient_id AS PatientID,
               {_PATIENT_AGGREGATES},
               toInt64(uniqExact(study_uid)) AS NumberOfPatientRelatedStudies,
               toInt64(uniqExact(study_uid, series_uid)) AS NumberOfPatientRelatedSeries,
               toInt64(count()) AS NumberOfPatientRelatedInstances
        FROM latest GROUP BY merged_patient_id
    ) AS v
    LEFT JOIN demographics AS d ON d.d_patient = v.PatientID
"""

_STUDY_KEYS = (
    "StudyInstanceUID, PatientID, PatientName, PatientBirthDate, PatientSex, IssuerOfPatientID, StudyDate, "
    "StudyTime, AccessionNumber, StudyID, StudyDescription, ReferringPhysicianName, ModalitiesInStudy, "
    "NumberOfStudyRelatedSeries, NumberOfStudyRelatedInstances"
)
_SERIES_KEYS = (
    "SeriesInstanceUID, Modality, SeriesNumber, SeriesDescription, BodyPartExamined, NumberOfSeriesRelatedInstances"
)
_IMAGE_KEYS = "SOPInstanceUID, SOPClassUID, InstanceNumber, Rows, Columns, NumberOfFrames, TransferSyntaxUID, Version"

_STUDY_ORDER = "StudyDate DESC NULLS LAST, StudyTime DESC NULLS LAST, StudyInstanceUID"

_LEVEL_SQL = {
    "PATIENT": (
        f"SELECT PatientID, PatientName, PatientBirthDate, PatientSex, IssuerOfPatientID, "
        f"NumberOfPatientRelatedStudies, NumberOfPatientRelatedSeries, NumberOfPatientRelatedInstances "
        f"FROM ({_PATIENT_VIEW})",
        "PatientID",
    ),
    "STUDY": (f"SELECT {_STUDY_KEYS} FROM ({_STUDY_VIEW})", _STUDY_ORDER),
    "SERIES": (
        f"SELECT {_STUDY_KEYS}, {_SERIES_KEYS} FROM ({_SERIES_VIEW}) AS r "
        f"INNER JOIN ({_STUDY_VIEW}) AS s ON s.StudyInstanceUID = r.r_study",
        f"{_STUDY_ORDER}, SeriesNumber NULLS LAST, SeriesInstanceUID",
    ),
    "IMAGE": (
        f"SELECT {_STUDY_KEYS}, {_SERIES_KEYS}, {_IMAGE_KEYS} FROM ({_IMAGE_VIEW}) AS i "
        f"INNER JOIN ({_SERIES_VIEW}) AS r ON r.r_study = i.i_study AND r.SeriesInstanceUID = i.i_series "
        f"INNER JOIN ({_STUDY_VIEW}) AS s ON s.StudyInstanceUID = i.i_study",
        f"{_STUDY_ORDER}, SeriesNumber NULLS LAST, SeriesInstanceUID, InstanceNumber NULLS LAST, SOPInstanceUID",
    ),
}

#: the series and instances of ONE study, when nothing of the study or the patient is asked for
#: but its UID: the study's view (a second pass over its rows) is left out
_LEAN_LEVEL_SQL = {
    "SERIES": (
        f"SELECT r_study AS StudyInstanceUID, {_SERIES_KEYS} FROM ({_SERIES_VIEW}) AS r",
        "SeriesNumber NULLS LAST, SeriesInstanceUID",
    ),
    "IMAGE": (
        f"SELECT i_study AS StudyInstanceUID, {_SERIES_KEYS}, {_IMAGE_KEYS} FROM ({_IMAGE_VIEW}) AS i "
        f"INNER JOIN ({_SERIES_VIEW}) AS r ON r.r_study = i.i_study AND r.SeriesInstanceUID = i.i_series",
        "SeriesNumber NULLS LAST, SeriesInstanceUID, InstanceNumber NULLS LAST, SOPInstanceUID",
    ),
}
_LEAN_ATTRIBUTES = frozenset(
    k for k, a in ATTRIBUTES.items() if a.level in ("SERIES", "IMAGE") or k == "StudyInstanceUID"
)

#: keyword -> the instance-row column that answers it, for picking candidate studies (patient
#: demographics are left out: PatientUpdated may have replaced what the rows carry)
_ROW_COLUMNS = {
    "StudyInstanceUID": "study_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyID": "study_id",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician",
    "ModalitiesInStudy": "modality",
    "SeriesInstanceUID": "series_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part",
    "SOPInstanceUID": "sop_uid",
    "SOPClassUID": "sop_class_uid",
    "InstanceNumber": "instance_number",
}

#: the attributes each level can return (and match): its own and those of the levels above
LEVEL_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    level: tuple(k for k, a in ATTRIBUTES.items() if LEVELS.index(a.level) <= LEVELS.index(level)) for level in LEVELS
}
LEVEL_ATTRIBUTES["PATIENT"] = tuple(k for k, a in ATTRIBUTES.items() if a.level == "PATIENT")
for _level in ("STUDY", "SERIES", "IMAGE"):  # the patient counts are a patient-level view only
    LEVEL_ATTRIBUTES[_level] = tuple(k for k in LEVEL_ATTRIBUTES[_level] if not k.startswith("NumberOfPatient"))


class _Params:
    """Collects parameter values under generated names; the SQL only ever holds the names."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def __call__(self, value: Any, kind: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{kind}}}"


def _time_expr(expr: str) -> str:
    """A stored TM value as ``HHMMSS.ffffff`` text (``1015`` -> ``101500.000000``)."""
    bare = f"replaceAll(ifNull({expr}, ''), ':', '')"
    return f"concat({bare}, substring('000000.000000', length({bare}) + 1))"


def _match_sql(expr: str, condition: Condition, param: _Params, *, date_type: str = "Date") -> str | None:
    """The SQL test of one scalar expression, or None for universal matching."""
    if isinstance(condition, Universal):
        return None
    if isinstance(condition, Uids):
        return f"{expr} IN {param(list(condition.values), 'Array(String)')}"
    if isinstance(condition, Integers):
        return f"{expr} IN {param(list(condition.values), 'Array(Int64)')}"
    if isinstance(condition, DateRange):
        if date_type == "Date":
            bounds: tuple[Any, Any] = (condition.start, condition.end)
        else:  # DA text: YYYYMMDD compares as dates
            bounds = condition.dicom()
            expr = f"ifNull({expr}, '')"
        # Date32 like the column (projections.archive_index.fold.column_date): a Date parameter would
        # turn 1950 into 1970 and match the wrong studies
        kind = "Date32" if date_type == "Date" else "String"
        tests = []
        if bounds[0] is not None:
            tests.append(f"{expr} >= {param(bounds[0], kind)}")
        if bounds[1] is not None:
            tests.append(f"{expr} <= {param(bounds[1], kind)}")
        if date_type != "Date":
            tests.append(f"{expr} != ''")
        return "(" + " AND ".join(tests) + ")"
    if isinstance(condition, TimeRange):
        normal = _time_expr(expr)
        tests = [f"ifNull({expr}, '') != ''"]
        if condition.start is not None:
            tests.append(f"{normal} >= {param(condition.start, 'String')}")
        if condition.end is not None:
            tests.append(f"{normal} <= {param(condition.end, 'String')}")
        return "(" + " AND ".join(tests) + ")"
    assert isinstance(condition, Text)
    fold = condition.case_insensitive
    subject = f"lowerUTF8({expr})" if fold else expr
    alternatives = []
    if condition.exact:
        values = param(list(condition.exact), "Array(String)")
        alternatives.append(f"{subject} IN " + (f"arrayMap(x -> lowerUTF8(x), {values})" if fold else values))
    for pattern in condition.patterns:
        like = param(wildcard_to_like(pattern), "String")
        alternatives.append(f"{subject} LIKE " + (f"lowerUTF8({like})" if fold else like))
    return "(" + " OR ".join(alternatives) + ")"


def find(
    warehouse: Warehouse,
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
    ``returned`` names the attributes the caller will use (None: every one of the level); when a
    series or instance search names one study and needs nothing of it but its UID, the rows carry
    only StudyInstanceUID and the series/instance attributes, and come faster.
    Raises :class:`MatchingError` for a key the level does not have."""
    if level not in _LEVEL_SQL:
        raise MatchingError("QueryRetrieveLevel", f"must be one of {', '.join(LEVELS)}")
    for keyword in keys:
        if keyword not in LEVEL_ATTRIBUTES[level]:
            raise MatchingError(keyword, f"is not an attribute of the {level} level")
    page = checked_page(limit, offset)
    merges = merge_map(warehouse)
    param = _Params()
    where: list[str] = []
    having: list[str] = []
    for keyword, condition in keys.items():
        if isinstance(condition, Universal):
            continue
        if keyword == "PatientID":
            where_sql, having_sql = _patient_id_match(condition, merges, param)
            where.append(where_sql)
            having.append(having_sql)
            continue
        if keyword == "PatientName":
            image_name = _match_sql("patient_name", condition, param)
            updated = _match_sql("value", condition, param)
            where.append(
                f"({image_name} OR {_MERGED_PATIENT} IN (SELECT patient_id FROM {PATIENTS_TABLE} FINAL "
                f"WHERE attribute = 'PatientName' AND {updated}))"
            )
        elif keyword in _ROW_COLUMNS:
            row_sql = _match_sql(_ROW_COLUMNS[keyword], condition, param)
            if row_sql is not None:
                where.append(row_sql)
        if keyword == "ModalitiesInStudy":
            each = _match_sql("m", condition, param)
            having.append(f"arrayExists(m -> {each}, ModalitiesInStudy)")
        else:
            date_type = "Date" if keyword == "StudyDate" else "String"
            view_sql = _match_sql(keyword, condition, param, date_type=date_type)
            if view_sql is not None:
                having.append(view_sql)
    if where:
        candidates = f"study_uid IN (SELECT study_uid FROM {INSTANCES} WHERE {' AND '.join(where)})"
    elif not having and level != "PATIENT":
        # nothing to match: the page lies within the newest ``limit + offset`` studies, which one
        # cheap pass over the rows finds (the study's newest row decides, as in the view); only
        # those studies then get their full views
        candidates = _NEWEST_STUDIES
        page["window"] = limit + offset
    else:
        candidates = "1"
    body, order = _LEVEL_SQL[level]
    one_study = keys.get("StudyInstanceUID")
    if (
        level in _LEAN_LEVEL_SQL
        and isinstance(one_study, Uids)
        and len(one_study.values) == 1
        and returned is not None
        and {*returned, *keys} <= _LEAN_ATTRIBUTES
    ):
        body, order = _LEAN_LEVEL_SQL[level]

    def answer(candidates: str) -> list[dict[str, Any]]:
        sql = f"""
            WITH latest AS (SELECT *, {_MERGED_PATIENT} AS merged_patient_id FROM ({newest_versions(candidates)})),
                 demographics AS ({_DEMOGRAPHICS})
            SELECT * FROM ({body})
            WHERE {" AND ".join(having) if having else "1"}
            ORDER BY {order}
            LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}
        """
        params = {**param.values, **page, "merge_from": list(merges), "merge_to": list(merges.values())}
        return warehouse.query(sql, params).dicts()

    rows = answer(candidates)
    if "window" in page and len(rows) < limit:
        # a study of the window may hold no newest version any more (each of its instances was
        # filed elsewhere later, see projections.archive_index.views), leaving the page short
        # though more studies match: the page is then read without the window
        del page["window"]
        rows = answer("1")
    return rows


_NEWEST_STUDIES = f"""study_uid IN (
    SELECT study_uid FROM {INSTANCES}
    GROUP BY study_uid
    ORDER BY argMax(study_date, {NEWEST_ARRIVAL}) DESC NULLS LAST, argMax(study_time, {NEWEST_ARRIVAL}) DESC NULLS LAST,
             study_uid
    LIMIT {{window:UInt32}}
)"""


def _patient_id_match(condition: Condition, merges: Mapping[str, str], param: _Params) -> tuple[str, str]:
    """(candidate rows, view test) for PatientID: an exact ID stands for its whole merged patient."""
    if isinstance(condition, Text) and not condition.patterns:
        surviving = sorted({merges.get(i, i) for i in condition.exact})
        group = sorted({*surviving, *(prior for prior, target in merges.items() if target in surviving)})
        return (
            f"patient_id IN {param(group, 'Array(String)')}",
            f"PatientID IN {param(surviving, 'Array(String)')}",
        )
    row = _match_sql(_MERGED_PATIENT, condition, param)
    view = _match_sql("PatientID", condition, param)
    assert row is not None and view is not None
    return row, view
