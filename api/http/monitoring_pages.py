"""The regional dashboard for regional IT and administrators (``Action.MONITOR``): JSON, a live
stream and two pages, all read from the monitoring projection
(:mod:`projections.monitoring.dashboard`).

``GET /api/monitoring/dashboard``
    The snapshot (:func:`projections.monitoring.dashboard.dashboard_snapshot`; its docstring
    gives the shape, which ``cami monitor`` reads too), each organisation code with its
    ``organisation_name`` and ``organisation_known`` from the regional directory.
``GET /api/monitoring/stream``
    Server-Sent Events (``text/event-stream``): an ``event: snapshot`` whose ``data`` is the same
    JSON, at once and again whenever it changed: checked as soon as the monitoring projection has
    written (the :class:`projections.changes.ChangeNotifier` its sink signals in this process) and
    at least every :data:`REFRESH` seconds (the alarms depend on the clock, and where the workers
    run in another process nothing signals). A comment line every :data:`KEEPALIVE` seconds keeps
    proxies from closing a quiet stream. It ends when the client goes, when the server stops, and
    after :data:`LIFETIME` seconds (the browser reconnects, its credentials checked again).
``GET /monitoring``
    The table (one row per organisation and agent) and the alarms, updated from the stream
    without reloading (``/static/monitoring.js``).
``GET /monitoring/{organisation}``
    Throughput per minute over 24 hours (a uPlot chart when the asset is installed by
    ``infra/web-assets.sh``; a note saying so otherwise), rejections by reason, the last 100
    transfer events.

The figures hold no patient data (codes, counts, study UIDs of transfers). A role that may not
monitor gets 403 (JSON, or the page saying so) and the refusal is recorded (outcome ``denied``);
without credentials: 401 JSON, or the sign-in page for the pages.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from api.access import AccessRecorder, Reader
from api.auth import User
from api.http.assets import STATIC
from api.http.deps import require
from api.http.oversight import named
from api.http.web import html_page, message_page, page_user
from projections.changes import ChangeNotifier
from projections.monitoring.dashboard import dashboard_snapshot, organisation_page
from projections.warehouse.base import Warehouse
from schemas.organisations import OrganisationDirectory
from schemas.policy import Action, may

#: seconds between snapshots when nothing signals a change (the clock moves the alarms)
REFRESH = 1.0
#: seconds between the stream's keep-alive comments when nothing else was sent
KEEPALIVE = 15.0
#: seconds after which the server ends a stream: the browser's EventSource reconnects (``retry``),
#: and the reconnection is authenticated again (an expired session or a revoked user stops there)
LIFETIME = 600.0
#: how often the stream looks at the change notifier
_TICK = 0.05
#: uPlot as ``infra/web-assets.sh`` installs it (not in the repository)
UPLOT = Path("vendor") / "uplot" / "uPlot.iife.min.js"


def reader_of(request: Request, user: User) -> Reader:
    return Reader(user.actor, user.organisation, request.client.host if request.client else None)


def _is_code(organisation: str) -> bool:
    return 0 < len(organisation) <= 64 and organisation.replace(".", "").isdigit() and ".." not in organisation


class DashboardFeed:
    """Snapshots shared by every open page: at most one computed per change of the monitoring
    projection and per :data:`REFRESH` seconds, however many streams are open."""

    def __init__(self, warehouse: Warehouse, changes: ChangeNotifier, directory: OrganisationDirectory) -> None:
        self.warehouse = warehouse
        self.changes = changes
        self.directory = directory
        self._key: tuple[int, int] | None = None
        self._value: dict[str, Any] = {}
        self._lock: asyncio.Lock | None = None

    def compute(self, now: datetime | None = None) -> dict[str, Any]:
        """The snapshot with organisations named (JSON-ready)."""
        snapshot = dashboard_snapshot(self.warehouse, now or datetime.now(UTC))
        snapshot["organisations"] = named(snapshot["organisations"], self.directory)
        for row in snapshot["organisations"]:
            row["alarms"] = named(row["alarms"], self.directory)
        snapshot["alarms"] = named(snapshot["alarms"], self.directory)
        result: dict[str, Any] = jsonable_encoder(snapshot)
        return result

    async def snapshot(self) -> dict[str, Any]:
        key = (self.changes.version, int(time.monotonic() / REFRESH))
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if key != self._key:
                self._value = await run_in_threadpool(self.compute)
                self._key = key
            return self._value


def router(
    warehouse: Warehouse,
    recorder: AccessRecorder,
    changes: ChangeNotifier,
    closing: threading.Event,
    names: OrganisationDirectory | None = None,
) -> APIRouter:
    """The dashboard's routes over ``warehouse``; refusals recorded through ``recorder``; the live
    stream woken by ``changes`` and ended by ``closing`` (set when the server stops)."""
    routes = APIRouter()
    directory = names if names is not None else OrganisationDirectory()
    feed = DashboardFeed(warehouse, changes, directory)
    # a refused role is answered 403 and recorded by require() itself
    monitoring = Depends(require(Action.MONITOR))

    @routes.get(
        "/api/monitoring/dashboard",
        tags=["monitoring"],
        summary="the regional dashboard: per organisation and agent, with the alarms",
    )
    async def dashboard(user: User = monitoring) -> JSONResponse:
        return JSONResponse(await run_in_threadpool(feed.compute))

    @routes.get(
        "/api/monitoring/stream",
        tags=["monitoring"],
        summary="the regional dashboard as Server-Sent Events (a snapshot whenever it changes)",
        response_class=StreamingResponse,
    )
    async def stream(user: User = monitoring) -> StreamingResponse:

        async def events() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            seen, sent_body, due, quiet_since = -1, "", 0.0, time.monotonic()
            ends = quiet_since + LIFETIME
            # ends on server shutdown; a client that goes away cancels this (Starlette listens)
            while not closing.is_set() and time.monotonic() < ends:
                now = time.monotonic()
                if changes.version != seen or now >= due:
                    seen, due = changes.version, now + REFRESH
                    body = json.dumps(await feed.snapshot(), ensure_ascii=False, separators=(",", ":"))
                    if body != sent_body:
                        sent_body, quiet_since = body, now
                        yield f"event: snapshot\ndata: {body}\n\n"
                if now - quiet_since >= KEEPALIVE:
                    quiet_since = now
                    yield ": keep-alive\n\n"
                await asyncio.sleep(_TICK)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def monitoring_user(request: Request, what: str) -> User | HTMLResponse:
        user = page_user(request)
        if may(user.role, Action.MONITOR):
            return user
        recorder.record(
            reader_of(request, user), action="view", channel="web", query={"monitoring": what}, outcome="denied"
        )
        return message_page(403, "error.403-monitoring", "Вашей роли мониторинг региона не разрешён.", user)

    @routes.get("/monitoring", tags=["browser"], summary="the regional dashboard page", response_class=HTMLResponse)
    async def dashboard_page(request: Request) -> HTMLResponse:
        user = monitoring_user(request, "page")
        if isinstance(user, HTMLResponse):
            return user
        data = {"user": {"name": user.name, "role": user.role}, "snapshot": await feed.snapshot()}
        return html_page("monitoring", "Мониторинг региона", data, user=user)

    @routes.get(
        "/monitoring/{organisation}",
        tags=["browser"],
        summary="one organisation: throughput, rejections, transfer events",
        response_class=HTMLResponse,
    )
    async def organisation_view(request: Request, organisation: str) -> HTMLResponse:
        user = monitoring_user(request, organisation)
        if isinstance(user, HTMLResponse):
            return user
        if not _is_code(organisation):
            return message_page(400, "error.400-organisation", "Код организации — OID из цифр и точек.", user)
        figures = jsonable_encoder(await run_in_threadpool(organisation_page, warehouse, organisation))
        this = named([{"organisation": organisation}], directory)[0]
        chart = (STATIC / UPLOT).is_file()
        data = {"user": {"name": user.name, "role": user.role}, **figures, **this, "chart": chart}
        return html_page(
            "organisation",
            str(this["organisation_name"]),
            data,
            user=user,
            organisation=this,
            chart=chart,
            figures=figures,
        )

    return routes
