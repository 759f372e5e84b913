"""The auditor's pages and their JSON (``Action.AUDIT``: auditors and administrators).

Pages (server-rendered from ``templates/audit*.html``, Russian by default like the others):

``GET /audit?q=...``
    The search box: a study UID, a patient ID, a report ID or an organisation (code or name).
    One match goes straight to its timeline; several are listed.
``GET /audit/record/{record}[?patient=1]``
    The record's timeline (:mod:`projections.audit.timeline`): every entry in order, who, what,
    when, from where, each with its chain check; the first broken entry highlighted.
``GET /audit/record/{record}/at?time=T``
    The study as the archive knew it at T, folded from the log, and what changed since
    (:mod:`projections.audit.at`).
``GET /audit/access?patient=...[&since&until&user&organisation]``
    Who saw this patient (:mod:`projections.audit.access`), with the CSV and signed-bundle exports.

JSON: ``/api/audit/search``, ``/api/audit/records/{record}/timeline``,
``/api/audit/records/{record}/at``, ``/api/audit/access`` (``.csv``, ``/bundle``) and
``/api/audit/public-key`` (the key that signs bundles, for auditors to pin).

Refusals: a page asked for without a session goes to the sign-in page; a signed-in user whose
role may not audit gets the 403 page, an API caller the 403 error body; each refusal is recorded
as a RecordAccessed with ``outcome = "denied"``. Every answer names patients and studies, so
each read is recorded too (``view``, ``query`` or ``download``; channel ``audit-page`` or ``api``).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from api.access import AccessRecorder
from api.auth import User
from api.http.deps import require
from api.http.errors import ApiError
from api.http.oversight import named
from api.http.web import html_page, message_page, page_user, reader_of, valid_patient_id
from projections.audit.access import CSV_COLUMNS, AccessFilter, TooManyAccesses, accesses
from projections.audit.at import UnknownRecord, parse_moment, state_at
from projections.audit.bundle import build, public_key_text, signing_key
from projections.audit.timeline import resolve, timeline
from projections.warehouse.base import Warehouse
from schemas.organisations import OrganisationDirectory
from schemas.policy import Action, may
from streams.log import EventLog

MAX_RECORD = 128
MAX_FILTER = 128


def _valid_record(value: str) -> bool:
    return 0 < len(value) <= MAX_RECORD and "/" not in value and not any(ord(ch) < 0x20 for ch in value)


def _bad(parameter: str, problem: str) -> ApiError:
    return ApiError(400, "invalid-parameter", {"parameter": parameter, "problem": problem})


def _filter(since: str | None, until: str | None, user: str | None, organisation: str | None) -> AccessFilter:
    """The access filters from the query, or a 400 naming the one at fault."""
    moments: dict[str, datetime | None] = {}
    for name, value, end in (("since", since, False), ("until", until, True)):
        try:
            moments[name] = parse_moment(value, end_of_day=end) if value else None
        except ValueError as exc:
            raise _bad(name, str(exc)) from None
    for name, text in (("user", user), ("organisation", organisation)):
        if text is not None and (len(text) > MAX_FILTER or any(ord(ch) < 0x20 for ch in text)):
            raise _bad(name, f"at most {MAX_FILTER} characters, no control characters")
    return AccessFilter(moments["since"], moments["until"], user or None, organisation or None)


def _csv(entries: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for entry in entries:
        writer.writerow(["" if entry.get(c) is None else entry.get(c) for c in CSV_COLUMNS])
    return buffer.getvalue()


#: the "who saw this patient" question's query parameters (module level: FastAPI reads the defaults)
_PATIENT = Query(description="the patient ID")
_SINCE = Query(None, description="from this moment or date (ISO 8601)")
_UNTIL = Query(None, description="up to this moment or date (a date: its end)")
_USER = Query(None, alias="user", description="only this user's accesses")
_ORGANISATION = Query(None, description="only accesses by this organisation's staff (its code)")


class AccessAsked:
    """Who saw this patient, as asked: the query parameters the list, its CSV and its signed bundle share."""

    def __init__(
        self,
        patient: str = _PATIENT,
        since: str | None = _SINCE,
        until: str | None = _UNTIL,
        user_name: str | None = _USER,
        organisation: str | None = _ORGANISATION,
    ) -> None:
        self.patient = patient
        self.since = since
        self.until = until
        self.user_name = user_name
        self.organisation = organisation


def router(
    warehouse: Warehouse,
    event_log: EventLog,
    recorder: AccessRecorder,
    home: Path,
    organisations: OrganisationDirectory | None = None,
) -> APIRouter:
    """The auditor's pages and JSON over ``warehouse`` and ``event_log``; reads and refusals
    recorded through ``recorder``; bundles signed with the key in ``home``."""
    routes = APIRouter()
    directory = organisations if organisations is not None else OrganisationDirectory()
    signed_in = Depends(require())

    # -- who may ----------------------------------------------------------------------------------
    def page_auditor(request: Request) -> tuple[User, Response | None]:
        """The signed-in auditor of a page; else (user, the 403 page), the refusal recorded."""
        user = page_user(request)  # no session: the redirect to the sign-in page
        if may(user.role, Action.AUDIT):
            return user, None
        recorder.record(
            reader_of(request, user), action="view", channel="audit-page", query=_asked(request), outcome="denied"
        )
        return user, message_page(403, "error.403-audit", "Вашей роли журнал аудита не доступен.", user)

    def api_auditor(request: Request, user: User) -> None:
        if not may(user.role, Action.AUDIT):
            recorder.record(
                reader_of(request, user), action="view", channel="api", query=_asked(request), outcome="denied"
            )
            raise ApiError(403, "forbidden", f"role {user.role} may not read the audit trail")

    def _asked(request: Request) -> dict[str, Any]:
        return {"path": request.url.path, **dict(request.query_params)}

    def record_read(
        request: Request,
        user: User,
        *,
        action: str,
        channel: str,
        query: Mapping[str, Any],
        results: int,
        study: str | None = None,
        patient: str | None = None,
    ) -> None:
        recorder.record(
            reader_of(request, user),
            action=action,
            channel=channel,
            study_uid=study,
            patient_id=patient,
            query=query,
            results=results,
        )

    # -- the work -------------------------------------------------------------------------------
    def find(query: str) -> list[dict[str, str]]:
        return resolve(warehouse, query, directory)

    def record_timeline(record: str, patient: bool) -> dict[str, Any]:
        found = timeline(warehouse, event_log, record, patient=patient)
        found["entries"] = named(found["entries"], directory)
        return found

    def study_of(entries: list[dict[str, Any]], record: str) -> str | None:
        return record if any(e.get("study_instance_uid") == record for e in entries) else None

    def patient_of(entries: list[dict[str, Any]]) -> str | None:
        patients = {e["patient_id"] for e in entries if e.get("patient_id")}
        return next(iter(patients)) if len(patients) == 1 else None

    def read_timeline(request: Request, user: User, record: str, as_patient: bool, channel: str) -> dict[str, Any]:
        """The record's timeline; a read of it (entries found) is recorded on ``channel``."""
        found = record_timeline(record, as_patient)
        if found["entries"]:
            record_read(
                request,
                user,
                action="view",
                channel=channel,
                query={"audit_record": record, "patient": as_patient},
                results=len(found["entries"]),
                study=study_of(found["entries"], record),
                patient=record if as_patient else patient_of(found["entries"]),
            )
        return found

    def record_at_read(
        request: Request, user: User, record: str, time: str | None, state: dict[str, Any], channel: str
    ) -> None:
        """Records the read of the study as it was at ``time`` on ``channel``."""
        record_read(
            request,
            user,
            action="view",
            channel=channel,
            query={"audit_record": record, "at": time},
            results=len(state["then"]["instances"]),
            study=record,
            patient=state["now"]["patient"]["patient_id"],
        )

    def at_state(record: str, time: str | None) -> dict[str, Any]:
        if time is None or not time.strip():
            raise _bad("time", "required: an ISO 8601 moment")
        try:
            moment = parse_moment(time)
        except ValueError as exc:
            raise _bad("time", str(exc)) from None
        try:
            state = state_at(event_log, record, moment)
        except UnknownRecord as exc:
            raise ApiError(404, "not-found", str(exc)) from None
        for side in ("then", "now"):
            for instance in state[side]["instances"]:
                instance["organisation_name"] = directory.display(instance["organisation"])
        return state

    def access_list(patient: str | None, only: AccessFilter) -> dict[str, Any]:
        if patient is None or not valid_patient_id(patient):
            raise _bad("patient", "a patient ID: 1 to 64 characters, no control characters")
        try:
            found = accesses(warehouse, patient, only)
        except TooManyAccesses as exc:
            raise ApiError(400, "too-many-results", str(exc)) from None
        found["entries"] = named(found["entries"], directory)
        return found

    # -- pages ----------------------------------------------------------------------------------
    @routes.get("/audit", tags=["audit"], summary="the auditor's search page", response_class=HTMLResponse)
    def search_page(request: Request, q: str | None = None) -> Response:
        user, refused = page_auditor(request)
        if refused is not None:
            return refused
        query = (q or "").strip()
        if len(query) > MAX_RECORD or any(ord(ch) < 0x20 for ch in query):
            return html_page("audit", "Аудит", {}, 400, user=user, q=query, matches=None, problem=True)
        matches = find(query) if query else None
        if query:
            record_read(
                request, user, action="query", channel="audit-page", query={"q": query}, results=len(matches or [])
            )
        if matches and len(matches) == 1:
            match = matches[0]
            target = "/audit/record/" + quote(match["record"], safe="")
            if match["kind"] == "patient":
                target += "?patient=1"
            return RedirectResponse(target, status_code=303)
        return html_page("audit", "Аудит", {}, user=user, q=query, matches=matches, problem=False)

    @routes.get(
        "/audit/record/{record}", tags=["audit"], summary="a record's timeline page", response_class=HTMLResponse
    )
    def record_page(request: Request, record: str, patient: str | None = None) -> Response:
        user, refused = page_auditor(request)
        if refused is not None:
            return refused
        if not _valid_record(record):
            return message_page(400, "error.400-record", "Неверный идентификатор записи.", user)
        as_patient = (patient or "").lower() in ("1", "true", "yes")
        found = read_timeline(request, user, record, as_patient, "audit-page")
        if not found["entries"]:
            return message_page(404, "error.404-record", "В журнале аудита нет такой записи.", user)
        return html_page("audit_record", "Аудит записи", {}, user=user, found=found, patient=as_patient)

    @routes.get(
        "/audit/record/{record}/at",
        tags=["audit"],
        summary="the study as it was at a moment (page)",
        response_class=HTMLResponse,
    )
    def at_page(request: Request, record: str, time: str | None = None) -> Response:
        user, refused = page_auditor(request)
        if refused is not None:
            return refused
        if not _valid_record(record):
            return message_page(400, "error.400-record", "Неверный идентификатор записи.", user)
        state: dict[str, Any] | None = None
        problem: str | None = None
        status = 200
        if time:
            try:
                state = at_state(record, time)
            except ApiError as exc:
                status, problem = exc.status, exc.error
        if state is not None:
            record_at_read(request, user, record, time, state, "audit-page")
        return html_page(
            "audit_at",
            "Запись на момент",
            {},
            status,
            user=user,
            record=record,
            time=time or "",
            state=state,
            problem=problem,
        )

    @routes.get("/audit/access", tags=["audit"], summary="who saw this patient (page)", response_class=HTMLResponse)
    def access_page(
        request: Request,
        patient: str | None = None,
        since: str | None = None,
        until: str | None = None,
        user_name: str | None = Query(None, alias="user"),
        organisation: str | None = None,
    ) -> Response:
        user, refused = page_auditor(request)
        if refused is not None:
            return refused
        asked = {
            k: v
            for k, v in (
                ("patient", patient),
                ("since", since),
                ("until", until),
                ("user", user_name),
                ("organisation", organisation),
            )
            if v
        }
        found: dict[str, Any] | None = None
        problem: str | None = None
        status = 200
        if patient:
            try:
                found = access_list(patient, _filter(since, until, user_name, organisation))
            except ApiError as exc:
                status, problem = exc.status, json.dumps(exc.detail, ensure_ascii=False, default=str)
        if found is not None:
            record_read(
                request,
                user,
                action="query",
                channel="audit-page",
                query=asked,
                results=len(found["entries"]),
                patient=patient,
            )
        exports = urlencode(asked)
        return html_page(
            "audit_access",
            "Кто видел пациента",
            {},
            status,
            user=user,
            asked=asked,
            found=found,
            problem=problem,
            exports=exports,
        )

    # -- JSON -----------------------------------------------------------------------------------
    @routes.get("/api/audit/search", tags=["audit"], summary="what a search text may mean: records to open")
    def search_api(
        request: Request, q: str = Query(min_length=1, max_length=MAX_RECORD), user: User = signed_in
    ) -> JSONResponse:
        api_auditor(request, user)
        if any(ord(ch) < 0x20 for ch in q):
            raise _bad("q", "no control characters")
        matches = find(q)
        record_read(request, user, action="query", channel="api", query={"q": q}, results=len(matches))
        return JSONResponse(jsonable_encoder({"query": q, "matches": matches}))

    @routes.get(
        "/api/audit/records/{record}/timeline",
        tags=["audit"],
        summary="a record's entries in order, each with its chain check, the first broken one marked",
    )
    def timeline_api(request: Request, record: str, patient: bool = False, user: User = signed_in) -> JSONResponse:
        api_auditor(request, user)
        if not _valid_record(record):
            raise _bad("record", "not a record id")
        found = read_timeline(request, user, record, patient, "api")
        if not found["entries"]:
            raise ApiError(404, "not-found", "no audit entries for this record")
        return JSONResponse(jsonable_encoder(found))

    @routes.get(
        "/api/audit/records/{record}/at",
        tags=["audit"],
        summary="the study as the archive knew it at a moment (folded from the log), and the change since",
    )
    def at_api(
        request: Request,
        record: str,
        time: str = Query(description="ISO 8601 moment; without a zone: UTC"),
        user: User = signed_in,
    ) -> JSONResponse:
        api_auditor(request, user)
        if not _valid_record(record):
            raise _bad("record", "not a record id")
        state = at_state(record, time)
        record_at_read(request, user, record, time, state, "api")
        return JSONResponse(jsonable_encoder(state))

    def access_query(
        request: Request, question: AccessAsked, user: User, action: str
    ) -> tuple[dict[str, Any], AccessFilter]:
        api_auditor(request, user)
        patient = question.patient
        only = _filter(question.since, question.until, question.user_name, question.organisation)
        found = access_list(patient, only)
        asked = {"patient": patient, **{k: v for k, v in only.to_dict().items() if v is not None}}
        record_read(
            request, user, action=action, channel="api", query=asked, results=len(found["entries"]), patient=patient
        )
        return found, only

    asked_access = Depends(AccessAsked)

    @routes.get("/api/audit/access", tags=["audit"], summary="who saw this patient: every access to their records")
    def access_api(
        request: Request,
        question: AccessAsked = asked_access,
        user: User = signed_in,
    ) -> JSONResponse:
        found, _ = access_query(request, question, user, "query")
        return JSONResponse(jsonable_encoder(found))

    @routes.get(
        "/api/audit/access.csv",
        tags=["audit"],
        summary="who saw this patient, as CSV",
        response_class=Response,
        responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "the entries"}},
    )
    def access_csv(
        request: Request,
        question: AccessAsked = asked_access,
        user: User = signed_in,
    ) -> Response:
        found, _ = access_query(request, question, user, "download")
        headers = {"Content-Disposition": 'attachment; filename="cami-access.csv"'}
        return Response(_csv(found["entries"]), media_type="text/csv; charset=utf-8", headers=headers)

    @routes.get(
        "/api/audit/access/bundle",
        tags=["audit"],
        summary="who saw this patient, as a signed JSON bundle with chain proofs (cami audit verify-bundle)",
    )
    def access_bundle(
        request: Request,
        question: AccessAsked = asked_access,
        user: User = signed_in,
    ) -> JSONResponse:
        found, only = access_query(request, question, user, "download")
        asked = {"patient_id": question.patient, **only.to_dict()}
        document = build(warehouse, event_log, found["entries"], asked, signing_key(home))
        headers = {"Content-Disposition": 'attachment; filename="cami-access-bundle.json"'}
        return JSONResponse(document, headers=headers)

    @routes.get("/api/audit/public-key", tags=["audit"], summary="the Ed25519 public key that signs audit bundles")
    def public_key(request: Request, user: User = signed_in) -> JSONResponse:
        api_auditor(request, user)
        return JSONResponse({"public_key": public_key_text(signing_key(home)), "algorithm": "Ed25519"})

    return routes
