"""The archive's HTTP surface (FastAPI): DICOMweb STOW-RS and the reports API.

Routes are thin: they authenticate, parse, call the ingest pipeline or the report service, and
map domain errors to HTTP statuses. Every error is JSON ``{"error": code, "detail": text}`` with
a 4xx/5xx status; no stack trace and no patient data ever reaches a response.

STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` with ``multipart/related;
type="application/dicom"``. Each part goes through the same pipeline as C-STORE. The answer is
``application/dicom+json``: ReferencedSOPSequence (0008,1199) with RetrieveURL (0008,1190) for
stored instances, FailedSOPSequence (0008,1198) with FailureReason (0008,1197) for the others.
Failed items also carry ErrorComment (0000,0902), a sentence saying which rule failed, and
FailureAttributes (0074,1048), the offending tags. Status: 200 all stored, 202 some failed (or
stored with warnings), 409 all failed, 503 nothing stored because storage was unavailable, 400
malformed multipart body, 415 a media type other than multipart/related with application/dicom
parts, 413 a body over ``CAMI_HTTP_MAX_BODY`` bytes (default 1 GiB), counted as it arrives. The
body is spooled to a temporary file under ``$CAMI_HOME/spool`` and each part is read from it only
when the pipeline takes it.

Every response but the static assets carries ``Cache-Control: no-store`` (patient data must not
stay in browser or proxy caches); there are no ``/docs`` or ``/redoc`` pages (they load scripts
from a CDN), only ``/openapi.json``.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Any

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from api.access import AccessRecorder, Reader, may_read_draft_text
from api.auth import ROLES, SESSION_COOKIE, User, UserDirectory, UsersFileError, session_user, users_path
from api.base_url import base_url
from api.bootstrap import Archive
from ingest.dicom import MalformedObject, read_header, split_part10, text
from ingest.pipeline import Arrival, Ingestor, Outcome
from ingest.reports import (
    AMENDING_ROLES,
    AUTHOR_ROLES,
    READER_ROLES,
    Author,
    ReportError,
    ReportNotFound,
    ReportService,
    ReportState,
    ReportStore,
)
from ingest.statuses import Status
from ingest.tls import server_context
from ingest.validation import Refusal, inspect
from streams import EventLogError

log = logging.getLogger("cami.http")

DEFAULT_MAX_BODY = 1 << 30
STOW_ROLES = frozenset({"modality", "radiologist", "administrator"})
DICOM_JSON = "application/dicom+json"

# DICOM JSON attribute tags of the STOW-RS response (PS3.18 10.5.3)
RETRIEVE_URL = "00081190"
REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"
REFERENCED_SOP_CLASS_UID = "00081150"
REFERENCED_SOP_INSTANCE_UID = "00081155"
ERROR_COMMENT = "00000902"
FAILURE_ATTRIBUTES = "00741048"


def max_body_bytes() -> int:
    return int(os.environ.get("CAMI_HTTP_MAX_BODY", str(DEFAULT_MAX_BODY)))


# -- errors ------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


def _error(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


_HTTP_ERRORS = {
    400: "bad-request",
    401: "unauthorised",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    406: "not-acceptable",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(ReportError)
    async def report_error(request: Request, exc: ReportError) -> JSONResponse:
        return _error(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # only where and what: pydantic's "input" would echo what the client sent
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return _error(400, "invalid-request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, _HTTP_ERRORS.get(exc.status_code, "http-error"), str(exc.detail))

    @app.exception_handler(EventLogError)
    async def log_down(request: Request, exc: EventLogError) -> JSONResponse:
        log.error("event log unavailable: %s", exc)
        return _error(503, "log-unavailable", "the archive's event log is unavailable; nothing was recorded")

    @app.exception_handler(TimeoutError)
    async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        log.error("timed out: %s", exc)
        return _error(503, "timeout", "the archive did not complete the request in time; nothing was recorded")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return _error(500, "internal-error", "the archive could not complete the request; see its log")


# -- caching -----------------------------------------------------------------------------------
class NoStoreMiddleware:
    """``Cache-Control: no-store`` on every response that does not set its own, except the static
    assets: JSON, DICOM, rendered images and pages carry patient data, which no browser or proxy
    cache may keep."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith("/static/"):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: AsgiMessage) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "cache-control" not in headers:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_no_store)


