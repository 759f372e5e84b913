"""The browser side: sign-in, the study page the MIS links to, patient search, the viewer (issue 5).

Mounted into the HTTP app by :func:`api.http.app.create_app`; every read goes through
:mod:`api.access` (role policy and the record-accessed event).

Pages (server-side HTML shells; the script ``/static/cami.js`` renders the data embedded in the
page, in Russian or English; no build step, nothing fetched from outside the archive):

``GET /signin``, ``POST /signin``
    User name + token (the bearer token serves as the password) -> a session cookie
    (``cami_session``: HttpOnly, SameSite=Strict, HMAC-signed, 12 h; see :mod:`api.auth`). The
    form posts same-origin only (a foreign ``Origin`` is refused). ``POST /signout`` ends it, on
    the server too (the session id is revoked: a copy of the cookie no longer works). After 5
    failed sign-ins within 5 minutes for one user name or from one address, sign-in is refused
    with 429 (the page, or JSON when asked for) until the window passes; each is logged.
``GET /study?patient=<PatientID>&study=<StudyInstanceUID>``
    The stable MIS URL. Patient, study, series, viewer, report, the patient's earlier studies.
    Not signed in: 303 to the sign-in page and back. A role without images: 403 page. A study
    that is unknown or not this patient's: the same 404 page either way (nothing leaks).
``GET /search?patient=<PatientID>&name=<PatientName>``
    A patient's studies across all organisations, newest first (merges followed).
``GET /api/session``
    Who the browser is signed in as (JSON; no patient data).

Access records: opening a study page leaves exactly one RecordAccessed (action ``view``,
channel ``study-page``, patient ID and study UID): everything the page shows except the pixels
is in that one response. Each image the viewer then loads is a WADO-RS ``rendered`` request,
recorded by the WADO route as its own read. A search leaves one (``query``, ``study-page``). A
refused page (403) leaves one with outcome ``denied``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.access import AccessRecorder, Reader
from api.auth import (
    SESSION_COOKIE,
    SESSION_TTL_SECONDS,
    RevokedSessions,
    SignInLimiter,
    User,
    UserDirectory,
    UsersFileError,
    issue_session,
    session_claims,
    session_key,
)
from api.http.assets import STATIC, FingerprintedStatic
from api.http.deps import authenticate as _authenticate
from api.http.errors import ApiError
from api.http.pages import render
from projections.archive_index.views import series_instances, study_report, study_series
from projections.orders.queries import status_of
from projections.query_model.find import patient_timeline, search_studies
from projections.query_model.store import QueryStore
from projections.warehouse.base import Warehouse
from schemas.organisations import OrganisationDirectory
from schemas.policy import Action, may
from schemas.uids import is_uid

log = logging.getLogger("cami.web")

#: roles that may open a study page (it shows images) and search patients' studies
MAX_PATIENT_ID = 64
MAX_NAME = 64
SEARCH_LIMIT = 200

#: no inline script or style, nothing from another origin; images come as blob: URLs from fetch()
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'self'"
)
_HEADERS = {
    "Content-Security-Policy": _CSP,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


# -- rendering (the templates are in api/http/templates/) -------------------------------------------
def html_page(kind: str, title: str, data: Mapping[str, Any], status: int = 200, **context: Any) -> HTMLResponse:
    """The page ``kind`` (template ``<kind>.html``) with ``data`` embedded for the script."""
    context.setdefault("user", None)
    document = render(f"{kind}.html", kind=kind, title=title, data={"page": kind, **data}, **context)
    return HTMLResponse(document, status_code=status, headers=_HEADERS)


def message_page(status: int, key: str, russian: str, user: User | None) -> HTMLResponse:
    data = {"status": status, "message": key}
    return html_page("message", str(status), data, status, user=user, code=status, key=key, russian=russian)


def _signin_page(next_url: str, error: str | None = None, status: int = 200) -> HTMLResponse:
    return html_page("signin", "Вход", {"next": next_url, "error": error}, status, next_url=next_url, error=error)


def _study_page(user: User, data: Mapping[str, Any]) -> HTMLResponse:
    return html_page("study", "Исследование", data, user=user)


def _search_page(
    user: User, data: Mapping[str, Any], patient: str | None, name: str | None, status: int
) -> HTMLResponse:
    context = {"patient": patient, "name": name, "max_patient_id": MAX_PATIENT_ID, "max_name": MAX_NAME}
    return html_page("search", "Поиск", data, status, user=user, **context)


# -- helpers -----------------------------------------------------------------------------------
def _safe_next(value: str | None) -> str:
    """Only a path on this site (never ``//host`` or a scheme): no open redirect."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/search"
    if any(ord(ch) < 0x20 for ch in value) or urlsplit(value).netloc:
        return "/search"
    return value


def _here(request: Request) -> str:
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


def reader_of(request: Request, user: User) -> Reader:
    return Reader(user.actor, user.organisation, request.client.host if request.client else None)


class _Redirect(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


def page_user(request: Request) -> User:
    """The signed-in user of an HTML page: session cookie or bearer header; else a redirect to
    the sign-in page (no credentials) or a 401/503 page (bad bearer token, users file broken)."""
    try:
        return _authenticate(request)
    except ApiError as exc:
        if exc.status == 401 and not request.headers.get("authorization"):
            target = "/signin?" + urlencode({"next": _here(request)})
            raise _Redirect(RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})) from None
        if exc.status == 401:
            raise _Redirect(message_page(401, "error.401", "Требуется вход: токен недействителен.", None)) from None
        raise _Redirect(message_page(503, "error.503", "Архив временно недоступен.", None)) from None


