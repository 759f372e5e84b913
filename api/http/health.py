"""``GET /healthz`` and ``GET /readyz``: what load balancers, systemd and monitoring probes ask.

``/healthz`` says the process is alive and its HTTP server answers: ``200 {"status": "alive"}``,
touching no backend, so a busy or cut-off backend never gets a healthy process restarted.

``/readyz`` says whether this node should take traffic. Four checks run at once, each in a thread
of its own:

* ``event_log``: an append would be durable now (:meth:`streams.log.EventLog.health`: on Kafka one
  metadata request, the brokers up and every partition of CAMI's topics with a leader and enough
  replicas in sync; on SQLite the write lock taken and released);
* ``blobs``: a blob could be stored now (:meth:`streams.blobs.BlobStore.health`: a HEAD on the
  bucket and, on MinIO, its cluster probe; or a file made in the blob directory);
* ``warehouse``: ClickHouse answers ``SELECT 1``;
* ``projections``: how many events each projection is behind the log; more than
  ``CAMI_READY_MAX_LAG`` (10000; ``off``: lag is shown, never decisive) is ``down``: the node
  answers searches from read models that far behind.

Each check is ``ok``, ``degraded`` (it works with less redundancy than configured: a Kafka replica
out of sync or a broker gone, MinIO healing a drive) or ``down``. The answer is ``503 unready``
when any check is down, else ``200 degraded`` when any is degraded, else ``200 ready``. A check
that has not answered within :data:`WAIT_SECONDS` is down ("no answer"); it keeps running and is
not started again while it does, so a hung backend costs one thread, never one per probe. The
answer is kept :data:`CACHE_SECONDS`, so a load balancer polling often costs nothing.

Neither asks for credentials (load balancers have none), neither is a read of the archive's
records (no RecordAccessed event, not counted as a read by :mod:`api.http.metrics`), and neither
says anything a stranger should not hear: no patient data, no credential (a ``user:password@`` in
a message is masked as :meth:`api.config.Settings.describe` does). Both answer
``Cache-Control: no-store``.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.bootstrap import Archive
from projections.warehouse import Warehouse
from streams.blobs import BlobStore
from streams.health import DEGRADED, DOWN, OK, Health
from streams.log import EventLog
from streams.topics import SOURCE_OF_TRUTH

#: how long ``/readyz`` waits for its checks (they run at once)
WAIT_SECONDS = 2.0
#: what each backend is given to answer, so it can say why before the wait ends
BACKEND_TIMEOUT = 1.5
#: how long an answer of ``/readyz`` is reused
CACHE_SECONDS = 1.0
NO_STORE = {"Cache-Control": "no-store"}

Check = Callable[[], dict[str, Any]]
_CREDENTIALS = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^/@\s:]*):[^/@\s]*@", re.IGNORECASE)


# -- the document's shapes -----------------------------------------------------------------------
class Liveness(BaseModel):
    status: Literal["alive"]


class CheckResult(BaseModel):
    status: Literal["ok", "degraded", "down"]
    detail: str = Field(description="what was seen, for the operator (where the backend is, why it is not ok)")


class ProjectionsResult(CheckResult):
    lag: dict[str, int] = Field(default_factory=dict, description="per projection, events not yet applied")
    max_lag: int | None = Field(default=None, description="CAMI_READY_MAX_LAG; null: lag is never decisive")


class Checks(BaseModel):
    event_log: CheckResult
    blobs: CheckResult
    warehouse: CheckResult
    projections: ProjectionsResult


class ReadinessReport(BaseModel):
    status: Literal["ready", "degraded", "unready"]
    checks: Checks


# -- the checks ----------------------------------------------------------------------------------
def _entry(health: Health) -> dict[str, Any]:
    return {"status": health.status, "detail": health.detail}


def check_event_log(log: EventLog) -> dict[str, Any]:
    return _entry(log.health(SOURCE_OF_TRUTH, BACKEND_TIMEOUT))


def check_blobs(blobs: BlobStore) -> dict[str, Any]:
    return _entry(blobs.health(BACKEND_TIMEOUT))


def check_warehouse(warehouse: Callable[[], Warehouse]) -> dict[str, Any]:
    opened = warehouse()  # the embedded one is opened on first use: that may fail too
    opened.ping()
    return {"status": OK, "detail": f"{opened.backend} answers"}


def check_projections(lag: Callable[[], Mapping[str, Mapping[str, int]]], max_lag: int | None) -> dict[str, Any]:
    try:
        behind = {name: sum(per_topic.values()) for name, per_topic in lag().items()}
    except Exception as exc:  # the log's offsets unreadable (the event log check says why)
        return {"status": DOWN, "detail": f"lag unknown ({exc})", "lag": {}, "max_lag": max_lag}
    worst = max(behind.values(), default=0)
    laggard = max(behind, key=lambda name: behind[name]) if worst else ""
    if max_lag is None:
        status, detail = OK, f"at most {worst} events behind (CAMI_READY_MAX_LAG=off)"
    elif worst > max_lag:
        status, detail = DOWN, f"{laggard} is {worst} events behind, more than CAMI_READY_MAX_LAG={max_lag}"
    else:
        status, detail = OK, f"at most {worst} events behind (CAMI_READY_MAX_LAG={max_lag})"
    return {"status": status, "detail": detail if worst else "up to date", "lag": behind, "max_lag": max_lag}


def checks_of(archive: Archive) -> dict[str, Check]:
    """The four checks over the archive's backends, each with only what it needs."""
    return {
        "event_log": lambda: check_event_log(archive.event_log),
        "blobs": lambda: check_blobs(archive.blobs),
        "warehouse": lambda: check_warehouse(lambda: archive.warehouse),
        "projections": lambda: check_projections(archive.projection_lag, archive.settings.ready_max_lag),
    }


