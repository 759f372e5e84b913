"""Monitoring read side: the figures the API's dashboards and the oversight pages show, aggregated
at query time over ``FINAL`` rows of :mod:`projections.monitoring.fold` (exact whether or not the
background merge has happened). Every value travels as a ``{name:Type}`` parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from projections.monitoring.fold import (
    ARRIVALS,
    HEARTBEATS,
    REPORTS_SIGNED,
    TRANSFER_EVENTS,
    TRANSFER_REQUESTS,
    TRANSFER_STATES,
)
from projections.warehouse.base import Warehouse

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


_REQUESTS = f"""
SELECT organisation, request_id, study_uid, patient_id, urgent, reason, at, requested_by, requested_by_role,
       partition, offset
FROM {TRANSFER_REQUESTS} FINAL
WHERE (empty({{organisation:String}}) OR organisation = {{organisation:String}})
  AND offset > {{after:Int64}}
ORDER BY organisation, partition, offset
LIMIT {{limit:UInt32}}
"""


def transfer_requests(
    warehouse: Warehouse, organisation: str | None = None, after: int = -1, limit: int = 1000
) -> list[dict[str, Any]]:
    """Full-import requests in log order, of one organisation (or of all: None), those after the
    log offset ``after`` (an agent's cursor: one organisation's requests share its partition, so
    the offset orders them and a request is never skipped). Each: organisation, request_id,
    StudyInstanceUID, PatientID (None when not given), urgent, reason, requested_at,
    requested_by, requested_by_role, offset."""
    params = {"organisation": organisation or "", "after": after, "limit": limit}
    out = []
    for row in warehouse.query(_REQUESTS, params).dicts():
        out.append(
            {
                "organisation": row["organisation"],
                "request_id": row["request_id"],
                "StudyInstanceUID": row["study_uid"] or None,
                "PatientID": row["patient_id"] or None,
                "urgent": bool(row["urgent"]),
                "reason": row["reason"] or None,
                "requested_at": row["at"],
                "requested_by": row["requested_by"],
                "requested_by_role": row["requested_by_role"],
                "offset": int(row["offset"]),
            }
        )
    return out