# -- authentication ----------------------------------------------------------------------------
def _authenticate(request: Request) -> User:
    directory: UserDirectory = request.app.state.users
    header = request.headers.get("authorization", "")
    key: bytes | None = getattr(request.app.state, "session_key", None)
    if not header and key is not None and request.method in ("GET", "HEAD"):
        # the browser's session cookie (api.web sign-in) stands in for the bearer token, on reads
        # only: a state-changing request needs the bearer header, so a forged form cannot make one
        try:
            cookie = request.cookies.get(SESSION_COOKIE)
            revoked = getattr(request.app.state, "revoked_sessions", None)
            session = session_user(directory, key, cookie, time.time(), revoked)
        except UsersFileError as exc:
            log.error("users file unusable: %s", exc)
            raise ApiError(503, "authentication-unavailable", "the users file cannot be read") from None
        if session is not None:
            return session
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorised", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    try:
        user = directory.authenticate(token.strip())
    except UsersFileError as exc:
        log.error("users file unusable: %s", exc)
        raise ApiError(503, "authentication-unavailable", "the users file cannot be read") from None
    if user is None:
        raise ApiError(
            401, "unauthorised", "the bearer token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return user


def require(roles: frozenset[str]) -> Callable[[Request], User]:
    """Dependency: the signed-in user, who must hold one of ``roles`` (401 / 403 otherwise)."""

    def dependency(request: Request) -> User:
        user = _authenticate(request)
        if user.role not in roles:
            raise ApiError(403, "forbidden", f"role {user.role} may not do this (allowed: {', '.join(sorted(roles))})")
        return user

    return dependency


# -- STOW-RS -----------------------------------------------------------------------------------
# The request body is spooled to a temporary file as it arrives (small bodies stay in memory), then
# the parts are located in it by offset and each is read only when the pipeline takes it: the
# memory a STOW needs beyond the spool is about one part, whatever the number of parts.

#: bodies up to this size are spooled in memory, larger ones in a file under $CAMI_HOME/spool
SPOOL_IN_MEMORY = 8 << 20
#: how much of the body is searched for delimiters at a time
SCAN_CHUNK = 1 << 20
#: a part's header block longer than this is refused (the headers of a DICOM part are a line or two)
MAX_PART_HEADERS = 16 << 10
#: parts in one request (a whole large study fits; a body of empty parts cannot fill the memory)
MAX_PARTS = 100_000


@dataclass(frozen=True)
class Part:
    """One part of the spooled body: its Content-Type and where its content lies."""

    content_type: str | None
    offset: int
    length: int


def _media(content_type: str) -> Message:
    message = Message()
    message["content-type"] = content_type
    return message


def _read_at(body: IO[bytes], offset: int, length: int) -> bytes:
    body.seek(offset)
    return body.read(length)


def _occurrences(body: IO[bytes], needle: bytes, start: int, size: int) -> Iterator[int]:
    """Offsets of ``needle`` in ``body`` from ``start``, read ``SCAN_CHUNK`` bytes at a time."""
    keep = len(needle) - 1  # a match across two chunks: the tail of the last one is searched again
    carry = b""
    pos = start
    while pos < size:
        chunk = _read_at(body, pos, SCAN_CHUNK)
        if not chunk:
            return
        window = carry + chunk
        base = pos - len(carry)
        found = window.find(needle)
        while found >= 0:
            yield base + found
            found = window.find(needle, found + len(needle))
        carry = window[-keep:] if keep else b""
        pos += len(chunk)


def parse_multipart_related(content_type: str, body: IO[bytes], size: int) -> list[Part]:
    """The parts of a spooled ``multipart/related; type="application/dicom"`` body (RFC 2046 /
    2387) of ``size`` bytes, as offsets into it; nothing but the part headers is read.

    415 when the media type is not that; 400 when the body does not follow its own boundary."""
    media = _media(content_type)
    if media.get_content_type() != "multipart/related":
        raise ApiError(415, "unsupported-media-type", 'STOW-RS takes multipart/related; type="application/dicom"')
    kind = media.get_param("type")
    if isinstance(kind, str) and kind.strip().lower() != "application/dicom":
        raise ApiError(415, "unsupported-media-type", "only application/dicom parts are supported (no metadata+bulk)")
    boundary = media.get_param("boundary")
    if not isinstance(boundary, str) or not boundary or len(boundary) > 70:
        raise ApiError(400, "malformed-multipart", "multipart/related needs a boundary parameter (1-70 characters)")
    delimiter = b"--" + boundary.encode("latin-1")
    # every delimiter after the first starts a line: CRLF + "--" + boundary
    ends = _occurrences(body, b"\r\n" + delimiter, 0, size)
    if _read_at(body, 0, len(delimiter)) == delimiter:
        pos = len(delimiter)
    else:
        found = next(ends, None)
        if found is None:
            raise ApiError(400, "malformed-multipart", "the body does not contain the boundary")
        pos = found + 2 + len(delimiter)
    parts: list[Part] = []
    while True:
        line = _read_at(body, pos, 1024)
        if line[:2] == b"--":
            break  # close delimiter
        eol = line.find(b"\r\n")
        if eol < 0 or line[:eol].strip(b" \t"):
            raise ApiError(400, "malformed-multipart", f"part {len(parts) + 1}: bad delimiter line")
        start = pos + eol + 2
        end = next((e for e in ends if e >= start), None)
        if end is None:
            raise ApiError(400, "malformed-multipart", f"part {len(parts) + 1} is not terminated by the boundary")
        if len(parts) >= MAX_PARTS:
            raise ApiError(413, "too-many-parts", f"a STOW-RS request holds at most {MAX_PARTS} parts")
        parts.append(_part(body, start, end, len(parts) + 1))
        pos = end + 2 + len(delimiter)
    if not parts:
        raise ApiError(400, "malformed-multipart", "the body has no parts")
    return parts


def _part(body: IO[bytes], start: int, end: int, number: int) -> Part:
    head = _read_at(body, start, min(end - start, MAX_PART_HEADERS + 4))
    if head.startswith(b"\r\n"):
        return Part(None, start + 2, end - start - 2)
    split = head.find(b"\r\n\r\n")
    if split < 0:
        raise ApiError(400, "malformed-multipart", f"part {number} has no blank line after its headers")
    content_type = None
    for line in head[:split].split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if not colon:
            raise ApiError(400, "malformed-multipart", f"part {number} has a malformed header line")
        if name.strip().lower() == b"content-type":
            content_type = value.strip().decode("latin-1")
    return Part(content_type, start + split + 4, end - start - split - 4)


@dataclass(frozen=True)
class Identifiers:
    """The part's UIDs as far as they parse and are well-formed (the pipeline judges the rest)."""

    study: str | None = None
    series: str | None = None
    sop_class: str | None = None
    sop_instance: str | None = None


@dataclass(frozen=True)
class PartResult:
    outcome: Outcome
    ids: Identifiers = Identifiers()


def _identifiers(data: bytes) -> Identifiers:
    try:
        received = split_part10(data)
        header = read_header(data[received.dataset_offset :], received.transfer_syntax)
    except MalformedObject:
        return Identifiers()

    def uid(keyword: str) -> str | None:
        value = text(header, keyword)
        return value if value and _is_uid(value) else None

    return Identifiers(uid("StudyInstanceUID"), uid("SeriesInstanceUID"), uid("SOPClassUID"), uid("SOPInstanceUID"))


def store_parts(
    ingestor: Ingestor, body: IO[bytes], parts: Sequence[Part], arrival: Arrival, study: str | None
) -> list[PartResult]:
    """Run every part through the ingest pipeline, reading each from the spooled body only when
    its turn comes (blocking; called from a worker thread)."""
    results: list[PartResult] = []
    for number, part in enumerate(parts, 1):
        media = _media(part.content_type).get_content_type() if part.content_type else "application/dicom"
        if media != "application/dicom":
            outcome = Outcome(
                Status.CANNOT_UNDERSTAND,
                f"part {number}: media type {media} is not application/dicom",
                reason="unsupported-part-type",
            )
            results.append(PartResult(outcome))
            continue
        data = _read_at(body, part.offset, part.length)
        ids = _identifiers(data)
        if study is not None and ids.study is not None and ids.study != study:
            results.append(PartResult(_refuse_study_mismatch(ingestor, data, arrival), ids))
            continue
        results.append(PartResult(ingestor.store_file(data, arrival), ids))
        del data  # the next part is read only after this one is released
    return results


def _refuse_study_mismatch(ingestor: Ingestor, data: bytes, arrival: Arrival) -> Outcome:
    received = split_part10(data)
    inspection = inspect(read_header(data[received.dataset_offset :], received.transfer_syntax))
    refusal = inspection.refusal or Refusal(
        "study-mismatch",
        Status.DATASET_DOES_NOT_MATCH_SOP_CLASS,
        "StudyInstanceUID (0020,000D) of the instance differs from the study in the request URL",
        (0x0020000D,),
    )
    # the pipeline's own refusal: same status, same InstanceRejected event as any other refusal
    return ingestor._refuse(refusal, arrival, data, None, None, inspection)


def _uid_attr(value: str | None) -> dict[str, Any]:
    return {"vr": "UI", "Value": [value]} if value else {"vr": "UI"}


def stow_response(results: Sequence[PartResult], base_url: str, study: str | None) -> tuple[int, dict[str, Any]]:
    """(HTTP status, DICOM JSON body) for the stored and failed instances."""
    referenced: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    warnings = False
    out_of_resources = False
    studies: set[str] = set()
    for result in results:
        o = result.outcome
        if o.stored:
            item: dict[str, Any] = {
                REFERENCED_SOP_CLASS_UID: _uid_attr(o.sop_class_uid),
                REFERENCED_SOP_INSTANCE_UID: _uid_attr(o.sop_instance_uid),
            }
            if o.study_instance_uid and result.ids.series:
                studies.add(o.study_instance_uid)
                url = (
                    f"{base_url}/dicomweb/studies/{o.study_instance_uid}/series/{result.ids.series}"
                    f"/instances/{o.sop_instance_uid}"
                )
                item[RETRIEVE_URL] = {"vr": "UR", "Value": [url]}
            if o.status == Status.WARNING_COERCED:
                warnings = True
                item[WARNING_REASON] = {"vr": "US", "Value": [int(o.status)]}
            referenced.append(item)
        else:
            out_of_resources = out_of_resources or o.status == Status.OUT_OF_RESOURCES
            item = {
                REFERENCED_SOP_CLASS_UID: _uid_attr(o.sop_class_uid or result.ids.sop_class),
                REFERENCED_SOP_INSTANCE_UID: _uid_attr(o.sop_instance_uid or result.ids.sop_instance),
                FAILURE_REASON: {"vr": "US", "Value": [int(o.status)]},
            }
            if o.comment:
                item[ERROR_COMMENT] = {"vr": "LO", "Value": [f"{o.reason}: {o.comment}" if o.reason else o.comment]}
            if o.offending:
                item[FAILURE_ATTRIBUTES] = {"vr": "AT", "Value": [f"{tag:08X}" for tag in o.offending]}
            failed.append(item)
    body: dict[str, Any] = {}
    target = study or (next(iter(studies)) if len(studies) == 1 else None)
    if target and referenced:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [f"{base_url}/dicomweb/studies/{target}"]}
    if referenced:
        body[REFERENCED_SOP_SEQUENCE] = {"vr": "SQ", "Value": referenced}
    if failed:
        body[FAILED_SOP_SEQUENCE] = {"vr": "SQ", "Value": failed}
    if not failed:
        status = 202 if warnings else 200
    elif referenced:
        status = 202
    else:
        status = 503 if out_of_resources else 409
    return status, body