def _same_origin(request: Request) -> bool:
    """A form post from one of this archive's own pages (Origin, else Referer, when sent)."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        return source is None
    parts = urlsplit(source)
    own = urlsplit(str(request.base_url))
    return (parts.scheme, parts.netloc) == (own.scheme, own.netloc)


def valid_patient_id(value: str) -> bool:
    return 0 < len(value) <= MAX_PATIENT_ID and not any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def _person(value: Any) -> str | None:
    """A DICOM PN as people write it (components joined by spaces)."""
    if not value:
        return None
    alphabetic = str(value).split("=", 1)[0]
    return " ".join(part for part in alphabetic.split("^") if part) or None


def _study_url(patient_id: str, study_uid: str) -> str:
    return f"/study?patient={quote(patient_id, safe='')}&study={quote(study_uid, safe='')}"


def _study_summary(study: Mapping[str, Any], directory: OrganisationDirectory) -> dict[str, Any]:
    organisations = list(study.get("organisations") or [])
    return {
        "study_uid": study["study_uid"],
        "url": _study_url(study["patient_id"], study["study_uid"]),
        "patient_id": study["patient_id"],
        "patient_name": _person(study.get("patient_name")),
        "patient_birth_date": study.get("patient_birth_date"),
        "patient_sex": study.get("patient_sex"),
        "study_date": study.get("study_date"),
        "study_time": study.get("study_time"),
        "study_description": study.get("study_description"),
        "accession_number": study.get("accession_number"),
        "modalities": list(study.get("modalities") or []),
        "organisations": organisations,
        # the names the page shows (the regional directory); unknown codes keep their marker
        "organisation_names": [directory.describe(code) for code in organisations],
        "series_count": study.get("series_count"),
        "instance_count": study.get("instance_count"),
        "report_status": study.get("report_status"),
        "missing": list(study.get("missing") or []),
        "emergency": bool(study.get("emergency")),
    }


#: report id -> what the write side knows of it for this reader: reading, assessment, hidden
Readings = Callable[[str, User], Mapping[str, Mapping[str, Any]]]


def _report_view(report: Mapping[str, Any], user: User, readings: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The study's reports as the page shows them: draft texts only to those who write reports;
    each with the reading it is (double reading, second opinion, arbitration); a double reading
    the reader may not read yet (ingest/reports/readings.py) with its texts left out."""
    shown: list[dict[str, Any]] = []
    for item in report["reports"]:
        entry = dict(item)
        known = readings.get(entry["report_id"], {})
        entry["reading"] = known.get("reading")
        entry["assessment"] = known.get("assessment")
        if entry["status"] == "draft" and not may(user.role, Action.READ_DRAFTS):
            entry["protocol_text"] = entry["conclusion_text"] = None
        if known.get("hidden"):
            entry |= {"protocol_text": None, "conclusion_text": None, "assessment": None, "amendments": [],
                      "blinded": True}  # fmt: skip
        shown.append(entry)
    order = {"amended": 0, "signed": 1, "draft": 2}
    shown.sort(key=lambda r: (order.get(r["status"], 3), str(r.get("signed_at") or "")))
    return {"status": report["status"], "reports": shown, "drafts_hidden": not may(user.role, Action.READ_DRAFTS)}


def _series_view(warehouse: Any, study_uid: str) -> list[dict[str, Any]]:
    series = []
    for row in study_series(warehouse, study_uid):
        instances = [
            {
                "sop_uid": i["sop_uid"],
                "number": i.get("instance_number"),
                "frames": max(int(i.get("frames") or 1), 1),
                "rows": i.get("rows"),
                "columns": i.get("columns"),
                "sop_class_uid": i.get("sop_class_uid"),
                # the content tag the viewer puts in its frame URLs, so the browser may keep them
                "v": str(i.get("blob_sha256") or "")[:16] or None,
            }
            for i in series_instances(warehouse, study_uid, row["series_uid"])
        ]
        series.append(
            {
                "series_uid": row["series_uid"],
                "number": row.get("series_number"),
                "description": row.get("series_description"),
                "modality": row.get("modality"),
                "body_part": row.get("body_part"),
                "instance_count": row.get("instance_count"),
                "missing": list(row.get("missing") or []),
                "instances": instances,
            }
        )
    return series


