"""The regional dashboard: what ``/monitoring``, ``GET /api/monitoring/dashboard`` and ``cami
monitor`` show, read from the monitoring projection's tables (:mod:`projections.monitoring.fold`).

The alarms are pure functions of the rows and of ``now`` (unit-tested without a warehouse):

- **silent sender**: an organisation that usually sends (at least :data:`SILENT_MIN_STUDIES`
  studies in the last :data:`USUAL_WINDOW`) has sent nothing for longer than
  :data:`SILENT_FACTOR` times its median gap between studies, and never less than
  :data:`SILENT_FLOOR` (a busy CT's usual gap of seconds must not raise an alarm at lunch);
- **agent silent**: a forwarding agent has sent no heartbeat for :data:`HEARTBEAT_FACTOR` times its
  usual interval (the median gap between its recent heartbeats; the interval is its own
  configuration, not in the event), never less than :data:`HEARTBEAT_FLOOR`;
- **stalled transfer**: a transfer in flight with no event of its own and no object of its study
  arriving for :data:`STALLED_AFTER`.

Times are UTC; "today" starts at UTC midnight of ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from statistics import median
from typing import Any

from projections.monitoring.fold import ARRIVALS, HEARTBEATS, TRANSFER_EVENTS
from projections.monitoring.queries import per_minute
from projections.warehouse.base import Warehouse

USUAL_WINDOW = timedelta(days=7)
SILENT_MIN_STUDIES = 3
SILENT_FACTOR = 4.0
SILENT_FLOOR = timedelta(minutes=15)
HEARTBEAT_FACTOR = 3.0
HEARTBEAT_FLOOR = timedelta(seconds=5)
#: the heartbeats an agent's usual interval is taken from
HEARTBEAT_SAMPLE = 20
STALLED_AFTER = timedelta(minutes=10)


# -- the alarms (pure) -----------------------------------------------------------------------------
def usual_gap(moments: Iterable[datetime]) -> timedelta | None:
    """The median gap between consecutive ``moments`` (None with fewer than two)."""
    ordered = sorted(moments)
    gaps = [(b - a).total_seconds() for a, b in pairwise(ordered)]
    return timedelta(seconds=median(gaps)) if gaps else None


def silent_sender(
    organisation: str, study_starts: Sequence[datetime], last_arrival: datetime | None, now: datetime
) -> dict[str, Any] | None:
    """The alarm for ``organisation`` whose studies began at ``study_starts`` (within the usual
    window) and whose last object arrived at ``last_arrival``; None when all is as usual."""
    if len(study_starts) < SILENT_MIN_STUDIES or last_arrival is None:
        return None
    gap = usual_gap(study_starts)
    assert gap is not None  # three or more moments
    allowed = max(gap * SILENT_FACTOR, SILENT_FLOOR)
    quiet = now - last_arrival
    if quiet <= allowed:
        return None
    return {
        "kind": "silent-sender",
        "organisation": organisation,
        "agent_id": None,
        "since": last_arrival,
        "quiet_s": round(quiet.total_seconds()),
        "usual_gap_s": round(gap.total_seconds()),
        "allowed_s": round(allowed.total_seconds()),
    }


def agent_silent(
    organisation: str, agent_id: str, heartbeats: Sequence[datetime], now: datetime
) -> dict[str, Any] | None:
    """The alarm for an agent whose recent heartbeats came at ``heartbeats``; None while it beats
    as usual (or has beaten only once: its interval is not known yet)."""
    gap = usual_gap(heartbeats)
    if gap is None:
        return None
    last = max(heartbeats)
    allowed = max(gap * HEARTBEAT_FACTOR, HEARTBEAT_FLOOR)
    quiet = now - last
    if quiet <= allowed:
        return None
    return {
        "kind": "agent-silent",
        "organisation": organisation,
        "agent_id": agent_id,
        "since": last,
        "quiet_s": round(quiet.total_seconds()),
        "usual_gap_s": round(gap.total_seconds(), 1),
        "allowed_s": round(allowed.total_seconds(), 1),
    }


def stalled_transfer(transfer: dict[str, Any], now: datetime) -> dict[str, Any] | None:
    """The alarm for an in-flight ``transfer`` (a row of the snapshot's ``in_flight``) that has
    shown no sign of life (its own events, its study's objects) for :data:`STALLED_AFTER`."""
    last: datetime = transfer["last_activity"]
    quiet = now - last
    if quiet <= STALLED_AFTER:
        return None
    return {
        "kind": "stalled-transfer",
        "organisation": transfer["organisation"],
        "agent_id": None,
        "transfer_id": transfer["transfer_id"],
        "since": last,
        "quiet_s": round(quiet.total_seconds()),
        "allowed_s": round(STALLED_AFTER.total_seconds()),
    }


# -- the queries -----------------------------------------------------------------------------------
# one scan of the week's arrivals, per organisation: today's figures, the last hour's refusals, the
# studies' first arrivals and the last object (the silent-sender alarm), incomplete packages (a
# study whose latest object still lacks regional attributes)
_ARRIVALS = f"""
SELECT
    organisation,
    countIf(today_instances > 0) AS studies,
    sum(today_instances) AS instances,
    sum(today_bytes) AS bytes,
    sum(today_rejections) AS rejections,
    sum(hour_rejections) AS rejections_last_hour,
    maxIf(last_at, stored > 0) AS last_arrival,
    groupArrayIf(first_at, stored > 0) AS study_starts,
    countIf(stored > 0 AND incomplete) AS incomplete_packages
FROM (
    SELECT
        organisation,
        study_uid,
        countIf(kind = 'stored') AS stored,
        countIf(kind = 'stored' AND at >= {{today:DateTime64(6, 'UTC')}}) AS today_instances,
        sumIf(bytes, kind = 'stored' AND at >= {{today:DateTime64(6, 'UTC')}}) AS today_bytes,
        countIf(kind != 'stored' AND at >= {{today:DateTime64(6, 'UTC')}}) AS today_rejections,
        countIf(kind != 'stored' AND at >= {{hour_ago:DateTime64(6, 'UTC')}}) AS hour_rejections,
        minIf(at, kind = 'stored') AS first_at,
        maxIf(at, kind = 'stored') AS last_at,
        argMaxIf(notEmpty(missing), (at, offset), kind = 'stored') AS incomplete
    FROM {ARRIVALS} FINAL
    WHERE at >= {{usual:DateTime64(6, 'UTC')}}
    GROUP BY organisation, study_uid
)
GROUP BY organisation
"""

_TRANSFERS = f"""
SELECT
    organisation,
    transfer_id,
    argMax(state, offset) AS state,
    any(study_uid) AS study_uid,
    maxIf(instances, event_type = 'TransferQueued') AS instances,
    maxIf(bytes, event_type = 'TransferQueued') AS bytes,
    anyIf(priority, event_type = 'TransferQueued') AS priority,
    minIf(at, event_type = 'TransferQueued') AS queued_at,
    maxIf(at, event_type = 'TransferStarted') AS started_at,
    maxIf(at, event_type = 'TransferCompleted') AS completed_at,
    max(at) AS last_event_at,
    max(attempt) AS attempt
FROM {TRANSFER_EVENTS} FINAL
WHERE organisation IN (
    SELECT DISTINCT organisation FROM {TRANSFER_EVENTS} FINAL WHERE at >= {{usual:DateTime64(6, 'UTC')}}
)
GROUP BY organisation, transfer_id
HAVING state IN ('queued', 'in-flight') OR last_event_at >= {{today:DateTime64(6, 'UTC')}}
"""

_FAILURES = f"""
SELECT organisation, count() AS n
FROM {TRANSFER_EVENTS} FINAL
WHERE event_type = 'TransferFailed' AND at >= {{hour_ago:DateTime64(6, 'UTC')}}
GROUP BY organisation
"""

# objects of a study that arrived since a moment: an in-flight transfer's progress
_ARRIVED_SINCE = f"""
SELECT study_uid, count() AS n, max(at) AS last_at
FROM {ARRIVALS} FINAL
WHERE kind = 'stored' AND study_uid IN {{studies:Array(String)}} AND at >= {{since:DateTime64(6, 'UTC')}}
GROUP BY study_uid
"""

_AGENTS = f"""
SELECT
    organisation,
    agent_id,
    argMax(host, (at, offset)) AS host,
    max(at) AS last_heartbeat,
    argMax(link_state, (at, offset)) AS link_state,
    argMax(link_kbps, (at, offset)) AS link_kbps,
    argMax(queue_depth, (at, offset)) AS queue_depth,
    argMax(queue_bytes, (at, offset)) AS queue_bytes,
    argMax(oldest_waiting_at, (at, offset)) AS oldest_waiting_at,
    argMax(in_flight, (at, offset)) AS in_flight,
    argMax(held, (at, offset)) AS held,
    argMax(emergency_waiting, (at, offset)) AS emergency_waiting,
    max(last_success_at) AS last_success_at,
    arraySlice(arrayReverseSort(groupArray(at)), 1, {HEARTBEAT_SAMPLE}) AS recent
FROM {HEARTBEATS} FINAL
WHERE at >= {{usual:DateTime64(6, 'UTC')}}
GROUP BY organisation, agent_id
ORDER BY organisation, agent_id
"""


def _rows(warehouse: Warehouse, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    """``sql``'s rows with those of ``params`` it names (the warehouse refuses a value it would not bind)."""
    return warehouse.query(sql, {k: v for k, v in params.items() if "{" + k + ":" in sql}).dicts()


def _seconds(later: datetime | None, earlier: datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds(), 3)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def dashboard_snapshot(warehouse: Warehouse, now: datetime | None = None) -> dict[str, Any]:
    """The regional dashboard as JSON-ready data (datetimes: ISO 8601 once JSON-encoded). Stable
    shape (``cami monitor`` and the page read it)::

        {"now": datetime, "today": datetime (UTC midnight),
         "organisations": [                         # by code; every one seen in the last 7 days
           {"organisation": code,
            "today": {"studies", "instances", "bytes", "rejections"},
            "last_arrival": datetime | None,
            "failures_last_hour": {"transfers": n, "rejections": n},
            "incomplete_packages": n,                 # studies of the last 7 days
            "in_flight": [{"organisation", "transfer_id", "study_uid", "priority", "attempt",
                           "instances", "bytes", "instances_arrived", "progress" (0..1),
                           "started_at", "last_activity"}],
            "queued_transfers": n,
            "emergency": {"waiting": n, "delivered_today": n,
                          "delivery_s": [seconds queue -> delivery of each delivered today],
                          "delivery_median_s", "delivery_max_s"},
            "agents": [{"agent_id", "host", "last_heartbeat", "heartbeat_age_s", "link_state"
                        ("up" | "down" | "unknown" | ""), "link_kbps", "queue_depth",
                        "queue_bytes", "oldest_waiting_at", "in_flight", "held",
                        "emergency_waiting", "last_success_at", "usual_interval_s"}],
            "alarms": [alarm, ...]}],                 # this organisation's
         "alarms": [{"kind": "silent-sender" | "agent-silent" | "stalled-transfer",
                     "organisation", "agent_id", "since", "quiet_s", "allowed_s", ...}]}

    The HTTP route adds ``organisation_name`` and ``organisation_known`` beside each code."""
    now = now or datetime.now(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    params = {"today": today, "hour_ago": now - timedelta(hours=1), "usual": now - USUAL_WINDOW}
    rows: dict[str, dict[str, Any]] = {}

    def entry(organisation: str) -> dict[str, Any]:
        return rows.setdefault(
            organisation,
            {
                "organisation": organisation,
                "today": {"studies": 0, "instances": 0, "bytes": 0, "rejections": 0},
                "last_arrival": None,
                "failures_last_hour": {"transfers": 0, "rejections": 0},
                "incomplete_packages": 0,
                "in_flight": [],
                "queued_transfers": 0,
                "emergency": {
                    "waiting": 0,
                    "delivered_today": 0,
                    "delivery_s": [],
                    "delivery_median_s": None,
                    "delivery_max_s": None,
                },
                "agents": [],
                "alarms": [],
            },
        )

    alarms: list[dict[str, Any]] = []
    for row in _rows(warehouse, _ARRIVALS, params):
        e = entry(row["organisation"])
        e["today"] = {k: int(row[k]) for k in ("studies", "instances", "bytes", "rejections")}
        e["failures_last_hour"]["rejections"] = int(row["rejections_last_hour"])
        e["incomplete_packages"] = int(row["incomplete_packages"])
        starts = [m for m in (_utc(s) for s in row["study_starts"]) if m is not None]
        e["last_arrival"] = _utc(row["last_arrival"]) if starts else None
        alarm = silent_sender(row["organisation"], starts, e["last_arrival"], now)
        if alarm is not None:
            alarms.append(alarm)
    for row in _rows(warehouse, _FAILURES, params):
        entry(row["organisation"])["failures_last_hour"]["transfers"] = int(row["n"])

    in_flight = []
    for row in _rows(warehouse, _TRANSFERS, params):
        e = entry(row["organisation"])
        emergency = e["emergency"]
        urgent = row["priority"] == "emergency"
        if row["state"] == "queued":
            e["queued_transfers"] += 1
            emergency["waiting"] += int(urgent)
        elif row["state"] == "in-flight":
            emergency["waiting"] += int(urgent)
            in_flight.append(row)
        elif row["state"] == "done" and urgent and _utc(row["completed_at"]) and row["completed_at"] >= today:
            emergency["delivered_today"] += 1
            emergency["delivery_s"].append(_seconds(_utc(row["completed_at"]), _utc(row["queued_at"])))
    if in_flight:
        since = min(_utc(r["started_at"]) or today for r in in_flight)
        studies = sorted({r["study_uid"] for r in in_flight if r["study_uid"]})
        arrived = {
            a["study_uid"]: a for a in warehouse.query(_ARRIVED_SINCE, {"studies": studies, "since": since}).dicts()
        }
        for row in sorted(in_flight, key=lambda r: (r["organisation"], r["transfer_id"])):
            started = _utc(row["started_at"])
            got = arrived.get(row["study_uid"])
            count = int(got["n"]) if got and started and _utc(got["last_at"]) >= started else 0  # type: ignore[operator]
            activity = [m for m in (_utc(row["last_event_at"]), _utc(got["last_at"]) if got else None) if m]
            transfer = {
                "organisation": row["organisation"],
                "transfer_id": row["transfer_id"],
                "study_uid": row["study_uid"] or None,
                "priority": row["priority"],
                "attempt": int(row["attempt"]),
                "instances": int(row["instances"]),
                "bytes": int(row["bytes"]),
                "instances_arrived": min(count, int(row["instances"])) if row["instances"] else count,
                "progress": round(min(count / row["instances"], 1.0), 3) if row["instances"] else None,
                "started_at": started,
                "last_activity": max(activity),
            }
            rows[row["organisation"]]["in_flight"].append(transfer)
            alarm = stalled_transfer(transfer, now)
            if alarm is not None:
                alarms.append(alarm)
    for e in rows.values():
        delivery = sorted(s for s in e["emergency"]["delivery_s"] if s is not None)
        e["emergency"]["delivery_s"] = delivery
        if delivery:
            e["emergency"]["delivery_median_s"] = median(delivery)
            e["emergency"]["delivery_max_s"] = delivery[-1]

    for row in _rows(warehouse, _AGENTS, params):
        recent = [m for m in (_utc(r) for r in row["recent"]) if m is not None]
        gap = usual_gap(recent)
        last = _utc(row["last_heartbeat"])
        entry(row["organisation"])["agents"].append(
            {
                "agent_id": row["agent_id"],
                "host": row["host"] or None,
                "last_heartbeat": last,
                "heartbeat_age_s": _seconds(now, last),
                "link_state": row["link_state"],
                "link_kbps": row["link_kbps"],
                "queue_depth": int(row["queue_depth"]),
                "queue_bytes": int(row["queue_bytes"]),
                "oldest_waiting_at": _utc(row["oldest_waiting_at"]),
                "in_flight": int(row["in_flight"]),
                "held": int(row["held"]),
                "emergency_waiting": int(row["emergency_waiting"]),
                "last_success_at": _utc(row["last_success_at"]),
                "usual_interval_s": round(gap.total_seconds(), 1) if gap else None,
            }
        )
        alarm = agent_silent(row["organisation"], row["agent_id"], recent, now)
        if alarm is not None:
            alarms.append(alarm)

    alarms.sort(key=lambda a: (a["organisation"], a["kind"], a.get("agent_id") or "", a.get("transfer_id") or ""))
    for alarm in alarms:
        rows[alarm["organisation"]]["alarms"].append(alarm)
    return {"now": now, "today": today, "organisations": [rows[k] for k in sorted(rows)], "alarms": alarms}


_TRANSFER_LOG = f"""
SELECT at, transfer_id, study_uid, event_type, state, attempt, instances, bytes, priority, error, duration_ms
FROM {TRANSFER_EVENTS} FINAL
WHERE organisation = {{organisation:String}}
ORDER BY at DESC, partition DESC, offset DESC
LIMIT {{limit:UInt32}}
"""


def organisation_page(warehouse: Warehouse, organisation: str, now: datetime | None = None) -> dict[str, Any]:
    """One organisation's page: ``minutes`` (throughput per minute over the last 24 hours, as
    :func:`projections.monitoring.queries.per_minute`), ``rejections_by_reason`` over the same
    window, and ``transfer_events``: its last 100 transfer events, newest first."""
    now = now or datetime.now(UTC)
    minutes = per_minute(warehouse, organisation, now - timedelta(hours=24))
    reasons: dict[str, int] = {}
    for minute in minutes:
        for reason, n in minute["rejections_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + int(n)
    events = warehouse.query(_TRANSFER_LOG, {"organisation": organisation, "limit": 100}).dicts()
    return {
        "organisation": organisation,
        "now": now,
        "minutes": minutes,
        "rejections_by_reason": dict(sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))),
        "transfer_events": events,
    }
