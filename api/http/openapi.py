"""The OpenAPI document as the server really behaves: FastAPI's, completed where the routes read
their parameters themselves (QIDO-RS attribute keys, WADO-RS and WADO-URI options), with the
content types the routes send, every status they answer, the one error body and the grammar of
the identifiers (a path parameter that is not a DICOM UID gets 400, so the document says so).

Documentation only: nothing here validates a request; the routes do.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.http.errors import responses
from projections.archive_index.matching import ATTRIBUTES, MAX_VALUE
from projections.archive_index.views import MAX_LIMIT
from projections.query_model.find import LEVEL_ATTRIBUTES

DICOM_JSON = "application/dicom+json"
#: PS3.5 9.1, as :func:`ingest.dicom.is_uid` checks it
UID = {"type": "string", "pattern": r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$", "maxLength": 64}
#: one frame number (a comma-separated list of distinct numbers is accepted too)
FRAMES = {"type": "string", "pattern": r"^[1-9][0-9]{0,3}$", "description": "frame numbers from 1, comma-separated"}
_DATE = r"(19|20)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|1[0-9]|2[0-8])"
_TIME = r"([01][0-9]|2[0-3])([0-5][0-9]){0,2}"
#: text matching values: no list separators or control characters; * and ? are wildcards
TEXT = {"type": "string", "pattern": r"^[^\\,\x00-\x1f]*$", "maxLength": MAX_VALUE}
#: matching values of a query key; empty matches everything (a range START-END of dates or
#: times is accepted too, but OpenAPI cannot say that its start must not be after its end)
_BY_VR: dict[str, dict[str, Any]] = {
    "UI": {"type": "string", "pattern": r"^((0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+)?$", "maxLength": 64},
    "DA": {"type": "string", "pattern": f"^({_DATE})?$", "description": "YYYYMMDD (or a range START-END)"},
    "TM": {"type": "string", "pattern": f"^({_TIME})?$", "description": "HH[MM[SS]] (or a range START-END)"},
    "IS": {"type": "string", "pattern": r"^(-?[0-9]{1,9})?$"},
}
#: a patient ID (and a name searched for) as the pages take it
_PATIENT_ID = {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]{1,64}$"}
_PAGES = {"text/html": {"schema": {"type": "string"}}}
#: a moment as the audit routes take it (projections.audit.at.parse_moment): a date, or a date and
#: time with an optional zone (none: UTC)
_MOMENT = (
    r"(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|1[0-9]|2[0-8])"
    r"([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?"
)
_NO_CONTROL = {"type": "string", "pattern": r"^[^\x00-\x1f]{0,128}$"}
#: the audit routes' query parameters, by name (the routes refuse anything else with 400)
_AUDIT_QUERY: dict[str, dict[str, Any]] = {
    "q": _NO_CONTROL,
    "time": {"type": "string", "pattern": f"^{_MOMENT}$", "description": "ISO 8601; no zone: UTC"},
    "since": {"type": "string", "pattern": f"^({_MOMENT})?$"},
    "until": {"type": "string", "pattern": f"^({_MOMENT})?$"},
    "user": _NO_CONTROL,
    "organisation": _NO_CONTROL,
}
_ERROR = {"$ref": "#/components/schemas/ErrorBody"}


def _errors(*statuses: int) -> dict[str, Any]:
    """:func:`api.http.errors.responses` as document entries (the body a reference to ErrorBody)."""
    out: dict[str, Any] = {}
    for status, entry in responses(*statuses).items():
        described = {k: v for k, v in entry.items() if k != "model"}
        out[str(status)] = {**described, "content": {"application/json": {"schema": _ERROR}}}
    return out


def _query(name: str, schema: dict[str, Any], description: str = "", required: bool = False) -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": "query", "required": required, "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


def qido_parameters(level: str, in_path: tuple[str, ...]) -> list[dict[str, Any]]:
    """The query parameters of a QIDO-RS search at ``level``: the control parameters and every
    attribute the level can match (by keyword; the 8-digit tag is accepted as well)."""
    returnable = [*sorted(LEVEL_ATTRIBUTES[level]), "all"]
    parameters = [
        _query(
            "includefield",
            {"type": "array", "items": {"type": "string", "enum": returnable}},
            "attributes to return besides the defaults (repeated or comma-separated; all for every one)",
        ),
        _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "at most this many results"),
        _query("offset", {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}, "skip this many results"),
        _query("fuzzymatching", {"type": "string", "enum": ["true", "false"]}, "accepted; matching stays literal"),
    ]
    for keyword in LEVEL_ATTRIBUTES[level]:
        attribute = ATTRIBUTES[keyword]
        if not attribute.matchable or keyword in in_path:
            continue
        schema = _BY_VR.get(attribute.vr, TEXT)
        parameters.append(_query(keyword, schema, f"matching key ({attribute.tag:08X}, {attribute.vr})"))
    return parameters


_RENDER_OPTIONS = [
    _query("window", {"type": "string", "pattern": r"^-?[0-9]{1,4},[1-9][0-9]{0,3}$"}, "center,width"),
    _query("viewport", {"type": "string", "pattern": r"^[1-9][0-9]{0,2},[1-9][0-9]{0,2}$"}, "columns,rows"),
    _query("quality", {"type": "integer", "minimum": 1, "maximum": 100}, "JPEG quality"),
    _query(
        "v",
        {"type": "string", "pattern": "^[0-9a-f]{16}$"},
        "the instance's content tag (the study page gives it): the answer may then be cached for the session",
    ),
]
_WADO_URI = [
    _query("requestType", {"type": "string", "enum": ["WADO"]}, required=True),
    _query("studyUID", UID, required=True),
    _query("seriesUID", UID, required=True),
    _query("objectUID", UID, required=True),
    _query(
        "contentType",
        {"type": "string", "enum": ["application/dicom", "image/jpeg", "image/png"]},
        "image/jpeg by default",
    ),
    _query("frameNumber", {"type": "integer", "minimum": 1, "maximum": 9999}, "rendered images only"),
    _query("windowCenter", {"type": "number"}, "rendered images only, with windowWidth"),
    _query("windowWidth", {"type": "number", "exclusiveMinimum": 0}, "rendered images only, with windowCenter"),
    _query("rows", {"type": "integer", "minimum": 1, "maximum": 999}, "rendered images only"),
    _query("columns", {"type": "integer", "minimum": 1, "maximum": 999}, "rendered images only"),
    _query("imageQuality", {"type": "integer", "minimum": 1, "maximum": 100}, "rendered images only"),
    _query("transferSyntax", UID, "application/dicom only: the stored syntax (no transcoding)"),
    _query("anonymize", {"type": "string", "enum": ["no"]}, "de-identification is not offered"),
]

_PATH_SCHEMAS: dict[str, dict[str, Any]] = {
    "study": UID,
    "series": UID,
    "instance": UID,
    "study_uid": UID,
    "frames": FRAMES,
    "organisation": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)*$", "maxLength": 64},
    "record": {"type": "string", "pattern": r"^[^\x00-\x1f/]{1,128}$"},
}


def _content(*media_types: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {media: {"schema": schema or {"type": "string", "format": "binary"}} for media in media_types}


def _answers(description: str, content: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": description, "content": content}}
    out.update(_errors(*errors))
    return out


_DATASETS = {"type": "array", "items": {"type": "object"}}
#: what a read of stored objects may answer besides 200
_READ_ERRORS = (400, 401, 403, 404, 406, 503)
_RETRIEVE = _answers(
    'the objects as stored (multipart/related; type="application/dicom")', _content("multipart/related"), *_READ_ERRORS
)
_METADATA = _answers("DICOM JSON (PS3.18 F.2)", _content(DICOM_JSON, schema=_DATASETS), *_READ_ERRORS, 500)
_RENDERED = _answers("the frame rendered", _content("image/jpeg", "image/png"), *_READ_ERRORS)
_RENDERED["304"] = {"description": "If-None-Match names the frame's ETag: the cached picture is current"}
_FRAMES = _answers("pixel data of the frames (multipart/related)", _content("multipart/related"), *_READ_ERRORS, 500)
_QIDO = _answers(
    "matching data sets (DICOM JSON), [] when none match", _content(DICOM_JSON, schema=_DATASETS), 400, 401, 403, 503
)


def _page_answers(*statuses: int, redirect: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "the page", "content": _PAGES}}
    if redirect:
        out["303"] = {
            "description": "not signed in: to the sign-in page",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    for status in statuses:
        out[str(status)] = {"description": "the page saying why", "content": _PAGES}
    return out


def _complete(path: str, method: str, operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if parameter["in"] == "path" and parameter["name"] in _PATH_SCHEMAS:
            parameter["schema"] = _PATH_SCHEMAS[parameter["name"]]
    if method != "get":
        return
    in_path = tuple(
        {"study": "StudyInstanceUID", "series": "SeriesInstanceUID"}[p["name"]]
        for p in operation.get("parameters", [])
        if p["in"] == "path" and p["name"] in ("study", "series")
    )
    if path in ("/dicomweb/studies", "/dicomweb/series", "/dicomweb/instances") or path.endswith(
        ("/series", "/instances")
    ):
        level = "STUDY" if path == "/dicomweb/studies" else "SERIES" if path.endswith("series") else "IMAGE"
        operation.setdefault("parameters", []).extend(qido_parameters(level, in_path))
        operation["responses"] = _QIDO
    elif path.startswith("/dicomweb/studies/") and path.endswith("/metadata"):
        operation["responses"] = _METADATA
    elif path.endswith("/rendered"):
        operation.setdefault("parameters", []).extend(_RENDER_OPTIONS)
        operation["responses"] = _RENDERED
    elif path.endswith("/frames/{frames}"):
        operation["responses"] = _FRAMES
    elif path.startswith("/dicomweb/studies/"):
        operation["responses"] = _RETRIEVE
    elif path == "/wado":
        operation["parameters"] = _WADO_URI
        media = _content("application/dicom", "image/jpeg", "image/png")
        operation["responses"] = _answers("the object (application/dicom) or a rendered frame", media, *_READ_ERRORS)
    elif path == "/api/monitoring/stream":
        events = {"text/event-stream": {"schema": {"type": "string"}}}
        operation["responses"] = _answers(
            "Server-Sent Events: `event: snapshot` with the dashboard's JSON as data, whenever it changes",
            events,
            400,
            401,
            403,
            503,
        )
    elif path == "/audit" or path.startswith("/audit/"):
        _audit_parameters(operation, page=True)
        operation["responses"] = _page_answers(400, 401, 403, 404, 503)
        operation["security"] = [{"HTTPBearer": []}, {"APIKeyCookie": []}, {}]
    elif path.startswith("/api/monitoring/") or path.startswith("/api/audit/"):
        _audit_parameters(operation, page=False)
        errors = (400, 401, 403, 404, 503) if path.startswith("/api/audit/records") else (400, 401, 403, 503)
        operation["responses"] = {
            "200": operation["responses"]["200"],
            **_errors(*errors),
        }
    elif path == "/api/status":
        operation["responses"] = {"200": operation["responses"]["200"], **_errors(401, 403, 503)}
    elif path == "/api/session":
        operation["responses"] = {
            "200": operation["responses"]["200"],
            **_errors(401, 503),
        }
        operation["security"] = [{"HTTPBearer": []}, {"APIKeyCookie": []}]
    elif path == "/study":
        for parameter in operation.get("parameters", []):
            parameter["required"] = True
            parameter["schema"] = UID if parameter["name"] == "study" else _PATIENT_ID
        operation["responses"] = _page_answers(400, 401, 403, 404, 503)
        operation["security"] = [{"HTTPBearer": []}, {"APIKeyCookie": []}, {}]
    elif path == "/search":
        for parameter in operation.get("parameters", []):
            parameter["schema"] = {"type": "string", "pattern": r"^[^\x00-\x1f\x7f]{0,64}$"}
        operation["responses"] = _page_answers(400, 401, 403, 503)
        operation["security"] = [{"HTTPBearer": []}, {"APIKeyCookie": []}, {}]
    elif path in ("/monitoring", "/monitoring/{organisation}"):
        operation["responses"] = _page_answers(400, 401, 403, 503)
        operation["security"] = [{"HTTPBearer": []}, {"APIKeyCookie": []}, {}]
    elif path == "/signin":
        operation["responses"] = _page_answers(redirect=False)


def _audit_parameters(operation: dict[str, Any], *, page: bool) -> None:
    for parameter in operation.get("parameters", []):
        if parameter["in"] != "query":
            continue
        schema = _AUDIT_QUERY.get(parameter["name"])
        if parameter["name"] == "patient" and parameter["schema"].get("type") != "boolean":
            # a patient ID as the pages take it; empty on a page: the form without a search
            least = 0 if page else 1
            schema = {"type": "string", "pattern": rf"^[^\x00-\x1f\x7f]{{{least},64}}$"}
        if parameter["name"] == "q" and not page:
            schema = {"type": "string", "pattern": r"^[^\x00-\x1f]{1,128}$"}  # the search needs a text
        if parameter["name"] == "time" and page:
            schema = _AUDIT_QUERY["since"]  # the page without a moment: the form alone
        if schema is not None:
            parameter["schema"] = schema


_SIGNIN_FORM = {
    "required": True,
    "content": {
        "application/x-www-form-urlencoded": {
            "schema": {
                "type": "object",
                "properties": {
                    "user": {"type": "string", "pattern": r"\S", "maxLength": 128},
                    "token": {"type": "string", "pattern": r"\S", "maxLength": 256},
                    "next": {"type": "string", "maxLength": 512},
                },
                "required": ["user", "token"],
            }
        }
    },
}


def _complete_forms(document: dict[str, Any]) -> None:
    redirect = {
        "description": "signed in (out): to the page asked for",
        "headers": {"Location": {"schema": {"type": "string"}}},
    }
    signin = document["paths"]["/signin"]["post"]
    signin["requestBody"] = _SIGNIN_FORM
    signin["responses"] = {
        "303": redirect,
        **{str(s): {"description": "the sign-in page saying why", "content": _PAGES} for s in (400, 401, 403, 503)},
        "429": {
            "description": "too many failed sign-ins (the page, or the error body when JSON is asked for)",
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
            "content": {**_PAGES, "application/json": {"schema": _ERROR}},
        },
    }
    signout = document["paths"]["/signout"]["post"]
    signout["responses"] = {
        "303": redirect,
        "403": {"description": "not from the archive's own page", "content": _PAGES},
    }


def document(app: FastAPI) -> dict[str, Any]:
    """The document ``/openapi.json`` serves (built once)."""
    if app.openapi_schema is None:
        built = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        for path, operations in built.get("paths", {}).items():
            for method, operation in operations.items():
                # FastAPI adds 422 wherever there are parameters; the archive answers 400 (a 422
                # of the report service's own stays)
                answers = operation.get("responses", {})
                if "HTTPValidationError" in str(answers.get("422", "")):
                    answers.pop("422")
                _complete(path, method, operation)
        _complete_forms(built)
        schemas = built.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = built
    return app.openapi_schema