# -- running them --------------------------------------------------------------------------------
class Readiness:
    """Runs ``checks`` at once and answers within ``wait`` seconds; reuses an answer for
    ``cache_seconds``; never starts a check again while an earlier run of it is still going."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        wait: float = WAIT_SECONDS,
        cache_seconds: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._checks = dict(checks)
        self._wait = wait
        self._cache_seconds = cache_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, Future[dict[str, Any]]] = {}
        self._cached: tuple[float, dict[str, Any]] | None = None

    def report(self) -> dict[str, Any]:
        with self._lock:  # probes arriving meanwhile wait for this answer and share it
            if self._cached is not None and self._clock() - self._cached[0] < self._cache_seconds:
                return self._cached[1]
            started = {name: self._start(name) for name in self._checks}
            deadline = time.monotonic() + self._wait
            results = {name: self._result(future, deadline) for name, future in started.items()}
            report = {"status": overall(results), "checks": results}
            self._cached = (self._clock(), report)
            return report

    def _start(self, name: str) -> Future[dict[str, Any]]:
        running = self._running.get(name)
        if running is not None and not running.done():
            return running
        future: Future[dict[str, Any]] = Future()
        check = self._checks[name]

        def run() -> None:
            try:
                future.set_result(check())
            except BaseException as exc:  # a probe must answer whatever a backend raises
                future.set_exception(exc)

        # a daemon thread, not a pool: one hung in a backend must not hold the process at exit
        threading.Thread(target=run, name=f"cami-ready-{name}", daemon=True).start()
        self._running[name] = future
        return future

    def _result(self, future: Future[dict[str, Any]], deadline: float) -> dict[str, Any]:
        try:
            result = future.result(timeout=max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            return {"status": DOWN, "detail": f"no answer within {self._wait:g} s"}
        except Exception as exc:
            return {"status": DOWN, "detail": mask(f"{type(exc).__name__}: {exc}")}
        return {**result, "detail": mask(str(result.get("detail", "")))}


def overall(results: Mapping[str, Mapping[str, Any]]) -> str:
    states = {result["status"] for result in results.values()}
    if DOWN in states:
        return "unready"
    return "degraded" if DEGRADED in states else "ready"


def mask(text: str) -> str:
    """``scheme://user:password@`` -> ``scheme://user:***@``, wherever a message carries a URL."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


# -- the routes ----------------------------------------------------------------------------------
def router(archive: Archive) -> APIRouter:
    readiness = Readiness(checks_of(archive))
    routes = APIRouter(tags=["health"])

    @routes.get(
        "/healthz",
        response_model=Liveness,
        summary="The process is alive and serving (no backend is asked)",
    )
    async def healthz() -> JSONResponse:  # on the event loop: answers while every worker thread is busy
        return JSONResponse({"status": "alive"}, headers=NO_STORE)

    @routes.get(
        "/readyz",
        response_model=ReadinessReport,
        summary="Whether this node should take traffic: event log, blob store, warehouse, projection lag",
        responses={
            200: {"description": "ready, or degraded (working with less redundancy than configured)"},
            503: {"model": ReadinessReport, "description": "unready: a check is down (the body says which)"},
        },
    )
    def readyz() -> JSONResponse:
        report = readiness.report()
        return JSONResponse(report, status_code=503 if report["status"] == "unready" else 200, headers=NO_STORE)

    return routes