def _too_many_attempts(request: Request, next_url: str, wait: int) -> Response:
    """429: JSON for a client that asks for JSON, else the sign-in page saying so."""
    headers = {"Retry-After": str(wait), "Cache-Control": "no-store"}
    accept = request.headers.get("accept", "")
    if "application/json" in accept and "text/html" not in accept:
        detail = f"too many failed sign-ins for this user name or address; try again in {wait} s"
        return JSONResponse({"error": "too-many-attempts", "detail": detail}, status_code=429, headers=headers)
    page = _signin_page(next_url, "too-many-attempts", 429)
    page.headers.update(headers)
    return page


# -- routes ------------------------------------------------------------------------------------
def install_sessions(app: FastAPI, home: Path, configured_key: str = "") -> None:
    """What the pages need of the app itself: the session key (``configured_key``, else a key
    file) and revocations under ``home``, the sign-in limiter, the static assets and the redirect
    to the sign-in page."""
    app.state.session_key = session_key(home, configured_key)
    app.state.revoked_sessions = RevokedSessions(home / "sessions.db")
    app.state.signin_limiter = SignInLimiter()
    app.mount("/static", FingerprintedStatic(directory=STATIC), name="static")

    @app.exception_handler(_Redirect)
    async def redirect(request: Request, exc: _Redirect) -> Response:
        return exc.response


