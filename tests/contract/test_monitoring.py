"""Monitoring on both warehouse backends (chdb and clickhouse-connect over HTTP).

The region of ``tests/unit/test_monitoring_analytics.py`` (three organisations, five AE titles,
stored and refused objects, an unknown caller, incomplete packages, reports drafted/signed/amended,
transfers in every state including a failed attempt that was retried, heartbeats, a patient merge)
goes through the real embedded log and :class:`EmbeddedRunner` into a :class:`WarehouseSink`.
Redelivery (another consumer group, another batch size, merges stopped so the duplicates are really
in the tables) and a rebuild must leave exactly the same rows, and the dashboards' query functions
must return the figures worked out by hand below, duplicates or not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from projections.monitoring.fold import Monitoring
from projections.monitoring.queries import (
    organisation_summary,
    per_minute,
    stalled_senders,
    transfer_requests,
    transfer_states,
)
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Actor, Event, new_event
from streams.processing import EmbeddedRunner
from tests.support.projections import Redelivery, check_redelivery_and_rebuild, open_log
from tests.support.scenarios import (
    ORG_A,
    ORG_B,
    ORG_C,
    P1,
    Study,
    at,
    instance_event,
    report_event,
    scenario,
)
from tests.support.warehouses import WarehouseTarget

MONITORING_COUNTS = {
    # 14 objects of 7 studies + study 3's version 2, 3 refused objects, 1 refused association
    "monitoring_arrivals": 15 + 3 + 1,
    "monitoring_reports": 4,  # signatures only
    "monitoring_transfers": 14,
    "monitoring_heartbeats": 3,
    "monitoring_transfer_requests": 0,  # see test_transfer_requests_in_log_order_per_organisation
}

NOW = at("2025-04-20 15:00:00")


def _summary(org: str, **figures: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "organisation": org,
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
    }
    return row | figures


def check_monitoring_figures(warehouse: Warehouse) -> None:
    # Organisation A: studies 1 (3 x 1000 B), 2 (2 x 2000 B, lacks the doctor's code), 3 (500 B,
    # lacks the procedure code, re-sent complete as version 2 of 600 B), 7 (800 B).
    # Arrivals count objects received: 3 + 2 + 2 + 1 = 8, 3000 + 4000 + 1100 + 800 = 8900 B.
    # Incomplete objects: study 2's two and study 3's first; incomplete package: study 2 only.
    # Signed: 1 (10:00 -> 10:30, 1800 s) and 2 (09:00 -> 11:00, 7200 s); awaiting: 3 and 7.
    # The median is interpolated (quantileExactInclusive): (1800 + 7200) / 2 = 4500 s.
    org_a = _summary(
        ORG_A,
        instances=8,
        bytes=8900,
        studies=4,
        rejections=2,
        rejections_by_reason={"missing-patient-id": 2},
        incomplete_instances=3,
        incomplete_packages=1,
        awaiting_report=2,
        reports_signed=2,
        turnaround_median_s=4500,  # the interpolated median of 1800 s and 7200 s
        turnaround_max_s=7200,
        last_seen=at("2025-04-10 09:01:00"),  # the second refused object
    )
    # B: study 4 (2 x 300 B, signed after 600 s), study 5 (100 B, lacks the birth date, unsigned)
    org_b = _summary(
        ORG_B,
        instances=3,
        bytes=700,
        studies=2,
        rejections=1,
        rejections_by_reason={"invalid-uid": 1},
        incomplete_instances=1,
        incomplete_packages=1,
        awaiting_report=1,
        reports_signed=1,
        turnaround_median_s=600,
        turnaround_max_s=600,
        last_seen=at("2025-04-20 14:30:00"),
    )
    # C: study 6, 4 x 5000 B at 07:00:00, :20, 07:01:25 (the third object is 45 s late), 07:01:00
    org_c = _summary(
        ORG_C,
        instances=4,
        bytes=20000,
        studies=1,
        reports_signed=1,
        turnaround_median_s=2400,
        turnaround_max_s=2400,
        last_seen=at("2025-03-20 07:01:25"),
    )
    # the unknown caller has no organisation: its refusal is counted under ""
    unknown = _summary(
        "", rejections=1, rejections_by_reason={"unknown-caller": 1}, last_seen=at("2025-04-20 14:45:00")
    )
    assert organisation_summary(warehouse, at("2025-01-01 00:00:00")) == [unknown, org_a, org_b, org_c]

    # since April: A has only study 3 (both versions; complete now, unsigned) and the two refusals;
    # B has study 5 and its refusal; C nothing at all; no signature falls into the window
    assert organisation_summary(warehouse, at("2025-04-01 00:00:00")) == [
        unknown,
        _summary(
            ORG_A,
            instances=2,
            bytes=1100,
            studies=1,
            rejections=2,
            rejections_by_reason={"missing-patient-id": 2},
            incomplete_instances=1,
            awaiting_report=1,
            last_seen=at("2025-04-10 09:01:00"),
        ),
        _summary(
            ORG_B,
            instances=1,
            bytes=100,
            studies=1,
            rejections=1,
            rejections_by_reason={"invalid-uid": 1},
            incomplete_instances=1,
            incomplete_packages=1,
            awaiting_report=1,
            last_seen=at("2025-04-20 14:30:00"),
        ),
    ]

    def minute(when: str, **figures: Any) -> dict[str, Any]:
        transfers = dict.fromkeys(("queued", "in-flight", "done", "failed"), 0) | figures.pop("transfers", {})
        return {
            "minute": at(when),
            "instances": 0,
            "bytes": 0,
            "studies": 0,
            "rejections": 0,
            "rejections_by_reason": {},
            "incomplete_instances": 0,
            "reports_signed": 0,
            "turnaround_avg_s": None,
            "transfers": transfers,
        } | figures

    # B minute by minute: T3 queued, started, failed for good; study 4's two objects in one minute;
    # its signature ten minutes later; T4 queued; study 5; the refused object
    assert per_minute(warehouse, ORG_B, at("2025-03-01 00:00:00")) == [
        minute("2025-03-05 11:50:00", transfers={"queued": 1}),
        minute("2025-03-05 11:51:00", transfers={"in-flight": 1}),
        minute("2025-03-05 11:52:00", transfers={"failed": 1}),
        minute("2025-03-05 12:00:00", instances=2, bytes=600, studies=1),
        minute("2025-03-05 12:10:00", reports_signed=1, turnaround_avg_s=600.0),
        minute("2025-04-20 13:00:00", transfers={"queued": 1}),
        minute("2025-04-20 14:00:00", instances=1, bytes=100, studies=1, incomplete_instances=1),
        minute("2025-04-20 14:30:00", rejections=1, rejections_by_reason={"invalid-uid": 1}),
    ]
    # A in April: T2 queued and started at 07:59, its first attempt fails (back to queued) at 08:00
    # when study 3 arrives incomplete, second attempt 08:03, version 2 at 08:05, done at 08:06
    assert per_minute(warehouse, ORG_A, at("2025-04-01 00:00:00")) == [
        minute("2025-04-02 07:59:00", transfers={"queued": 1, "in-flight": 1}),
        minute(
            "2025-04-02 08:00:00", instances=1, bytes=500, studies=1, incomplete_instances=1, transfers={"queued": 1}
        ),
        minute("2025-04-02 08:03:00", transfers={"in-flight": 1}),
        minute("2025-04-02 08:05:00", instances=1, bytes=600, studies=1),
        minute("2025-04-02 08:06:00", transfers={"done": 1}),
        minute("2025-04-10 09:00:00", rejections=1, rejections_by_reason={"missing-patient-id": 1}),
        minute("2025-04-10 09:01:00", rejections=1, rejections_by_reason={"missing-patient-id": 1}),
    ]

    # silent for a day at 15:00 on 20 April: cutoff 19 April 15:00; OKB_PACS was last seen
    # refusing objects (10 April) but last stored one on 15 March (study 7)
    silent_day = [
        ("ONKO_PACS", ORG_C, at("2025-03-20 07:01:25"), at("2025-03-20 07:01:25"), 4),
        ("OKB_CT2", ORG_A, at("2025-04-02 08:05:00"), at("2025-04-02 08:05:00"), 2),
        ("OKB_PACS", ORG_A, at("2025-04-10 09:01:00"), at("2025-03-15 11:00:00"), 6),
    ]
    rows = stalled_senders(warehouse, timedelta(days=1), now=NOW)
    assert [(r["ae_title"], r["organisation"], r["last_seen"], r["last_stored"], r["instances"]) for r in rows] == (
        silent_day
    )
    # cutoff 14:40: GKB2_PACS (refused at 14:30) joins; ROGUE_AE (14:45) is not silent yet
    rows = stalled_senders(warehouse, timedelta(minutes=20), now=NOW)
    assert [(r["ae_title"], r["last_stored"], r["instances"]) for r in rows] == [
        *[(s[0], s[3], s[4]) for s in silent_day],
        ("GKB2_PACS", at("2025-04-20 14:00:00"), 3),
    ]
    # cutoff 14:50: the unknown caller never got an object accepted
    rows = stalled_senders(warehouse, timedelta(minutes=10), now=NOW)
    assert [(r["ae_title"], r["organisation"], r["last_stored"], r["instances"]) for r in rows][-1] == (
        "ROGUE_AE",
        "",
        None,
        0,
    )
    assert len(rows) == 5

    # T1 and T2 done at A (T2 after a retried failure: 3 attempts, 1 failed); at B T3 failed for
    # good and T4 waits; at C T5 is in flight; A's agent drained its queue, B's never succeeded
    agent = {"in_flight": 0, "link_kbps": 256.0}
    assert transfer_states(warehouse) == [
        {
            "organisation": ORG_A,
            "queued": 0,
            "in-flight": 0,
            "done": 2,
            "failed": 0,
            "attempts": 3,
            "failed_attempts": 1,
            "agents": [
                {
                    "agent_id": "okb-agent",
                    "last_heartbeat": at("2025-04-02 08:10:00"),
                    "queue_depth": 0,
                    "queue_bytes": 0,
                    "last_success_at": at("2025-04-02 08:06:00"),
                    **agent,
                }
            ],
        },
        {
            "organisation": ORG_B,
            "queued": 1,
            "in-flight": 0,
            "done": 0,
            "failed": 1,
            "attempts": 1,
            "failed_attempts": 1,
            "agents": [
                {
                    "agent_id": "gkb-agent",
                    "last_heartbeat": at("2025-04-20 13:05:00"),
                    "queue_depth": 1,
                    "queue_bytes": 100,
                    "last_success_at": None,
                    **agent,
                }
            ],
        },
        {
            "organisation": ORG_C,
            "queued": 0,
            "in-flight": 1,
            "done": 0,
            "failed": 0,
            "attempts": 1,
            "failed_attempts": 0,
            "agents": [],
        },
    ]


def test_monitoring_redelivery_rebuild_and_figures(warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    warehouse = warehouse_target.open()
    log = open_log(tmp_path, scenario())
    try:
        check_redelivery_and_rebuild(
            warehouse,
            log,
            Monitoring,
            Monitoring.ddl,
            Monitoring.tables,
            Monitoring.tables,
            MONITORING_COUNTS,
            check_monitoring_figures,
        )
    finally:
        log.close()


def test_a_window_after_everything_is_empty(warehouse: Warehouse, tmp_path: Path) -> None:
    log = open_log(tmp_path, scenario())
    try:
        EmbeddedRunner(log, [(Monitoring(), WarehouseSink(warehouse, Monitoring.ddl))]).catch_up()
    finally:
        log.close()
    later = datetime(2026, 1, 1, tzinfo=UTC)
    assert organisation_summary(warehouse, later) == []
    assert per_minute(warehouse, ORG_A, later) == []
    assert per_minute(warehouse, "no-such-organisation", at("2025-01-01 00:00:00")) == []
    assert stalled_senders(warehouse, timedelta(days=3650), now=NOW) == []


def test_turnaround_counts_for_the_organisation_that_sent_the_first_object(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """A study two organisations sent: the clock starts with the first object, and the report's
    turnaround is that sender's (the later sender's objects do not restart it)."""
    first = Study(40, ORG_B, "GKB2_PACS", "CT", P1, 1, 100, "2025-05-05 10:00:00")
    second = Study(40, ORG_A, "OKB_PACS", "CT", P1, 1, 100, "2025-05-05 10:05:00")
    events = [
        instance_event(second, 1, at(second.first)),
        instance_event(first, 0, at(first.first)),
        report_event("ReportSigned", second, at("2025-05-05 10:30:00")),
    ]
    log = open_log(tmp_path, events)
    try:
        EmbeddedRunner(log, [(Monitoring(), WarehouseSink(warehouse, Monitoring.ddl))]).catch_up()
    finally:
        log.close()
    summary = {row["organisation"]: row for row in organisation_summary(warehouse, at("2025-05-01 00:00:00"))}
    assert (summary[ORG_B]["reports_signed"], summary[ORG_B]["turnaround_max_s"]) == (1, 1800)
    assert (summary[ORG_A]["reports_signed"], summary[ORG_A]["turnaround_max_s"]) == (0, None)


def _requested(organisation: str, moment: datetime, **payload: Any) -> Event:
    return new_event(
        "TransferRequested",
        {"request_id": f"R-{moment:%H%M}", "organisation": organisation, **payload},
        aggregate_id=organisation,
        source_node="http:test",
        organisation=organisation,
        actor=Actor("admin", "administrator"),
        occurred_at=moment,
    )


def test_transfer_requests_in_log_order_per_organisation(warehouse: Warehouse, tmp_path: Path) -> None:
    events = [
        _requested(ORG_A, at("2025-04-01 10:00:00"), StudyInstanceUID="1.2.3.4", urgent=True, reason="консилиум"),
        _requested(ORG_B, at("2025-04-01 10:01:00"), PatientID="P-B"),
        _requested(ORG_A, at("2025-04-01 10:02:00"), PatientID="P-A"),
    ]
    log = open_log(tmp_path, events)
    try:
        sink = WarehouseSink(warehouse, Monitoring.ddl)
        EmbeddedRunner(log, [(Monitoring(), sink)]).catch_up()
        # delivered again under another group: the rows collapse, nothing is listed twice
        EmbeddedRunner(log, [(Redelivery(Monitoring(), "again"), sink)], batch_size=1).catch_up()
    finally:
        log.close()
    mine = transfer_requests(warehouse, ORG_A)
    assert [r["request_id"] for r in mine] == ["R-1000", "R-1002"]
    first, second = mine
    assert (first["StudyInstanceUID"], first["PatientID"], first["urgent"], first["reason"]) == (
        "1.2.3.4",
        None,
        True,
        "консилиум",
    )
    assert (second["StudyInstanceUID"], second["PatientID"], second["urgent"]) == (None, "P-A", False)
    assert first["requested_by"] == "admin" and first["requested_at"] == at("2025-04-01 10:00:00")
    # the offset is the agent's cursor: after the first, only the second
    assert [r["request_id"] for r in transfer_requests(warehouse, ORG_A, first["offset"])] == ["R-1002"]
    assert transfer_requests(warehouse, ORG_A, second["offset"]) == []
    assert {r["request_id"] for r in transfer_requests(warehouse)} == {"R-1000", "R-1001", "R-1002"}
    assert [r["PatientID"] for r in transfer_requests(warehouse, ORG_B)] == ["P-B"]
