"""The archive's Prometheus metrics, in a registry each archive owns (not the process-wide
default: tests and several archives in one process keep their figures apart).

The write side reports here (:meth:`ArchiveMetrics.ingested`, :meth:`ArchiveMetrics.appended`),
the HTTP app counts read requests; figures read from the projections (projection lag, agents'
queue depth) are computed at scrape time by the API's collector (``api.http.metrics``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

#: seconds; an object's way through the write path is milliseconds, a large one or a slow
#: broker seconds
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ArchiveMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.ingest_objects = Counter(
            "cami_ingest_objects",
            "Objects received, by channel (dicom, stow-rs, import) and outcome (stored, duplicate, rejected);"
            " reason: why a rejected object was refused (empty otherwise)",
            ["channel", "outcome", "reason"],
            registry=self.registry,
        )
        self.ingest_seconds = Histogram(
            "cami_ingest_seconds",
            "Time from receiving an object's bytes to its answer (checks, blob, event), by channel and outcome",
            ["channel", "outcome"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.event_log_append_seconds = Histogram(
            "cami_event_log_append_seconds",
            "Time until an appended event is durable in the event log, by topic",
            ["topic"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.read_requests = Counter(
            "cami_read_requests",
            "Read requests, by channel (qido-rs, wado-rs, wado-uri, study-page, api, web; c-find, c-move, c-get)"
            " and status (HTTP status; DICOM final status in hex, see api.dicom.qr.counted)",
            ["channel", "status"],
            registry=self.registry,
        )

    def ingested(self, channel: str, outcome: str, reason: str, seconds: float) -> None:
        self.ingest_objects.labels(channel, outcome, reason).inc()
        self.ingest_seconds.labels(channel, outcome).observe(seconds)

    def appended(self, topic: str, seconds: float) -> None:
        self.event_log_append_seconds.labels(topic).observe(seconds)

    def read(self, channel: str, status: int | str) -> None:
        self.read_requests.labels(channel, str(status)).inc()
