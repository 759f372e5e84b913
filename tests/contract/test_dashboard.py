"""The regional dashboard's snapshot over the real monitoring tables (both warehouse backends):
events through the embedded log and :class:`EmbeddedRunner` into a :class:`WarehouseSink`, the
figures worked out by hand; and a warehouse made before AgentHeartbeat v2 gains its columns."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

from projections.monitoring.dashboard import dashboard_snapshot, organisation_page
from projections.monitoring.fold import HEARTBEATS, Monitoring
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Event, new_event
from streams.processing import EmbeddedRunner
from tests.support.projections import open_log
from tests.support.scenarios import ORG_A, ORG_B, STUDY, at, instance_event, transfer_event

NOW = at("2025-04-20 15:00:00")


def heartbeat(org: str, agent: str, when: Any, **payload: Any) -> Event:
    figures = {"host": "gw", "queue_depth": 0, "queue_bytes": 0, "in_flight": 0, **payload}
    return new_event(
        "AgentHeartbeat",
        {"agent_id": agent, **figures},
        aggregate_id=org,
        source_node=agent,
        organisation=org,
        occurred_at=when,
    )


def region() -> list[Event]:
    events: list[Event] = []
    # ORG_A: a study every 30 minutes from 09:00 to 11:00 (5 studies), then silence until 15:00
    for n in range(5):
        moment = at("2025-04-20 09:00:00") + timedelta(minutes=30 * n)
        events.append(instance_event(replace(STUDY[1], n=100 + n), 0, moment))
    # yesterday's object counts for the week, not for today
    events.append(instance_event(STUDY[7], 0, at("2025-04-19 12:00:00")))
    # ORG_B: an emergency transfer delivered today in 90 s, one in flight (2 of 4 objects arrived)
    # whose last sign of life was 14:58, one in flight since 14:00 that stalled, one that failed
    t = transfer_event
    events += [
        t(
            "TransferQueued",
            ORG_B,
            "E1",
            at("2025-04-20 10:00:00"),
            StudyInstanceUID="1.2.3.1",
            instances=1,
            bytes=10,
            priority="emergency",
            pathology=False,
            full_import=False,
            destination="CAMI",
        ),
        t("TransferStarted", ORG_B, "E1", at("2025-04-20 10:00:30"), StudyInstanceUID="1.2.3.1", attempt=1),
        t(
            "TransferCompleted",
            ORG_B,
            "E1",
            at("2025-04-20 10:01:30"),
            StudyInstanceUID="1.2.3.1",
            attempt=1,
            instances_sent=1,
            bytes_sent=10,
            duration_ms=60000,
        ),
        t(
            "TransferQueued",
            ORG_B,
            "F1",
            at("2025-04-20 14:50:00"),
            StudyInstanceUID=STUDY[5].uid,
            instances=4,
            bytes=400,
            priority="scheduled",
            pathology=False,
            full_import=False,
            destination="CAMI",
        ),
        t("TransferStarted", ORG_B, "F1", at("2025-04-20 14:57:00"), StudyInstanceUID=STUDY[5].uid, attempt=1),
        instance_event(STUDY[5], 0, at("2025-04-20 14:57:30")),
        instance_event(STUDY[5], 1, at("2025-04-20 14:58:00")),
        t(
            "TransferQueued",
            ORG_B,
            "S1",
            at("2025-04-20 13:59:00"),
            StudyInstanceUID="1.2.3.9",
            instances=2,
            bytes=20,
            priority="emergency",
            pathology=False,
            full_import=False,
            destination="CAMI",
        ),
        t("TransferStarted", ORG_B, "S1", at("2025-04-20 14:00:00"), StudyInstanceUID="1.2.3.9", attempt=1),
        t(
            "TransferQueued",
            ORG_B,
            "X1",
            at("2025-04-20 14:10:00"),
            StudyInstanceUID="1.2.3.8",
            instances=1,
            bytes=5,
            priority="scheduled",
            pathology=False,
            full_import=False,
            destination="CAMI",
        ),
        t("TransferStarted", ORG_B, "X1", at("2025-04-20 14:11:00"), StudyInstanceUID="1.2.3.8", attempt=1),
        t(
            "TransferFailed",
            ORG_B,
            "X1",
            at("2025-04-20 14:12:00"),
            StudyInstanceUID="1.2.3.8",
            attempt=1,
            error="association refused",
            will_retry=True,
            instances_sent=0,
        ),
    ]
    # ORG_B's agent beat every 10 s until 14:59:30 (v2 fields); ORG_A's every 60 s until 14:55
    for n in range(6):
        events.append(
            heartbeat(
                ORG_B,
                "gkb-1",
                at("2025-04-20 14:58:40") + timedelta(seconds=10 * n),
                queue_depth=3,
                oldest_waiting_at=at("2025-04-20 14:10:00"),
                link_state="up",
                held=1,
                emergency_waiting=1,
            )
        )
    for n in range(4):
        events.append(heartbeat(ORG_A, "okb-1", at("2025-04-20 14:52:00") + timedelta(minutes=n)))
    return events


def project(warehouse: Warehouse, tmp_path: Path, events: list[Event]) -> None:
    log = open_log(tmp_path, events)
    try:
        EmbeddedRunner(log, [(Monitoring(), WarehouseSink(warehouse, Monitoring.ddl))]).catch_up()
    finally:
        log.close()


def test_the_snapshot_per_organisation_and_agent_with_its_alarms(warehouse: Warehouse, tmp_path: Path) -> None:
    project(warehouse, tmp_path, region())
    snapshot = dashboard_snapshot(warehouse, NOW)
    assert snapshot["today"] == at("2025-04-20 00:00:00")
    rows = {r["organisation"]: r for r in snapshot["organisations"]}
    assert set(rows) == {ORG_A, ORG_B}
    a, b = rows[ORG_A], rows[ORG_B]
    assert a["today"] == {"studies": 5, "instances": 5, "bytes": 5000, "rejections": 0}
    assert a["last_arrival"] == at("2025-04-20 11:00:00")
    assert b["today"]["instances"] == 2 and b["today"]["studies"] == 1
    assert b["incomplete_packages"] == 1  # study 5 lacks the birth date
    assert b["failures_last_hour"] == {"transfers": 1, "rejections": 0}
    assert b["queued_transfers"] == 1  # X1, back in the queue for a retry

    flight = {t["transfer_id"]: t for t in b["in_flight"]}
    assert set(flight) == {"F1", "S1"}
    assert flight["F1"]["instances_arrived"] == 2 and flight["F1"]["progress"] == 0.5
    assert flight["F1"]["last_activity"] == at("2025-04-20 14:58:00")
    assert flight["S1"]["instances_arrived"] == 0 and flight["S1"]["progress"] == 0

    emergency = b["emergency"]
    assert emergency["waiting"] == 1 and emergency["delivered_today"] == 1  # S1 waits, E1 delivered
    assert emergency["delivery_s"] == [90.0] and emergency["delivery_median_s"] == 90.0

    (agent_b,) = b["agents"]
    assert agent_b["agent_id"] == "gkb-1" and agent_b["link_state"] == "up" and agent_b["queue_depth"] == 3
    assert agent_b["oldest_waiting_at"] == at("2025-04-20 14:10:00")
    assert agent_b["held"] == 1 and agent_b["emergency_waiting"] == 1 and agent_b["usual_interval_s"] == 10
    assert agent_b["heartbeat_age_s"] == 30  # last beat 14:59:30, within 3 x 10 s
    (agent_a,) = a["agents"]
    assert agent_a["link_state"] == "" and agent_a["usual_interval_s"] == 60

    # A: quiet 4 h after studies every 30 min (allowed 2 h); its agent silent 5 min (allowed 3);
    # B: S1 in flight with no sign of life since 14:00 (allowed 10 min); F1 moved 2 min ago
    kinds = {(x["organisation"], x["kind"], x.get("agent_id"), x.get("transfer_id")) for x in snapshot["alarms"]}
    assert kinds == {
        (ORG_A, "agent-silent", "okb-1", None),
        (ORG_A, "silent-sender", None, None),
        (ORG_B, "stalled-transfer", None, "S1"),
    }
    assert [x["kind"] for x in a["alarms"]] == ["agent-silent", "silent-sender"]

    # B's agent beat last at 14:59:30: at 15:00:00 it is within 3 x 10 s, one second later not
    later = dashboard_snapshot(warehouse, NOW + timedelta(seconds=1))
    assert any(x["kind"] == "agent-silent" and x["organisation"] == ORG_B for x in later["alarms"])


def test_the_organisation_page_data(warehouse: Warehouse, tmp_path: Path) -> None:
    project(warehouse, tmp_path, region())
    page = organisation_page(warehouse, ORG_B, NOW)
    assert [m["instances"] for m in page["minutes"] if m["instances"]] == [1, 1]
    events = page["transfer_events"]
    assert len(events) == 10 and events[0]["event_type"] == "TransferStarted"  # F1 at 14:57, newest first
    assert events[-1]["transfer_id"] == "E1" and events[-1]["event_type"] == "TransferQueued"


def test_a_warehouse_from_before_heartbeat_v2_gains_its_columns(warehouse: Warehouse, tmp_path: Path) -> None:
    old = Monitoring.ddl[3]
    for column in ("oldest_waiting_at", "link_state", "held", "emergency_waiting"):
        old = "\n".join(line for line in old.splitlines() if not line.strip().startswith(column))
    last = "last_success_at Nullable(DateTime64(6, 'UTC'))"
    old = old.replace(last + ",", last)
    warehouse.command(old)
    names = [r[0] for r in warehouse.query(f"SELECT name FROM system.columns WHERE table = '{HEARTBEATS}'").rows]
    assert "link_state" not in names
    project(warehouse, tmp_path, region())
    names = [r[0] for r in warehouse.query(f"SELECT name FROM system.columns WHERE table = '{HEARTBEATS}'").rows]
    assert names[-4:] == ["oldest_waiting_at", "link_state", "held", "emergency_waiting"]
    (agent,) = dashboard_snapshot(warehouse, NOW)["organisations"][1]["agents"]
    assert agent["link_state"] == "up" and agent["held"] == 1
