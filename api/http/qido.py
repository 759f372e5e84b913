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

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from enum import Enum
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydicom.datadict import dictionary_has_tag
from pydicom.datadict import tag_for_keyword as keyword_tag
from pydicom.valuerep import PersonName
from starlette.concurrency import run_in_threadpool

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
    return _converter(attribute.vr)(value)


def _text(value: Any) -> str:
    return str(value)


def _date(value: Any) -> str:
    return f"{value.year:04d}{value.month:02d}{value.day:02d}" if isinstance(value, date) else str(value)


def _person_name(value: Any) -> dict[str, str]:
    return person_name_json(str(value))


#: how a value of each VR goes into a DICOM JSON "Value" array (every other VR: as text)
_VALUE_OF_VR: dict[str, Callable[[Any], Any]] = {"PN": _person_name, "IS": int, "US": int, "DA": _date}


def _converter(vr: str) -> Callable[[Any], dict[str, Any]]:
    """The DICOM JSON element of a value of ``vr`` (``value`` may be a list for several values)."""
    one: Callable[[Any], Any] = _VALUE_OF_VR.get(vr, _text)

    def element(value: Any) -> dict[str, Any]:
        if value is None or value == "" or value == []:
            return {"vr": vr}
        if isinstance(value, list):
            return {"vr": vr, "Value": [one(v) for v in value]}
        return {"vr": vr, "Value": [one(value)]}

    return element


def person_name_json(value: str) -> dict[str, str]:
    """A person name as PS3.18 F.2.2 components: the ``=``-separated groups go to "Alphabetic",
    "Ideographic" and "Phonetic", as pydicom writes them in WADO-RS metadata (one model for both)."""
    if "=" not in value:  # one group, the usual case: pydicom would answer (value,) too
        return {"Alphabetic": value}
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


#: what one tag of a QIDO-RS data set is made from: (keyword, its converter), a constant element,
#: or None for the row's retrieve URL
_Slot = tuple[str, Callable[[Any], dict[str, Any]]] | dict[str, Any] | None


class DatasetWriter:
    """The DICOM JSON data sets of one search: the tags, their order and how each value is written
    are worked out once from the returned keywords, so each row only fills in its values."""

    def __init__(self, keywords: Sequence[str], level: str, base_url: str) -> None:
        self._level = level
        self._base = f"{base_url}/dicomweb/studies/"
        fixed: dict[str, _Slot] = {
            SPECIFIC_CHARACTER_SET: {"vr": "CS", "Value": ["ISO_IR 192"]},
            INSTANCE_AVAILABILITY: {"vr": "CS", "Value": ["ONLINE"]},
            RETRIEVE_URL: None,  # the row's own URL
        }
        slots: dict[str, _Slot] = dict(fixed)
        for keyword in keywords:
            attribute = ATTRIBUTES[keyword]
            slots.setdefault(f"{attribute.tag:08X}", (keyword, _converter(attribute.vr)))
        #: (tag, keyword and converter, or the constant element, or None for the retrieve URL), in tag order
        self._slots = sorted(slots.items())

    def __call__(self, row: Mapping[str, Any]) -> dict[str, Any]:
        url = self._base + str(row.get("StudyInstanceUID"))
        if self._level in ("SERIES", "IMAGE"):
            url += f"/series/{row['SeriesInstanceUID']}"
        if self._level == "IMAGE":
            url += f"/instances/{row['SOPInstanceUID']}"
        out: dict[str, Any] = {}
        for tag, slot in self._slots:
            if slot is None:
                out[tag] = {"vr": "UR", "Value": [url]}
            elif isinstance(slot, tuple):
                out[tag] = slot[1](row.get(slot[0]))
            else:
                out[tag] = slot  # the same constant for every row: the encoder only reads it
        return out


def dataset(row: Mapping[str, Any], keywords: Sequence[str], level: str, base_url: str) -> dict[str, Any]:
    """One row as a DICOM JSON data set, the tags in order."""
    return DatasetWriter(keywords, level, base_url)(row)


