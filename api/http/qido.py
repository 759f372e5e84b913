"""DICOMweb QIDO-RS (PS3.18 10.6): search for studies, series and instances (issue 5).

Routes (GET, ``application/dicom+json``)::

    /dicomweb/studies
    /dicomweb/series                                   /dicomweb/studies/{study}/series
    /dicomweb/instances   /dicomweb/studies/{study}/instances   /dicomweb/studies/{study}/series/{series}/instances

Query parameters: any attribute the level (or a level above it) has, by keyword or tag
(``PatientName=Иван*``, ``00100010=Иван*``), matched by :mod:`projections.archive_index.matching` rules (exact,
``*``/``?`` wildcards, date and time ranges, lists of UIDs or codes separated by ``,`` or given
as repeated parameters); ``includefield`` (keywords or tags, repeated or comma-separated, or
``all``); ``limit`` (1..10000, default 1000) and ``offset``; ``fuzzymatching`` (``true`` is
accepted but only literal matching is done, said in a ``Warning`` header as PS3.18 asks).

Answers:

* 200 with a JSON array of DICOM JSON data sets (an empty array when nothing matches: one shape
  for every outcome, which dicomweb-client and browsers read the same way). Each data set has the
  level's standard attributes (PS3.18 table 10.6.3-3..5: for studies NumberOfStudyRelatedSeries /
  Instances, ModalitiesInStudy, RetrieveURL...; the attributes of the levels above when the
  search is not scoped to them), every matching key, and the ``includefield`` ones. When the page
  is full and the caller gave no ``limit``, a ``Warning: 299`` header says more can be asked for.
* 400 ``invalid-parameter`` with ``detail = {"parameter": ..., "problem": ...}`` naming the bad
  parameter (unknown attribute, malformed date or time range, bad UID, bad limit/offset), never
  echoing its value; 401 without credentials; 403 for a role outside
  ``Action.READ_PATIENT_DATA`` (:mod:`schemas.policy`) (recorded as a denied access).

Each successful search leaves exactly one RecordAccessed event (action ``query``, channel
``qido-rs``, the parameters as asked, the number of results, the study when the search names
one), appended before the answer leaves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydicom.datadict import dictionary_has_tag
from pydicom.datadict import tag_for_keyword as keyword_tag
from pydicom.valuerep import PersonName

from api.access import AccessRecorder, Reader
from api.auth import User
from api.http.base_url import base_url as public_base_url
from api.http.deps import require
from api.http.errors import ApiError
from projections.archive_index.matching import (
    ATTRIBUTES,
    Attribute,
    Condition,
    MatchingError,
    Uids,
    parse_condition,
    resolve_attribute,
)
from projections.archive_index.views import MAX_LIMIT
from projections.query_model.find import LEVEL_ATTRIBUTES, find
from projections.query_model.store import QueryStore
from schemas.policy import Action, may
from schemas.uids import is_uid

DICOM_JSON = "application/dicom+json"
DEFAULT_LIMIT = 1000
CONTROL_PARAMETERS = ("includefield", "limit", "offset", "fuzzymatching")

#: the attributes each level answers with by default (PS3.18 tables 10.6.3-3, -4, -5)
STUDY_DEFAULTS = (
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
)
SERIES_DEFAULTS = (
    "Modality",
    "SeriesDescription",
    "SeriesInstanceUID",
    "SeriesNumber",
    "NumberOfSeriesRelatedInstances",
)
INSTANCE_DEFAULTS = ("SOPClassUID", "SOPInstanceUID", "InstanceNumber", "Rows", "Columns", "NumberOfFrames")

SPECIFIC_CHARACTER_SET = "00080005"
INSTANCE_AVAILABILITY = "00080056"
RETRIEVE_URL = "00081190"
#: the component groups of a PN value in DICOM JSON, in order (PS3.18 F.2.2)
PERSON_NAME_GROUPS = ("Alphabetic", "Ideographic", "Phonetic")


def _bad(parameter: str, problem: str) -> ApiError:
    """400 naming the parameter (cut to 64 characters: it is the caller's text) and its problem."""
    return ApiError(400, "invalid-parameter", {"parameter": parameter[:64], "problem": problem})


# -- parsing the request -------------------------------------------------------------------------
@dataclass(frozen=True)
class Search:
    """A parsed QIDO-RS request."""

    level: str
    keys: dict[str, Condition]
    include: set[str]
    limit: int
    offset: int
    limit_given: bool
    fuzzy: bool


def _integer(name: str, values: Sequence[str], low: int, high: int) -> int:
    if len(values) != 1:
        raise _bad(name, "give it once")
    text = values[0].strip()
    if not text.isdigit():
        raise _bad(name, f"must be a whole number from {low} to {high}")
    number = int(text)
    if not low <= number <= high:
        raise _bad(name, f"must be a whole number from {low} to {high}")
    return number


def parse_search(level: str, items: Sequence[tuple[str, str]], path: Mapping[str, str]) -> Search:
    """Query parameters (+ the UIDs in the URL path) -> a :class:`Search`, or 400 naming the
    parameter at fault."""
    grouped: dict[str, list[str]] = {}
    for name, value in items:
        grouped.setdefault(name, []).append(value)
    available = LEVEL_ATTRIBUTES[level]
    keys: dict[str, Condition] = {}
    for keyword, uid in path.items():
        if not is_uid(uid):
            raise _bad(keyword, "the UID in the URL is not a valid DICOM UID")
        keys[keyword] = parse_condition(ATTRIBUTES[keyword], uid)
    include: set[str] = set()
    limit, limit_given, offset, fuzzy = DEFAULT_LIMIT, False, 0, False
    for name, values in grouped.items():
        lowered = name.lower()
        if lowered == "includefield":
            include |= _include_fields(level, values)
        elif lowered == "limit":
            limit, limit_given = _integer("limit", values, 1, MAX_LIMIT), True
        elif lowered == "offset":
            offset = _integer("offset", values, 0, 2**31 - 1)
        elif lowered == "fuzzymatching":
            if len(values) != 1 or values[0].strip().lower() not in ("true", "false"):
                raise _bad("fuzzymatching", "must be true or false")
            fuzzy = values[0].strip().lower() == "true"
        else:
            attribute = _attribute(name, available, level)
            if attribute.keyword in keys:
                raise _bad(name, "is given twice (in the URL path or as both keyword and tag)")
            try:
                keys[attribute.keyword] = parse_condition(attribute, values, separators="\\,")
            except MatchingError as exc:
                raise _bad(name, exc.message) from None
    return Search(level, keys, include, limit, offset, limit_given, fuzzy)


def _attribute(name: str, available: Sequence[str], level: str) -> Attribute:
    try:
        attribute = resolve_attribute(name)
    except MatchingError:
        raise _bad(name, "is not a query parameter or an attribute the archive can match") from None
    if attribute.keyword not in available:
        raise _bad(name, f"is not an attribute of the {level.lower()} level searched here")
    return attribute


def _is_dicom_attribute(field: str) -> bool:
    """A keyword or an 8-hex-digit tag of the DICOM data dictionary."""
    if keyword_tag(field) is not None:
        return True
    return len(field) == 8 and all(c in "0123456789abcdefABCDEF" for c in field) and dictionary_has_tag(int(field, 16))


def _include_fields(level: str, values: Sequence[str]) -> set[str]:
    """The ``includefield`` attributes the level can return. A DICOM attribute the archive does not
    hold at this level (a viewer asking the study list for Modality, say) is left out, as PS3.18
    lets an origin server do; a name that is no DICOM attribute at all is a 400."""
    wanted: set[str] = set()
    for value in values:
        for field in (v.strip() for v in value.split(",")):
            if not field:
                continue
            if field.lower() == "all":
                wanted |= set(LEVEL_ATTRIBUTES[level])
                continue
            try:
                attribute = resolve_attribute(field)
            except MatchingError:
                if _is_dicom_attribute(field):
                    continue
                raise _bad("includefield", "names no DICOM attribute (a keyword or an 8-digit tag)") from None
            if attribute.keyword in LEVEL_ATTRIBUTES[level]:
                wanted.add(attribute.keyword)
    return wanted


# -- answering -------------------------------------------------------------------------------------
def dicom_json_value(attribute: Attribute, value: Any) -> dict[str, Any]:
    """One attribute as DICOM JSON (PS3.18 F.2): ``{"vr": ..., "Value": [...]}``, no Value if empty."""
    element: dict[str, Any] = {"vr": attribute.vr}
    if value is None or value == "" or value == []:
        return element
    values = value if isinstance(value, list) else [value]
    if attribute.vr == "PN":
        element["Value"] = [person_name_json(str(v)) for v in values]
    elif attribute.vr in ("IS", "US"):
        element["Value"] = [int(v) for v in values]
    elif attribute.vr == "DA":
        element["Value"] = [v.strftime("%Y%m%d") if isinstance(v, date) else str(v) for v in values]
    else:
        element["Value"] = [str(v) for v in values]
    return element


def person_name_json(value: str) -> dict[str, str]:
    """A person name as PS3.18 F.2.2 components: the ``=``-separated groups go to "Alphabetic",
    "Ideographic" and "Phonetic", as pydicom writes them in WADO-RS metadata (one model for both)."""
    groups = PersonName(value).components
    return dict(zip(PERSON_NAME_GROUPS, groups, strict=False))


def returned_keywords(search: Search, scoped: Sequence[str]) -> list[str]:
    """The attributes each data set carries: the level's defaults (and those of the levels above
    that the URL does not fix), the matching keys, the ``includefield`` ones."""
    level = search.level
    wanted: list[str] = []
    if level == "STUDY" or "StudyInstanceUID" not in scoped:
        wanted += STUDY_DEFAULTS
    if level in ("SERIES", "IMAGE"):
        wanted.append("StudyInstanceUID")
        if level == "SERIES" or "SeriesInstanceUID" not in scoped:
            wanted += SERIES_DEFAULTS
    if level == "IMAGE":
        wanted += ("SeriesInstanceUID", *INSTANCE_DEFAULTS)
    wanted += search.keys
    wanted += sorted(search.include)
    return list(dict.fromkeys(wanted))


def dataset(row: Mapping[str, Any], keywords: Sequence[str], level: str, base_url: str) -> dict[str, Any]:
    study = row.get("StudyInstanceUID")
    url = f"{base_url}/dicomweb/studies/{study}"
    if level in ("SERIES", "IMAGE"):
        url += f"/series/{row['SeriesInstanceUID']}"
    if level == "IMAGE":
        url += f"/instances/{row['SOPInstanceUID']}"
    out: dict[str, Any] = {
        SPECIFIC_CHARACTER_SET: {"vr": "CS", "Value": ["ISO_IR 192"]},
        INSTANCE_AVAILABILITY: {"vr": "CS", "Value": ["ONLINE"]},
        RETRIEVE_URL: {"vr": "UR", "Value": [url]},
    }
    for keyword in keywords:
        attribute = ATTRIBUTES[keyword]
        out[f"{attribute.tag:08X}"] = dicom_json_value(attribute, row.get(keyword))
    return dict(sorted(out.items()))


def _named_uid(keys: Mapping[str, Condition], keyword: str) -> str | None:
    condition = keys.get(keyword)
    values: tuple[str, ...] = condition.values if isinstance(condition, Uids) else ()
    return values[0] if len(values) == 1 else None


def router(store: QueryStore, recorder: AccessRecorder) -> APIRouter:
    """The QIDO-RS routes, searching the query ``store``; each search recorded through ``recorder``."""
    routes = APIRouter()
    signed_in = Depends(require())

    def search(request: Request, user: User, level: str, path: dict[str, str]) -> JSONResponse:
        items = list(request.query_params.multi_items())
        asked: dict[str, Any] = {}
        for name, value in items:
            asked.setdefault(name, []).append(value)
        query = {k: v[0] if len(v) == 1 else v for k, v in asked.items()} | path
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        if not may(user.role, Action.READ_PATIENT_DATA):
            recorder.record(
                reader,
                action="query",
                channel="qido-rs",
                study_uid=path.get("StudyInstanceUID"),
                query=query,
                outcome="denied",
            )
            raise ApiError(403, "forbidden", f"role {user.role} may not search patient data")
        parsed = parse_search(level, items, path)
        keywords = returned_keywords(parsed, list(path))
        try:
            # one more row than the page tells whether to warn that more can be asked for
            fetch = parsed.limit if parsed.limit_given else parsed.limit + 1
            rows = find(store, level, parsed.keys, limit=fetch, offset=parsed.offset, returned=keywords)
        except MatchingError as exc:
            raise _bad(exc.attribute, exc.message) from None
        more = len(rows) > parsed.limit
        rows = rows[: parsed.limit]
        recorder.record(
            reader,
            action="query",
            channel="qido-rs",
            study_uid=_named_uid(parsed.keys, "StudyInstanceUID"),
            series_uid=_named_uid(parsed.keys, "SeriesInstanceUID"),
            query=query,
            results=len(rows),
        )
        body = [dataset(row, keywords, level, public_base_url(request)) for row in rows]
        warnings = []
        if parsed.fuzzy:
            warnings.append('299 CAMI "The fuzzymatching parameter is not supported. Only literal matching was done."')
        if more and not parsed.limit_given:
            warnings.append('299 CAMI "There are additional results that can be requested."')
        headers = {"Warning": ", ".join(warnings)} if warnings else None
        return JSONResponse(body, media_type=DICOM_JSON, headers=headers)

    tags: list[str | Enum] = ["DICOMweb"]

    @routes.get("/dicomweb/studies", tags=tags, summary="QIDO-RS: search for studies")
    def search_studies(request: Request, user: User = signed_in) -> JSONResponse:
        return search(request, user, "STUDY", {})

    @routes.get("/dicomweb/series", tags=tags, summary="QIDO-RS: search for series")
    def search_series(request: Request, user: User = signed_in) -> JSONResponse:
        return search(request, user, "SERIES", {})

    @routes.get("/dicomweb/studies/{study}/series", tags=tags, summary="QIDO-RS: search for series of a study")
    def search_study_series(request: Request, study: str, user: User = signed_in) -> JSONResponse:
        return search(request, user, "SERIES", {"StudyInstanceUID": study})

    @routes.get("/dicomweb/instances", tags=tags, summary="QIDO-RS: search for instances")
    def search_instances(request: Request, user: User = signed_in) -> JSONResponse:
        return search(request, user, "IMAGE", {})

    @routes.get("/dicomweb/studies/{study}/instances", tags=tags, summary="QIDO-RS: search for instances of a study")
    def search_study_instances(request: Request, study: str, user: User = signed_in) -> JSONResponse:
        return search(request, user, "IMAGE", {"StudyInstanceUID": study})

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances",
        tags=tags,
        summary="QIDO-RS: search for instances of a series",
    )
    def search_series_instances(request: Request, study: str, series: str, user: User = signed_in) -> JSONResponse:
        return search(request, user, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    return routes
