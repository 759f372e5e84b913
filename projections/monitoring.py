"""Monitoring: what regional IT watches per organisation and per minute.

Arrivals (instances, bytes, studies, rejections by reason, incomplete packages, last contact per AE
title), report turnaround (first instance received -> report signed), transfer states (queued, in
flight, done, failed) and the forwarding agents' heartbeats (queue depth, last success).

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

The query functions at the bottom are what the API's dashboards call; every value travels as a
``{name:Type}`` parameter.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from projections.warehouse.base import Warehouse
from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM, REPORTS, TRANSFERS

ARRIVALS = "monitoring_arrivals"
REPORTS_SIGNED = "monitoring_reports"
TRANSFER_EVENTS = "monitoring_transfers"
HEARTBEATS = "monitoring_heartbeats"

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
    last_success_at Nullable(DateTime64(6, 'UTC'))
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (organisation, agent_id, topic, partition, offset)
"""

TRANSFER_STATES = ("queued", "in-flight", "done", "failed")


def _minute(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(second=0, microsecond=0)


def _position(source: Source) -> dict[str, Any]:
    return {"topic": source.topic, "partition": source.partition, "offset": source.offset}


def _clock(event: Event) -> dict[str, Any]:
    at = event.envelope.occurred_at
    return {"minute": _minute(at), "at": at}


class Monitoring:
    name = "monitoring"
    topics: Sequence[str] = (DICOM, REPORTS, TRANSFERS)
    ddl = (ARRIVALS_DDL, REPORTS_DDL, TRANSFERS_DDL, HEARTBEATS_DDL)
    tables = (ARRIVALS, REPORTS_SIGNED, TRANSFER_EVENTS, HEARTBEATS)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        handler = _HANDLERS.get(event.type)
        return [handler(event, source)] if handler is not None else []


def _arrival(event: Event, source: Source) -> Row:
    p, env = event.payload, event.envelope
    base: dict[str, Any] = {
        **_position(source),
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
            **_position(source),
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
            **_position(source),
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
            **_position(source),
            "organisation": event.envelope.organisation or "",
            **_clock(event),
            "agent_id": p["agent_id"],
            "host": p.get("host") or "",
            "queue_depth": p["queue_depth"],
            "queue_bytes": p["queue_bytes"],
            "in_flight": p["in_flight"],
            "link_kbps": p.get("link_kbps"),
            "last_success_at": _fits_datetime64(p.get("last_success_at")),
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
}


# -- queries ----------------------------------------------------------------------------------------
_SUMMARY_ARRIVALS = f"""
SELECT
    organisation,
    countIf(kind = 'stored') AS instances,
    sumIf(bytes, kind = 'stored') AS bytes,
    uniqExactIf(study_uid, kind = 'stored') AS studies,
    countIf(kind != 'stored') AS rejections,
    countIf(kind = 'stored' AND notEmpty(missing)) AS incomplete_instances,
    max(at) AS last_seen
FROM {ARRIVALS} FINAL
WHERE at >= {{since:DateTime64(6, 'UTC')}}
GROUP BY organisation
ORDER BY organisation
"""

# A package is incomplete while the study's most recent object still lacks regional attributes
# (a re-sent object that carries them completes it). A study's events share its UID as log key,
# so they are in one partition and the offset orders them.
_SUMMARY_PACKAGES = f"""
SELECT organisation, countIf(incomplete) AS incomplete_packages, countIf(NOT signed) AS awaiting_report
FROM (
    SELECT
        organisation,
        study_uid,
        argMax(notEmpty(missing), (at, offset)) AS incomplete,
        study_uid IN (SELECT study_uid FROM {REPORTS_SIGNED} FINAL) AS signed
    FROM {ARRIVALS} FINAL
    WHERE kind = 'stored'
    GROUP BY organisation, study_uid
    HAVING max(at) >= {{since:DateTime64(6, 'UTC')}}
)
GROUP BY organisation
ORDER BY organisation
"""

# Turnaround: the study's first stored object -> its first signature, for first signatures in the window;
# the study counts for the organisation that sent that first object (``any`` would pick one at random
# for a study two organisations sent).
_TURNAROUND = f"""
SELECT
    a.organisation AS organisation,
    toStartOfMinute(r.first_signed) AS minute,
    dateDiff('second', a.first_received, r.first_signed) AS seconds
FROM (
    SELECT study_uid, min(signed_at) AS first_signed
    FROM {REPORTS_SIGNED} FINAL
    GROUP BY study_uid
) AS r
INNER JOIN (
    SELECT study_uid, argMin(organisation, (at, offset)) AS organisation, min(at) AS first_received
    FROM {ARRIVALS} FINAL
    WHERE kind = 'stored'
    GROUP BY study_uid
) AS a ON a.study_uid = r.study_uid
WHERE r.first_signed >= {{since:DateTime64(6, 'UTC')}}
"""


def organisation_summary(warehouse: Warehouse, since: datetime) -> list[dict[str, Any]]:
    """Per organisation since ``since``: instances, bytes, studies, rejections (by reason),
    incomplete instances and packages, studies awaiting a signed report, report turnaround
    (median and maximum seconds), last contact."""
    params = {"since": since}
    summary: dict[str, dict[str, Any]] = {}

    def entry(organisation: str) -> dict[str, Any]:
        return summary.setdefault(
            organisation,
            {
                "organisation": organisation,
                "instances": 0,
                "bytes": 0,
                "studies": 0,
                "rejections": 0,
                "rejections_by_reason": {},
                "incomplete_instances": 0,
                "incomplete_packages": 0,
                "awaiting_report": 0,
                "reports_signed": 0,
                "turnaround_median_s": None,
                "turnaround_max_s": None,
                "last_seen": None,
            },
        )

    for row in warehouse.query(_SUMMARY_ARRIVALS, params).dicts():
        entry(row["organisation"]).update(row)
    for row in warehouse.query(_SUMMARY_PACKAGES, params).dicts():
        entry(row["organisation"]).update(row)
    for row in warehouse.query(_REJECTIONS_BY_REASON, params).dicts():
        entry(row["organisation"])["rejections_by_reason"][row["reason"]] = row["n"]
    turnaround_sql = f"""
        SELECT organisation, count() AS reports_signed,
               quantileExactInclusive(0.5)(seconds) AS turnaround_median_s, max(seconds) AS turnaround_max_s
        FROM ({_TURNAROUND}) GROUP BY organisation"""
    for row in warehouse.query(turnaround_sql, params).dicts():
        entry(row["organisation"]).update(row)
    return [summary[k] for k in sorted(summary)]


_REJECTIONS_BY_REASON = f"""
SELECT organisation, reason, count() AS n
FROM {ARRIVALS} FINAL
WHERE kind != 'stored' AND at >= {{since:DateTime64(6, 'UTC')}}
GROUP BY organisation, reason
ORDER BY organisation, reason
"""

_PER_MINUTE = f"""
SELECT
    minute,
    countIf(kind = 'stored') AS instances,
    sumIf(bytes, kind = 'stored') AS bytes,
    uniqExactIf(study_uid, kind = 'stored') AS studies,
    countIf(kind != 'stored') AS rejections,
    countIf(kind = 'stored' AND notEmpty(missing)) AS incomplete_instances
FROM {ARRIVALS} FINAL
WHERE organisation = {{organisation:String}} AND minute >= toStartOfMinute({{since:DateTime64(6, 'UTC')}})
GROUP BY minute
ORDER BY minute
"""

_PER_MINUTE_REJECTIONS = f"""
SELECT minute, reason, count() AS n
FROM {ARRIVALS} FINAL
WHERE organisation = {{organisation:String}} AND kind != 'stored'
  AND minute >= toStartOfMinute({{since:DateTime64(6, 'UTC')}})
GROUP BY minute, reason
"""

_PER_MINUTE_TRANSFERS = f"""
SELECT minute, state, count() AS n
FROM {TRANSFER_EVENTS} FINAL
WHERE organisation = {{organisation:String}} AND minute >= toStartOfMinute({{since:DateTime64(6, 'UTC')}})
GROUP BY minute, state
"""


def per_minute(warehouse: Warehouse, organisation: str, since: datetime) -> list[dict[str, Any]]:
    """One row per minute (that has any activity) for one organisation since ``since``: instances,
    bytes, studies, rejections and their reasons, incomplete instances, reports signed and their
    mean turnaround, and transfer events by resulting state."""
    params = {"organisation": organisation, "since": since}
    minutes: dict[datetime, dict[str, Any]] = {}

    def entry(minute: datetime) -> dict[str, Any]:
        return minutes.setdefault(
            minute,
            {
                "minute": minute,
                "instances": 0,
                "bytes": 0,
                "studies": 0,
                "rejections": 0,
                "rejections_by_reason": {},
                "incomplete_instances": 0,
                "reports_signed": 0,
                "turnaround_avg_s": None,
                "transfers": dict.fromkeys(TRANSFER_STATES, 0),
            },
        )

    for row in warehouse.query(_PER_MINUTE, params).dicts():
        entry(row["minute"]).update(row)
    for row in warehouse.query(_PER_MINUTE_REJECTIONS, params).dicts():
        entry(row["minute"])["rejections_by_reason"][row["reason"]] = row["n"]
    for row in warehouse.query(_PER_MINUTE_TRANSFERS, params).dicts():
        entry(row["minute"])["transfers"][row["state"]] = row["n"]
    turnaround_sql = f"""
        SELECT minute, count() AS reports_signed, avg(seconds) AS turnaround_avg_s
        FROM ({_TURNAROUND}) WHERE organisation = {{organisation:String}} GROUP BY minute"""
    for row in warehouse.query(turnaround_sql, params).dicts():
        entry(row["minute"]).update(row)
    return [minutes[k] for k in sorted(minutes)]


_STALLED = f"""
SELECT
    ae_title,
    argMax(organisation, (at, offset)) AS organisation,
    max(at) AS last_seen,
    maxIf(at, kind = 'stored') AS last_stored,
    countIf(kind = 'stored') AS instances
FROM {ARRIVALS} FINAL
GROUP BY ae_title
HAVING last_seen < {{cutoff:DateTime64(6, 'UTC')}}
ORDER BY last_seen, ae_title
"""


def stalled_senders(warehouse: Warehouse, silent_for: timedelta, now: datetime | None = None) -> list[dict[str, Any]]:
    """AE titles seen before but silent (no object, no refusal, no association) for ``silent_for``.

    ``last_stored`` is None for a caller whose objects were never accepted."""
    cutoff = (now or datetime.now(UTC)) - silent_for
    rows = warehouse.query(_STALLED, {"cutoff": cutoff}).dicts()
    for row in rows:
        if row["instances"] == 0:
            row["last_stored"] = None
    return rows


_TRANSFER_STATES = f"""
SELECT organisation, state, count() AS n, sum(attempts) AS attempts, sum(failed_attempts) AS failed_attempts
FROM (
    SELECT
        organisation,
        transfer_id,
        argMax(state, offset) AS state,
        countIf(event_type = 'TransferStarted') AS attempts,
        countIf(event_type = 'TransferFailed') AS failed_attempts
    FROM {TRANSFER_EVENTS} FINAL
    GROUP BY organisation, transfer_id
)
GROUP BY organisation, state
ORDER BY organisation, state
"""

_AGENTS = f"""
SELECT
    organisation,
    agent_id,
    max(at) AS last_heartbeat,
    argMax(queue_depth, (at, offset)) AS queue_depth,
    argMax(queue_bytes, (at, offset)) AS queue_bytes,
    argMax(in_flight, (at, offset)) AS in_flight,
    argMax(link_kbps, (at, offset)) AS link_kbps,
    max(last_success_at) AS last_success_at
FROM {HEARTBEATS} FINAL
GROUP BY organisation, agent_id
ORDER BY organisation, agent_id
"""


def transfer_states(warehouse: Warehouse) -> list[dict[str, Any]]:
    """Per organisation: how many transfers are now queued / in flight / done / failed, attempts
    made and failed, and each forwarding agent's latest heartbeat (queue depth and bytes, in flight,
    link speed, last successful upload)."""
    states: dict[str, dict[str, Any]] = {}

    def entry(organisation: str) -> dict[str, Any]:
        return states.setdefault(
            organisation,
            {
                "organisation": organisation,
                **dict.fromkeys(TRANSFER_STATES, 0),
                "attempts": 0,
                "failed_attempts": 0,
                "agents": [],
            },
        )

    for row in warehouse.query(_TRANSFER_STATES).dicts():
        e = entry(row["organisation"])
        e[row["state"]] = row["n"]
        e["attempts"] += row["attempts"]
        e["failed_attempts"] += row["failed_attempts"]
    for row in warehouse.query(_AGENTS).dicts():
        entry(row.pop("organisation"))["agents"].append(row)
    return [states[k] for k in sorted(states)]