def _named_uid(keys: Mapping[str, Condition], keyword: str) -> str | None:
    condition = keys.get(keyword)
    values: tuple[str, ...] = condition.values if isinstance(condition, Uids) else ()
    return values[0] if len(values) == 1 else None


def router(store: QueryStore, recorder: AccessRecorder) -> APIRouter:
    """The QIDO-RS routes, searching the query ``store``; each search recorded through ``recorder``.

    A search runs on the event loop, not in the thread pool: the look-up is a B-tree search of a
    fraction of a millisecond to a few, and the hops to a worker thread and back (with the wait
    for the access event between them) cost more than that on a loaded host. The access event is
    handed to the log as soon as the rows are known, and the answer is built while it is made
    durable; it leaves only once it is."""
    routes = APIRouter()
    signed_in = Depends(require())

    async def search(request: Request, user: User, level: str, path: dict[str, str]) -> Response:
        items = list(request.query_params.multi_items())
        asked: dict[str, Any] = {}
        for name, value in items:
            asked.setdefault(name, []).append(value)
        query = {k: v[0] if len(v) == 1 else v for k, v in asked.items()} | path
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        if not may(user.role, Action.READ_PATIENT_DATA):
            await run_in_threadpool(
                functools.partial(
                    recorder.record,
                    reader,
                    action="query",
                    channel="qido-rs",
                    study_uid=path.get("StudyInstanceUID"),
                    query=query,
                    outcome="denied",
                )
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
        access = recorder.begin(
            reader,
            action="query",
            channel="qido-rs",
            study_uid=_named_uid(parsed.keys, "StudyInstanceUID"),
            series_uid=_named_uid(parsed.keys, "SeriesInstanceUID"),
            query=query,
            results=len(rows),
        )
        write = DatasetWriter(keywords, level, public_base_url(request))
        body = [write(row) for row in rows]
        warnings = []
        if parsed.fuzzy:
            warnings.append('299 CAMI "The fuzzymatching parameter is not supported. Only literal matching was done."')
        if more and not parsed.limit_given:
            warnings.append('299 CAMI "There are additional results that can be requested."')
        headers = {"Warning": ", ".join(warnings)} if warnings else None
        response = Response(orjson.dumps(body), media_type=DICOM_JSON, headers=headers)  # encoded here
        await access.confirmed()  # the event is durable before a byte of the answer leaves
        return response

    tags: list[str | Enum] = ["DICOMweb"]

    @routes.get("/dicomweb/studies", tags=tags, summary="QIDO-RS: search for studies")
    async def search_studies(request: Request, user: User = signed_in) -> Response:
        return await search(request, user, "STUDY", {})

    @routes.get("/dicomweb/series", tags=tags, summary="QIDO-RS: search for series")
    async def search_series(request: Request, user: User = signed_in) -> Response:
        return await search(request, user, "SERIES", {})

    @routes.get("/dicomweb/studies/{study}/series", tags=tags, summary="QIDO-RS: search for series of a study")
    async def search_study_series(request: Request, study: str, user: User = signed_in) -> Response:
        return await search(request, user, "SERIES", {"StudyInstanceUID": study})

    @routes.get("/dicomweb/instances", tags=tags, summary="QIDO-RS: search for instances")
    async def search_instances(request: Request, user: User = signed_in) -> Response:
        return await search(request, user, "IMAGE", {})

    @routes.get("/dicomweb/studies/{study}/instances", tags=tags, summary="QIDO-RS: search for instances of a study")
    async def search_study_instances(request: Request, study: str, user: User = signed_in) -> Response:
        return await search(request, user, "IMAGE", {"StudyInstanceUID": study})

    @routes.get(
        "/dicomweb/studies/{study}/series/{series}/instances",
        tags=tags,
        summary="QIDO-RS: search for instances of a series",
    )
    async def search_series_instances(request: Request, study: str, series: str, user: User = signed_in) -> Response:
        return await search(request, user, "IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series})

    return routes