def router(
    warehouse: Warehouse,
    store: QueryStore,
    recorder: AccessRecorder,
    organisations: OrganisationDirectory | None = None,
    readings: Readings | None = None,
) -> APIRouter:
    """The browser pages and their JSON routes, finding studies in the query ``store`` and reading
    their series, instances and reports from ``warehouse``; reads recorded through
    ``recorder``; organisations named from ``organisations`` (none: every code shown as unknown);
    ``readings`` says which reports are which readings, and which the reader may not read yet."""
    routes = APIRouter()
    directory = organisations if organisations is not None else OrganisationDirectory()

    @routes.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/search", status_code=303)

    @routes.get("/signin", tags=["browser"], summary="the sign-in page", response_class=HTMLResponse)
    def signin_form(request: Request, next: str | None = None) -> HTMLResponse:
        return _signin_page(_safe_next(next), "expired" if next else None)

    @routes.post("/signin", tags=["browser"], summary="sign in (form post): user name and token -> session cookie")
    async def signin(request: Request) -> Response:
        if not _same_origin(request):
            return message_page(403, "error.cross-site", "Вход возможен только со страницы архива.", None)
        try:
            form = await request.form()
        except Exception:  # a malformed body: the page says so, nothing more
            return _signin_page("/search", "bad-credentials", 400)
        name, token, next_url = (form.get(k) for k in ("user", "token", "next"))
        target = _safe_next(next_url if isinstance(next_url, str) else None)
        if not isinstance(name, str) or not isinstance(token, str) or not name.strip() or not token.strip():
            return _signin_page(target, "bad-credentials", 400)
        address = request.client.host if request.client else None
        limiter: SignInLimiter = request.app.state.signin_limiter
        wait = limiter.retry_after(name, address)
        if wait:
            # refused before the token is even looked at: guessing gets nowhere while limited
            log.warning("browser sign-in refused: too many failed attempts (user %r, from %s)", name[:128], address)
            return _too_many_attempts(request, target, wait)
        directory: UserDirectory = request.app.state.users
        try:
            user = directory.authenticate(token.strip())
        except UsersFileError as exc:
            log.error("users file unusable: %s", exc)
            return _signin_page(target, "unavailable", 503)
        if user is None or user.name != name.strip():
            limiter.failed(name, address)
            log.warning("failed browser sign-in (user %r, from %s)", name[:128], address)
            return _signin_page(target, "bad-credentials", 401)
        limiter.succeeded(name)
        response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
        response.set_cookie(
            SESSION_COOKIE,
            issue_session(request.app.state.session_key, user, time.time()),
            max_age=SESSION_TTL_SECONDS,
            path="/",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    @routes.post("/signout", tags=["browser"], summary="end the browser session")
    def signout(request: Request) -> Response:
        if not _same_origin(request):
            return message_page(403, "error.cross-site", "Вход возможен только со страницы архива.", None)
        # the session ends on the server too: a copy of the cookie is refused from now on
        claims = session_claims(request.app.state.session_key, request.cookies.get(SESSION_COOKIE), time.time())
        if claims is not None:
            request.app.state.revoked_sessions.revoke(claims["i"], claims["e"], time.time())
        response = RedirectResponse("/signin", status_code=303, headers={"Cache-Control": "no-store"})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    @routes.get("/api/session", tags=["browser"], summary="who the caller is signed in as (no patient data)")
    def whoami(request: Request) -> JSONResponse:
        user = _authenticate(request)
        return JSONResponse(
            {
                "user": user.name,
                "role": user.role,
                "organisation": user.organisation,
                "organisation_name": directory.display(user.organisation) if user.organisation else None,
            },
            headers={"Cache-Control": "no-store"},
        )

    @routes.get("/study", tags=["browser"], summary="the study page the MIS links to", response_class=HTMLResponse)
    def study_page(request: Request, patient: str | None = None, study: str | None = None) -> HTMLResponse:
        user = page_user(request)
        if patient is None or not valid_patient_id(patient) or study is None or not is_uid(study):
            return message_page(
                400,
                "error.400-study",
                "Ссылка неполна: нужны patient (ID пациента) и study (StudyInstanceUID).",
                user,
            )
        reader = reader_of(request, user)
        if not may(user.role, Action.READ_IMAGES):
            recorder.record(
                reader, action="view", channel="study-page", study_uid=study, patient_id=patient, outcome="denied"
            )
            return message_page(403, "error.403-study", "Вашей роли просмотр исследований не разрешён.", user)
        found = search_studies(store, patient_id=patient, study_uid=study, limit=1)
        if not found:  # unknown study, or not this patient's: the same answer, nothing about either
            return message_page(404, "error.404-study", "Исследование этого пациента не найдено.", user)
        record = found[0]
        series = _series_view(warehouse, study)
        report = _report_view(study_report(warehouse, study), user, readings(study, user) if readings else {})
        earlier = patient_timeline(store, record["patient_id"])
        priors = [_study_summary(s, directory) for s in earlier if s["study_uid"] != study]
        summary = _study_summary(record, directory)
        accession = record.get("accession_number")
        data = {
            "user": {"name": user.name, "role": user.role},
            "patient": {
                "id": record["patient_id"],
                "requested_id": patient,
                "name": summary["patient_name"],
                "birth_date": record.get("patient_birth_date"),
                "sex": record.get("patient_sex"),
                "issuer": record.get("issuer_of_patient_id"),
            },
            "study": {
                **summary,
                "study_id": record.get("study_id"),
                "referring_physician": _person(record.get("referring_physician")),
                "first_received": record.get("first_received"),
                "last_received": record.get("last_received"),
            },
            "series": series,
            "report": report,
            "priors": priors,
            # the order this study was made for, and how far it has come (None: no order from the MIS)
            "order": jsonable_encoder(status_of(warehouse, store, accession)) if accession else None,
        }
        recorder.record(
            reader,
            action="view",
            channel="study-page",
            study_uid=study,
            patient_id=record["patient_id"],
            query={"patient": patient, "study": study},
            results=1,
        )
        return _study_page(user, data)

    @routes.get(
        "/search", tags=["browser"], summary="a patient's studies across organisations", response_class=HTMLResponse
    )
    def search_page(request: Request, patient: str | None = None, name: str | None = None) -> HTMLResponse:
        user = page_user(request)
        patient = (patient or "").strip() or None
        name = (name or "").strip() or None
        asked = {k: v for k, v in (("patient", patient), ("name", name)) if v is not None}
        reader = reader_of(request, user)
        if not may(user.role, Action.READ_PATIENT_DATA):
            recorder.record(
                reader, action="query", channel="study-page", patient_id=patient, query=asked, outcome="denied"
            )
            return message_page(403, "error.403-search", "Вашей роли поиск пациентов не разрешён.", user)
        data: dict[str, Any] = {"user": {"name": user.name, "role": user.role}, "query": asked, "results": None}
        status = 200
        if patient is not None and not valid_patient_id(patient):
            data["problem"] = "search.bad-patient"
            status = 400
        elif name is not None and (len(name) > MAX_NAME or any(ord(ch) < 0x20 for ch in name)):
            data["problem"] = "search.bad-name"
            status = 400
        elif asked:
            pattern = None
            if name is not None:
                pattern = name.replace(" ", "^")
                pattern = pattern if any(ch in pattern for ch in "*?") else pattern + "*"
            studies = search_studies(store, patient_id=patient, patient_name=pattern, limit=SEARCH_LIMIT)
            data["results"] = [_study_summary(s, directory) for s in studies]
            data["truncated"] = len(studies) >= SEARCH_LIMIT
            recorder.record(
                reader, action="query", channel="study-page", patient_id=patient, query=asked, results=len(studies)
            )
        return _search_page(user, data, patient, name, status)

    return routes
