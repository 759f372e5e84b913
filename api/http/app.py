"""The archive's HTTP app: :func:`create_app` builds it from an :class:`~api.bootstrap.Archive`,
handing each router only what it needs (the ingestor, the report service, the warehouse, the
blob store, the access recorder).

Routers, one module each: :mod:`api.http.stow` (STOW-RS), :mod:`api.http.reports`,
:mod:`api.http.qido` (QIDO-RS), :mod:`api.http.wado` (WADO-RS and WADO-URI),
:mod:`api.http.oversight` (monitoring and audit),
:mod:`api.http.monitoring_pages` (the live regional dashboard), :mod:`api.http.audit_pages` (the
auditor's pages), :mod:`api.http.agents` (the hospitals'
transfer agents and full-import requests), :mod:`api.http.web` (the browser pages). They
share :mod:`api.http.errors` (the one JSON error body) and :mod:`api.http.deps` (who is asking).

Every response but the static assets and rendered frames carries ``Cache-Control: no-store``
(patient data must not stay in browser or proxy caches); the static assets are fingerprinted and
cached (:mod:`api.http.assets`), rendered frames are ``private`` with a strong ETag
(:mod:`api.http.wado`). Text answers (pages, script, style sheet, JSON) are gzip-compressed when
the client accepts it: a study page and its script are a sixth of their size on a 256 kbit/s
link; pictures, DICOM objects and event streams are left as they are. There are no ``/docs`` or
``/redoc`` pages (they load scripts from a CDN), only ``/openapi.json``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.gzip import DEFAULT_EXCLUDED_CONTENT_TYPES, GZipMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as AsgiMessage

from api.access import AccessRecorder
from api.auth import User, UserDirectory, write_local_token
from api.bootstrap import Archive
from api.http.agents import AgentEventIds
from api.http.agents import router as agents_router
from api.http.audit_pages import router as audit_router
from api.http.errors import install_error_handlers
from api.http.health import router as health_router
from api.http.metrics import ReadRequestsMiddleware
from api.http.metrics import router as metrics_router
from api.http.monitoring_pages import router as monitoring_router
from api.http.openapi import document as openapi_document
from api.http.orders import router as orders_router
from api.http.oversight import router as oversight_router
from api.http.qido import router as qido_router
from api.http.rebuilds import router as rebuilds_router
from api.http.reports import router as reports_router
from api.http.status import router as status_router
from api.http.stow import router as stow_router
from api.http.wado import router as wado_router
from api.http.web import install_sessions
from api.http.web import router as web_router
from ingest.reports import ReportService, ReportStore


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


#: already compressed, or streamed and large (a WADO-RS retrieve): never gzipped
UNCOMPRESSED = (*DEFAULT_EXCLUDED_CONTENT_TYPES, "multipart/related", "application/dicom", "application/octet-stream")


# -- the app -----------------------------------------------------------------------------------
def create_app(
    archive: Archive,
    *,
    users: UserDirectory | None = None,
    reports: ReportService | None = None,
    max_body: int | None = None,
) -> FastAPI:
    users = users or UserDirectory(archive.settings.users_file)
    # read once, before anything is opened: a wrong entry stops the start with a line naming it
    organisations = archive.organisations()
    if reports is None:
        reports = ReportService(
            ReportStore(archive.settings.home / "reports.db"),
            archive.event_log,
            node=_node(),
            source_node="http",
            double_read=archive.double_read,
        )
    service = reports
    limit = max_body if max_body is not None else archive.settings.http_max_body
    event_ids = AgentEventIds(archive.settings.home / "agent-events.db")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()
        event_ids.close()
        revoked = getattr(app.state, "revoked_sessions", None)
        if revoked is not None:
            revoked.close()

    app = FastAPI(
        title="CAMI",
        summary="Regional Central Archive of Medical Images: DICOMweb, reports, oversight and the browser pages",
        version="0.1.0",
        lifespan=lifespan,
        # no Swagger UI / ReDoc pages: they load scripts from a third-party CDN; /openapi.json stays
        docs_url=None,
        redoc_url=None,
    )
    app.add_middleware(NoStoreMiddleware)
    app.add_middleware(ReadRequestsMiddleware, metrics=archive.metrics)
    app.add_middleware(GZipMiddleware, minimum_size=1024, compresslevel=6, exclude_content_types=UNCOMPRESSED)
    app.state.archive = archive
    app.state.users = users
    app.state.reports = service
    #: set when the server stops: the long-lived responses (the dashboard's stream) end with it
    app.state.closing = threading.Event()
    install_error_handlers(app)

    # the command line on this machine asks this server while it holds the embedded warehouse
    app.state.local_token_hash = write_local_token(archive.settings.home)
    # every read is recorded through one recorder
    recorder = AccessRecorder(archive.event_log, source_node=f"http:{_node()}")
    app.state.access = recorder
    install_sessions(app, archive.settings.home, archive.settings.session_key)
    app.include_router(metrics_router(archive))
    app.include_router(health_router(archive))
    app.include_router(stow_router(archive.ingestor, archive.settings.home / "spool", limit))
    app.include_router(reports_router(service, recorder))
    app.include_router(qido_router(archive.query_store, recorder))
    app.include_router(wado_router(archive, recorder))

    def readings(study_uid: str, user: User) -> dict[str, dict[str, Any]]:
        states = service.for_study(study_uid)
        hidden = service.hidden(states, user.name, user.role)
        return {
            s.report_id: {"reading": s.reading, "assessment": s.assessment, "hidden": s.report_id in hidden}
            for s in states
        }

    app.include_router(web_router(archive.warehouse, archive.query_store, recorder, organisations, readings))
    app.include_router(oversight_router(archive.warehouse, recorder, organisations, archive.verify_audit))
    app.include_router(
        monitoring_router(archive.warehouse, recorder, archive.monitoring_changes, app.state.closing, organisations)
    )
    app.include_router(
        audit_router(archive.warehouse, archive.event_log, recorder, archive.settings.home, organisations)
    )
    app.include_router(
        agents_router(
            archive.event_log,
            lambda: archive.sop_index,
            lambda: archive.warehouse,
            recorder,
            event_ids,
            source_node=f"http:{_node()}",
        )
    )
    app.include_router(rebuilds_router(archive.rebuilds))
    app.include_router(status_router(archive))
    app.include_router(orders_router(archive.warehouse, archive.query_store, recorder))
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    return app


def _node() -> str:
    return socket.gethostname() or "local"