async def _spool_body(request: Request, limit: int, spool: Path) -> tuple[IO[bytes], int]:
    """The request body in a temporary file (memory up to ``SPOOL_IN_MEMORY``) and its size; 413
    as soon as it passes ``limit``. The caller closes the file, which deletes it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "payload-too-large", f"the body exceeds the archive's limit of {limit} bytes")
        except ValueError:
            raise ApiError(400, "bad-request", "Content-Length is not a number") from None
    spool.mkdir(parents=True, exist_ok=True)
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b", dir=str(spool))  # noqa: SIM115
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload-too-large", f"the body exceeds the archive's limit of {limit} bytes")
            body.write(chunk)
    except BaseException:
        body.close()
        raise
    return body, size


# -- reports -----------------------------------------------------------------------------------
class CreateReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    study_instance_uid: str = Field(min_length=1, max_length=64)
    protocol_text: str = ""
    conclusion_text: str = ""
    accession_number: str | None = Field(default=None, max_length=16)


class EditReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    protocol_text: str
    conclusion_text: str
    #: optimistic concurrency: refuse (409) unless the report is still at this revision
    revision: int | None = None


class AmendReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str = Field(min_length=1, max_length=4000)
    protocol_text: str | None = None
    conclusion_text: str | None = None


def _author(user: User) -> Author:
    return Author(user.actor, user.clinician(), user.organisation)


def _report(state: ReportState, status: int = 200, location: str | None = None) -> JSONResponse:
    headers = {"Location": location} if location else None
    return JSONResponse(state.view(), status_code=status, headers=headers)


# -- the app -----------------------------------------------------------------------------------
def create_app(
    archive: Archive,
    *,
    users: UserDirectory | None = None,
    reports: ReportService | None = None,
    max_body: int | None = None,
) -> FastAPI:
    users = users or UserDirectory(users_path(home=archive.settings.home))
    if reports is None:
        reports = ReportService(
            ReportStore(archive.settings.home / "reports.db"), archive.event_log, node=_node(), source_node="http"
        )
    service = reports
    limit = max_body if max_body is not None else max_body_bytes()
    spool = archive.settings.home / "spool"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        revoked = getattr(app.state, "revoked_sessions", None)
        if revoked is not None:
            revoked.close()

    app = FastAPI(
        title="CAMI",
        summary="Regional Central Archive of Medical Images: DICOMweb STOW-RS and reports",
        version="0.1.0",
        lifespan=lifespan,
        # no Swagger UI / ReDoc pages: they load scripts from a third-party CDN; /openapi.json stays
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(NoStoreMiddleware)
    app.state.archive = archive
    app.state.users = users
    app.state.reports = service
    _install_error_handlers(app)

    recorder = AccessRecorder(archive.event_log, source_node=f"http:{_node()}")
    app.state.access = recorder
    stow_user = Depends(require(STOW_ROLES))
    signed_in = Depends(require(frozenset(ROLES)))
    author = Depends(require(AUTHOR_ROLES))
    amender = Depends(require(AMENDING_ROLES))

    async def stow(request: Request, user: User, study: str | None) -> JSONResponse:
        if study is not None and not _is_uid(study):
            raise ApiError(400, "invalid-study-uid", "the study in the URL is not a valid DICOM UID")
        content_type = request.headers.get("content-type")
        if not content_type:
            raise ApiError(415, "unsupported-media-type", 'STOW-RS takes multipart/related; type="application/dicom"')
        if _media(content_type).get_content_type() != "multipart/related":
            raise ApiError(415, "unsupported-media-type", 'STOW-RS takes multipart/related; type="application/dicom"')
        body, size = await _spool_body(request, limit, spool)
        try:
            return await _stow_spooled(request, user, study, content_type, body, size)
        finally:
            body.close()

    async def _stow_spooled(
        request: Request, user: User, study: str | None, content_type: str, body: IO[bytes], size: int
    ) -> JSONResponse:
        parts = await run_in_threadpool(parse_multipart_related, content_type, body, size)
        peer = request.client.host if request.client else None
        arrival = Arrival(
            channel="stow-rs",
            source_node=f"stow-rs:{peer or 'unknown'}",
            organisation=user.organisation,
            peer_address=peer,
            actor=user.actor,
            correlation_id=str(uuid.uuid4()),
        )
        results = await run_in_threadpool(store_parts, archive.ingestor, body, parts, arrival, study)
        status, payload = stow_response(results, base_url(request), study)
        headers = {"Retry-After": "30"} if status == 503 else None
        return JSONResponse(payload, status_code=status, media_type=DICOM_JSON, headers=headers)

    @app.post("/dicomweb/studies", tags=["DICOMweb"], summary="STOW-RS: store instances")
    async def stow_any(request: Request, user: User = stow_user) -> JSONResponse:
        return await stow(request, user, None)

    @app.post("/dicomweb/studies/{study}", tags=["DICOMweb"], summary="STOW-RS: store instances of one study")
    async def stow_study(request: Request, study: str, user: User = stow_user) -> JSONResponse:
        return await stow(request, user, study)

    @app.post("/api/reports", tags=["reports"], status_code=201, summary="create a draft report")
    def create_report(body: CreateReport, user: User = author) -> JSONResponse:
        state = service.create(
            body.study_instance_uid,
            body.protocol_text,
            body.conclusion_text,
            _author(user),
            accession_number=body.accession_number,
        )
        return _report(state, 201, f"/api/reports/{state.report_id}")

    @app.put("/api/reports/{report_id}", tags=["reports"], summary="edit a draft (409 once signed)")
    def edit_report(report_id: str, body: EditReport, user: User = author) -> JSONResponse:
        state = service.edit(
            report_id, body.protocol_text, body.conclusion_text, _author(user), expected_revision=body.revision
        )
        return _report(state)

    @app.post(
        "/api/reports/{report_id}/sign",
        tags=["reports"],
        summary="sign a draft; the signing time is the archive's clock (anything in the body is ignored)",
    )
    def sign_report(report_id: str, user: User = author) -> JSONResponse:
        return _report(service.sign(report_id, _author(user)))

    @app.post(
        "/api/reports/{report_id}/amendments",
        tags=["reports"],
        status_code=201,
        summary="amend a signed report (radiologist or administrator; keeps before and after)",
    )
    def amend_report(report_id: str, body: AmendReport, user: User = amender) -> JSONResponse:
        state = service.amend(report_id, body.protocol_text, body.conclusion_text, body.reason, _author(user))
        return _report(state, 201)

    # report reads are reads of patient data: one RecordAccessed each, durable before the answer
    # (a refused one as denied); a draft's texts only for those api.access lets read them
    def report_reader(request: Request, user: User) -> Reader:
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        if user.role not in READER_ROLES:
            recorder.record(reader, action="view", channel="api", query=dict(request.path_params), outcome="denied")
            raise ApiError(403, "forbidden", f"role {user.role} may not read reports")
        return reader

    def shown(state: ReportState, user: User) -> dict[str, Any]:
        return state.view(draft_text=may_read_draft_text(user.role, state.drafted_by(user.name)))

    @app.get("/api/reports/{report_id}", tags=["reports"], summary="a report with its amendments")
    def get_report(request: Request, report_id: str, user: User = signed_in) -> JSONResponse:
        reader = report_reader(request, user)
        try:
            state = service.get(report_id)
        except ReportNotFound:
            recorder.record(reader, action="view", channel="api", query={"report_id": report_id}, results=0)
            raise
        recorder.record(
            reader,
            action="view",
            channel="api",
            study_uid=state.study_instance_uid,
            patient_id=state.patient_id,
            query={"report_id": report_id},
            results=1,
        )
        return JSONResponse(shown(state, user))

    @app.get("/api/studies/{study_uid}/reports", tags=["reports"], summary="the reports of a study")
    def study_reports(request: Request, study_uid: str, user: User = signed_in) -> JSONResponse:
        reader = report_reader(request, user)
        if not _is_uid(study_uid):
            raise ApiError(400, "invalid-study-uid", "the study in the URL is not a valid DICOM UID")
        states = service.for_study(study_uid)
        patients = {s.patient_id for s in states if s.patient_id}
        recorder.record(
            reader,
            action="view",
            channel="api",
            study_uid=study_uid,
            patient_id=patients.pop() if len(patients) == 1 else None,
            query={"StudyInstanceUID": study_uid, "reports": True},
            results=len(states),
        )
        return JSONResponse({"study_instance_uid": study_uid, "reports": [shown(s, user) for s in states]})

    # the read side: each module adds its routes; every read is recorded through one recorder
    from api import dicomweb, oversight, web

    dicomweb.install(app, archive, recorder)
    web.install(app, archive, recorder)
    oversight.install(app, archive, recorder)
    return app


def _is_uid(value: str) -> bool:
    from ingest.dicom import is_uid

    return is_uid(value)


def _node() -> str:
    return socket.gethostname() or "local"


# -- running it --------------------------------------------------------------------------------
class HttpServer:
    """uvicorn in a thread of this process: ``start()`` returns once it listens, ``stop()`` ends it."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 8042, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        tls: dict[str, Any] = {}
        if ssl_context is not None:  # HTTPS only on this port; the context comes from ingest.tls
            tls["ssl_context_factory"] = lambda _config, _default: ssl_context
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False, **tls)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="cami-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the HTTP server did not start within {timeout} s")
            time.sleep(0.02)
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
                break

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


def serve_http(archive: Archive, host: str | None = None, port: int | None = None) -> HttpServer:
    """Start the HTTP app for ``archive`` (``port`` 0 picks a free one); call ``stop()`` to end it."""
    settings = archive.settings
    server = HttpServer(
        create_app(archive),
        settings.http_host if host is None else host,
        settings.http_port if port is None else port,
        # people sign in with tokens here: no client certificates asked for
        server_context(settings.tls, client_certificates=False) if settings.http_tls else None,
    )
    server.start()
    return server
