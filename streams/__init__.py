"""Kafka plumbing: the event log interface, its two backends, topics and processors."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from streams.log import Consumer, EventLog, EventLogError, EventLogUnavailable, Position, Record, TopicSpec

__all__ = [
    "Consumer",
    "EventLog",
    "EventLogError",
    "EventLogUnavailable",
    "Position",
    "Record",
    "TopicSpec",
    "open_event_log",
    "parse_wait",
]


def open_event_log(url: str) -> EventLog:
    """``sqlite:///abs/path/events.db`` (embedded) or ``kafka://host:port[,host:port]?options``.

    Kafka options: ``replication`` (topic replication factor, default 1), ``min_insync``
    (min.insync.replicas for new topics), ``delivery_timeout_ms`` (how long an append may wait),
    ``wait`` (seconds the first request waits for a broker that is not up yet, default 120),
    ``topic_prefix`` (what the archive's topic and group names start with on the brokers, default
    ``cami``: ``cami.dicom``; see :class:`streams.topics.TopicNames`).
    """
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        if not parts.path or parts.netloc:
            raise ValueError(f"embedded log URL must be sqlite:///absolute/path, got {url!r}")
        from streams.embedded import EmbeddedEventLog

        return EmbeddedEventLog(Path(parts.path))
    if parts.scheme == "kafka":
        if not parts.netloc:
            raise ValueError(f"Kafka URL must name the bootstrap servers: kafka://host:port, got {url!r}")
        options = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        known = {"replication", "min_insync", "delivery_timeout_ms", "client_id", "wait", "topic_prefix"}
        unknown = set(options) - known
        if unknown:
            raise ValueError(f"unknown Kafka URL option(s) {sorted(unknown)}; known: {sorted(known)}")
        from streams.kafka import DEFAULT_START_WAIT, KafkaEventLog
        from streams.topics import ARCHIVE_PREFIX, check_topic_prefix

        return KafkaEventLog(
            parts.netloc,
            replication_factor=int(options.get("replication", 1)),
            min_insync_replicas=int(options["min_insync"]) if "min_insync" in options else None,
            delivery_timeout_ms=int(options.get("delivery_timeout_ms", 15_000)),
            client_id=options.get("client_id", "cami"),
            topic_prefix=check_topic_prefix(options.get("topic_prefix", ARCHIVE_PREFIX)),
            start_wait=parse_wait(options.get("wait", str(DEFAULT_START_WAIT))),
        )
    raise ValueError(f"unsupported event log URL scheme {parts.scheme!r} (use sqlite:/// or kafka://)")


def parse_wait(value: str) -> float:
    """Seconds to wait for a broker at start (``CAMI_KAFKA_WAIT``, the ``wait`` option): a number,
    0 or more (0: one try). ValueError otherwise."""
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds < 86_400:
        raise ValueError(f"{value!r} is not a number of seconds to wait for Kafka (0 or more, e.g. 120)")
    return seconds
