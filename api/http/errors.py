"""The one JSON error body of the HTTP API and the handlers that produce it.

Every error is ``{"error": code, "detail": ...}`` with a 4xx/5xx status (``detail`` a sentence, or
an object naming the parameter at fault); no stack trace and no patient data ever reaches a
response. :func:`responses` describes the statuses an operation answers for the OpenAPI document,
all with the one :class:`ErrorBody` schema.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ingest.reports import ReportError
from streams import EventLogError

log = logging.getLogger("cami.http")


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {error}")
        self.status = status
        self.error = error
        self.detail = detail
        self.headers = headers


class ErrorBody(BaseModel):
    """The body of every error answer."""

    error: str = Field(description="a code for machines, e.g. forbidden, invalid-parameter, not-found")
    detail: Any = Field(
        default=None, description="a sentence for people, or an object naming the parameter at fault and the problem"
    )


def error_response(status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
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

_MEANINGS = {
    400: "a parameter, path or body the archive refuses (the detail names it)",
    401: "no valid credentials (a bearer token, or the browser's session cookie on reads)",
    403: "the caller's role may not do this (a refused read is recorded)",
    404: "the archive holds no such resource",
    405: "the method is not allowed on this path (Allow lists those that are)",
    406: "the archive cannot answer in a media type the Accept header allows",
    409: "the request conflicts with the resource's state",
    413: "the body exceeds the archive's limit",
    415: "the body's media type is not one this operation takes",
    422: "the report service refuses the content (too long, NUL characters, not a UID)",
    429: "too many attempts; try again after Retry-After seconds",
    500: "the archive could not complete the request",
    503: "a part of the archive (event log, blob store, users file) is unavailable; nothing was recorded",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses, each with :class:`ErrorBody`."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _MEANINGS[status]}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}
        if status == 405:
            entry["headers"] = {"Allow": {"schema": {"type": "string"}, "description": "the methods allowed"}}
        if status in (429, 503):
            entry["headers"] = {"Retry-After": {"schema": {"type": "string"}, "description": "seconds"}}
        out[status] = entry
    return out


_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")


def allowed_methods(request: Request) -> str:
    """Every method some route takes on the request's path (Starlette's own 405 names those of
    the first route that matched the path only, e.g. GET alone where POST is taken too)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.error, exc.detail, exc.headers)

    @app.exception_handler(ReportError)
    async def report_error(request: Request, exc: ReportError) -> JSONResponse:
        return error_response(exc.status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # only where and what: pydantic's "input" would echo what the client sent
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return error_response(400, "invalid-request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {}) or None
        if exc.status_code == 405:
            allowed = allowed_methods(request)
            headers = {"Allow": allowed} if allowed else headers  # a mount (static files) says its own
        code = _HTTP_ERRORS.get(exc.status_code, "http-error")
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(EventLogError)
    async def log_down(request: Request, exc: EventLogError) -> JSONResponse:
        log.error("event log unavailable: %s", exc)
        return error_response(503, "log-unavailable", "the archive's event log is unavailable; nothing was recorded")

    @app.exception_handler(TimeoutError)
    async def timed_out(request: Request, exc: TimeoutError) -> JSONResponse:
        log.error("timed out: %s", exc)
        return error_response(503, "timeout", "the archive did not complete the request in time; nothing was recorded")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("internal error on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return error_response(500, "internal-error", "the archive could not complete the request; see its log")
