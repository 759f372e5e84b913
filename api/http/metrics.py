"""``GET /metrics``: the archive's figures in the Prometheus text format, and the middleware
that counts read requests.

Counters and histograms of the write side live in the archive's own registry
(:class:`streams.metrics.ArchiveMetrics`); what the projections know (each projection's lag
behind the log, each agent's queue from its latest heartbeat) is read at scrape time by
:class:`ProjectionCollector` and kept a few seconds, so frequent scrapes do not load the warehouse.

Who may read it: the figures hold no patient data but describe the region's traffic. When
``$CAMI_HOME/metrics.token`` exists, every scraper must send ``Authorization: Bearer <its
content>`` (Prometheus: ``authorization: {credentials_file: ...}``); without that file only
loopback clients are answered (a Prometheus on the archive's host). Others get a 403 JSON body.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.access import access_channel
from api.bootstrap import Archive
from api.http.errors import ApiError
from projections.monitoring.queries import transfer_states
from streams.metrics import ArchiveMetrics

log = logging.getLogger("cami.http.metrics")

#: how long figures read from the projections are reused between scrapes (seconds)
CACHE_SECONDS = 5.0
TOKEN_FILE = "metrics.token"


class ProjectionCollector(Collector):
    """Projection lag per projection and topic, and each agent's queue, read when scraped."""

    def __init__(self, archive: Archive, cache_seconds: float = CACHE_SECONDS) -> None:
        self._archive = archive
        self._cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._cached: tuple[float, list[Metric]] | None = None

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self._cache_seconds:
                self._cached = (now, self._read())
            return list(self._cached[1])

    def _read(self) -> list[Metric]:
        up = GaugeMetricFamily(
            "cami_metrics_source_up", "1 when the figures of this source could be read", labels=["source"]
        )
        families: list[Metric] = [up]
        for source, read in (("event-log", self._lag), ("warehouse", self._agents)):
            try:
                families.extend(read())
                up.add_metric([source], 1)
            except Exception as exc:  # a scrape must still answer: the failure shows as source_up 0
                log.warning("metrics: cannot read %s: %s", source, exc)
                up.add_metric([source], 0)
        return families

    def _lag(self) -> list[Metric]:
        lag = GaugeMetricFamily(
            "cami_projection_lag_events",
            "Events appended to a topic but not yet folded by the projection",
            labels=["projection", "topic"],
        )
        for projection, topics in self._archive.projection_lag().items():
            for topic, behind in topics.items():
                lag.add_metric([projection, topic], behind)
        return [lag]

    def _agents(self) -> list[Metric]:
        labels = ["organisation", "agent"]
        depth = GaugeMetricFamily(
            "cami_agent_queue_depth", "Studies waiting in the agent's queue (latest heartbeat)", labels=labels
        )
        queued = GaugeMetricFamily(
            "cami_agent_queue_bytes", "Bytes waiting in the agent's queue (latest heartbeat)", labels=labels
        )
        in_flight = GaugeMetricFamily("cami_agent_in_flight", "Transfers the agent is sending now", labels=labels)
        seen = GaugeMetricFamily(
            "cami_agent_last_heartbeat_timestamp_seconds", "When the agent's latest heartbeat was sent", labels=labels
        )
        for organisation in transfer_states(self._archive.warehouse):
            for agent in organisation["agents"]:
                key = [organisation["organisation"], agent["agent_id"]]
                depth.add_metric(key, agent["queue_depth"])
                queued.add_metric(key, agent["queue_bytes"])
                in_flight.add_metric(key, agent["in_flight"])
                last = agent["last_heartbeat"]
                if isinstance(last, datetime):
                    seen.add_metric(key, last.timestamp())
        return [depth, queued, in_flight, seen]


def _loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _scraper_allowed(request: Request, token_file: Path) -> bool:
    try:
        expected = token_file.read_text().strip()
    except FileNotFoundError:
        return _loopback(request.client.host if request.client else None)
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return bool(expected) and scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), expected)


def router(archive: Archive) -> APIRouter:
    metrics = archive.metrics
    metrics.registry.register(ProjectionCollector(archive))
    token_file = archive.settings.home / TOKEN_FILE
    routes = APIRouter()

    @routes.get("/metrics", include_in_schema=False)
    def scrape(request: Request) -> Response:
        if not _scraper_allowed(request, token_file):
            client = request.client.host if request.client else "?"
            log.warning("metrics: scrape refused for %s", client)
            raise ApiError(403, "forbidden", f"metrics are served to loopback or to the bearer of {TOKEN_FILE}")
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return routes


def read_channel(path: str) -> str | None:
    """The read channel a request path belongs to (None: not a read of the archive's records)."""
    if path in ("/metrics", "/openapi.json", "/healthz", "/readyz") or path.startswith("/static/"):
        return None
    return access_channel("GET", path)


class ReadRequestsMiddleware:
    """Counts every GET/HEAD by read channel and the status it was answered with."""

    def __init__(self, app: ASGIApp, metrics: ArchiveMetrics, channel_of: Callable[[str], str | None] = read_channel):
        self.app = app
        self.metrics = metrics
        self.channel_of = channel_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        channel = self.channel_of(str(scope.get("path", ""))) if scope["type"] == "http" else None
        if channel is None or scope.get("method") not in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        status = [500]  # an exception before the response started is answered 500 by Starlette

        async def counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            self.metrics.read(channel, status[0])
