"""Monitoring: what regional IT watches per organisation and per minute.

Arrivals (instances, bytes, studies, rejections by reason, incomplete packages, last contact per AE
title), report turnaround (first instance received -> report signed), transfer states (queued, in
flight, done, failed), the forwarding agents' heartbeats (queue depth, last success) and the
full-import requests made of each organisation's agent (which the agent reads back over HTTP).

**Why raw rows and not running totals.** Delivery is at-least-once: after a crash between the sink's
write and the offset commit a batch is applied again. A SummingMergeTree (or any counter that adds
on insert) would count such a batch twice, and nothing could tell the duplicate apart later. So
every table here holds *one row per event*, keyed by the event's log position
``(topic, partition, offset)`` in a ReplacingMergeTree: a redelivered event produces the identical
row under the identical key and collapses into it. Every figure is aggregated at query time over
``FINAL`` (deduplicated) rows, so it is exact whether or not the background merge has happened yet.
A row carries only values derived from the event and its position, so a rebuild from offset 0 writes
byte-identical rows. The ORDER BY starts with what the dashboards filter on (organisation, minute);
the log position closes the key, which is what makes it unique. Monthly partitions keep the minute
range scans of a dashboard cheap; an event always falls into the same partition, so deduplication
(which works within a partition) is never defeated.

The figures the API's dashboards show are read by :mod:`projections.monitoring.queries`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM, REPORTS, TRANSFERS

ARRIVALS = "monitoring_arrivals"
REPORTS_SIGNED = "monitoring_reports"
TRANSFER_EVENTS = "monitoring_transfers"
HEARTBEATS = "monitoring_heartbeats"
TRANSFER_REQUESTS = "monitoring_transfer_requests"

#: one row per InstanceReceived / InstanceRejected / AssociationRejected.
#: kind: stored | rejected | association-rejected. ``missing``: regional attributes the object
#: lacked (non-empty = the study's package is incomplete as of this object).
ARRIVALS_DDL = f"""
CREATE TABLE IF NOT EXISTS {ARRIVALS} (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    organisation String,
    minute DateTime('UTC'),
    at DateTime64(6, 'UTC'),
    kind LowCardinality(String),
    ae_title String,
    study_uid String,
    sop_uid String,
    bytes UInt64,
    reason LowCardinality(String),
    missing Array(String),
    pathology UInt8,
    emergency UInt8
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (organisation, minute, topic, partition, offset)
"""

#: one row per ReportSigned; turnaround is computed at query time against the study's first arrival.
REPORTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {REPORTS_SIGNED} (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    organisation String,
    minute DateTime('UTC'),
    signed_at DateTime64(6, 'UTC'),
    study_uid String,
    report_id String,
    revision UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (study_uid, topic, partition, offset)
"""

#: one row per Transfer* event. state is the transfer's state *after* the event: queued, in-flight,
#: done, failed (a failed attempt that will be retried puts the transfer back to queued).
#: A transfer's events share the organisation as log key, so they sit in one partition in log
#: order: its current state is the state of its row with the highest offset.
TRANSFERS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRANSFER_EVENTS} (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    organisation String,
    minute DateTime('UTC'),
    at DateTime64(6, 'UTC'),
    transfer_id String,
    study_uid String,
    event_type LowCardinality(String),
    state LowCardinality(String),
    attempt UInt32,
    instances UInt32,
    bytes UInt64,
    priority LowCardinality(String),
    error String,
    duration_ms UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (organisation, transfer_id, topic, partition, offset)
"""

#: one row per AgentHeartbeat; the latest (by time, then log position) describes the agent now.
HEARTBEATS_DDL = f"""
CREATE TABLE IF NOT EXISTS {HEARTBEATS} (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    organisation String,
    minute DateTime('UTC'),
    at DateTime64(6, 'UTC'),
    agent_id String,
    host String,
    queue_depth UInt32,
    queue_bytes UInt64,
    in_flight UInt32,
    link_kbps Nullable(Float64),
    last_success_at Nullable(DateTime64(6, 'UTC')),
    oldest_waiting_at Nullable(DateTime64(6, 'UTC')),
    link_state LowCardinality(String),
    held UInt32,
    emergency_waiting UInt32
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (organisation, agent_id, topic, partition, offset)
"""

#: AgentHeartbeat v2's fields, for a warehouse whose heartbeat table was created before them (a new
#: or rebuilt one has them from the CREATE above; the statements are no-ops there). A v1 heartbeat
#: folds to their defaults: nothing known to wait, link state unknown ('').
HEARTBEATS_V2_DDL = tuple(
    f"ALTER TABLE {HEARTBEATS} ADD COLUMN IF NOT EXISTS {column}"
    for column in (
        "oldest_waiting_at Nullable(DateTime64(6, 'UTC')) AFTER last_success_at",
        "link_state LowCardinality(String) AFTER oldest_waiting_at",
        "held UInt32 AFTER link_state",
        "emergency_waiting UInt32 AFTER held",
    )
)

#: one row per TransferRequested: what an organisation's agent is asked to send in full. The
#: requests of one organisation share its code as log key, so they sit in one partition in log
#: order: the offset is the agent's cursor (``projections.monitoring.queries.transfer_requests``).
#: The PatientID is kept because the agent needs it; the API shows it only to patient-data roles.
REQUESTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRANSFER_REQUESTS} (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    organisation String,
    minute DateTime('UTC'),
    at DateTime64(6, 'UTC'),
    request_id String,
    study_uid String,
    patient_id String,
    urgent UInt8,
    reason String,
    requested_by String,
    requested_by_role LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (organisation, topic, partition, offset)
"""

TRANSFER_STATES = ("queued", "in-flight", "done", "failed")


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def _clock(event: Event) -> dict[str, Any]:
    at = event.envelope.occurred_at
    return {"minute": _minute(at), "at": at}


class Monitoring:
    name = "monitoring"
    topics: Sequence[str] = (DICOM, REPORTS, TRANSFERS)
    ddl = (ARRIVALS_DDL, REPORTS_DDL, TRANSFERS_DDL, HEARTBEATS_DDL, *HEARTBEATS_V2_DDL, REQUESTS_DDL)
    tables = (ARRIVALS, REPORTS_SIGNED, TRANSFER_EVENTS, HEARTBEATS, TRANSFER_REQUESTS)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        handler = _HANDLERS.get(event.type)
        return [handler(event, source)] if handler is not None else []


def _arrival(event: Event, source: Source) -> Row:
    p, env = event.payload, event.envelope
    base: dict[str, Any] = {
        **source.columns(),
        "organisation": env.organisation or "",
        **_clock(event),
        "ae_title": p.get("calling_ae_title") or env.source_node,
        "study_uid": p.get("StudyInstanceUID") or "",
        "sop_uid": p.get("SOPInstanceUID") or "",
        "bytes": 0,
        "reason": "",
        "missing": [],
        "pathology": 0,
        "emergency": 0,
    }
    if event.type == "InstanceReceived":
        base.update(
            kind="stored",
            bytes=p["blob"]["size"],
            missing=list(p.get("missing") or []),
            pathology=int(bool(p.get("pathology"))),
            emergency=int(bool(p.get("emergency"))),
        )
    elif event.type == "InstanceRejected":
        base.update(kind="rejected", reason=p["reason"], bytes=p.get("received_bytes") or 0)
    else:  # AssociationRejected: nothing was received, but the caller was seen
        base.update(kind="association-rejected", reason=p["reason"])
    return Row(ARRIVALS, base)


def _report_signed(event: Event, source: Source) -> Row:
    p = event.payload
    signed_at: datetime = p["signed_at"]
    return Row(
        REPORTS_SIGNED,
        {
            **source.columns(),
            "organisation": event.envelope.organisation or "",
            "minute": _minute(signed_at),
            "signed_at": signed_at,
            "study_uid": p["StudyInstanceUID"],
            "report_id": p["report_id"],
            "revision": p["revision"],
        },
    )


def _transfer_state(event: Event) -> str:
    if event.type == "TransferQueued":
        return "queued"
    if event.type == "TransferStarted":
        return "in-flight"
    if event.type == "TransferCompleted":
        return "done"
    return "queued" if event.payload["will_retry"] else "failed"


def _transfer(event: Event, source: Source) -> Row:
    p = event.payload
    queued = event.type == "TransferQueued"
    completed = event.type == "TransferCompleted"
    return Row(
        TRANSFER_EVENTS,
        {
            **source.columns(),
            "organisation": event.envelope.organisation or "",
            **_clock(event),
            "transfer_id": p["transfer_id"],
            "study_uid": p.get("StudyInstanceUID") or "",
            "event_type": event.type,
            "state": _transfer_state(event),
            "attempt": p.get("attempt") or 0,
            "instances": p["instances"] if queued else (p.get("instances_sent") or 0),
            "bytes": p["bytes"] if queued else (p["bytes_sent"] if completed else 0),
            "priority": p["priority"] if queued else "",
            "error": p["error"] if event.type == "TransferFailed" else "",
            "duration_ms": p["duration_ms"] if completed else 0,
        },
    )


def _fits_datetime64(moment: datetime | None) -> datetime | None:
    """An agent's clock may be anything; outside DateTime64's range (1900..2299) it is NULL
    rather than a refused row."""
    if moment is None or not 1900 <= moment.year <= 2299:
        return None
    return moment


def _heartbeat(event: Event, source: Source) -> Row:
    p = event.payload
    return Row(
        HEARTBEATS,
        {
            **source.columns(),
            "organisation": event.envelope.organisation or "",
            **_clock(event),
            "agent_id": p["agent_id"],
            "host": p.get("host") or "",
            "queue_depth": p["queue_depth"],
            "queue_bytes": p["queue_bytes"],
            "in_flight": p["in_flight"],
            "link_kbps": p.get("link_kbps"),
            "last_success_at": _fits_datetime64(p.get("last_success_at")),
            "oldest_waiting_at": _fits_datetime64(p.get("oldest_waiting_at")),
            "link_state": p.get("link_state") or "",
            "held": p.get("held") or 0,
            "emergency_waiting": p.get("emergency_waiting") or 0,
        },
    )


def _request(event: Event, source: Source) -> Row:
    p, env = event.payload, event.envelope
    return Row(
        TRANSFER_REQUESTS,
        {
            **source.columns(),
            "organisation": p["organisation"],
            **_clock(event),
            "request_id": p["request_id"],
            "study_uid": p.get("StudyInstanceUID") or "",
            "patient_id": p.get("PatientID") or "",
            "urgent": int(bool(p.get("urgent"))),
            "reason": p.get("reason") or "",
            "requested_by": env.actor.user,
            "requested_by_role": env.actor.role,
        },
    )


_HANDLERS = {
    "InstanceReceived": _arrival,
    "InstanceRejected": _arrival,
    "AssociationRejected": _arrival,
    "ReportSigned": _report_signed,
    "TransferQueued": _transfer,
    "TransferStarted": _transfer,
    "TransferCompleted": _transfer,
    "TransferFailed": _transfer,
    "AgentHeartbeat": _heartbeat,
    "TransferRequested": _request,
}
