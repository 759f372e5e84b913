"""The regional dashboard's alarms as pure functions of the moments they are given."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from projections.monitoring.dashboard import (
    HEARTBEAT_FLOOR,
    SILENT_FLOOR,
    STALLED_AFTER,
    agent_silent,
    silent_sender,
    stalled_transfer,
    usual_gap,
)

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
ORG = "1.2.643.5.1.13.13.12.2.50.1001"


def every(step: timedelta, n: int) -> list[datetime]:
    return [T0 + i * step for i in range(n)]


def test_usual_gap_is_the_median_of_consecutive_gaps_in_any_order() -> None:
    moments = [T0 + timedelta(minutes=m) for m in (30, 0, 10, 20, 95)]
    assert usual_gap(moments) == timedelta(minutes=10)
    assert usual_gap([T0]) is None and usual_gap([]) is None


def test_a_sender_quiet_for_longer_than_four_usual_gaps_raises_the_alarm() -> None:
    starts = every(timedelta(minutes=30), 6)  # a study every half hour
    last = starts[-1] + timedelta(minutes=5)
    assert silent_sender(ORG, starts, last, last + timedelta(minutes=119)) is None
    alarm = silent_sender(ORG, starts, last, last + timedelta(minutes=121))
    assert alarm is not None
    assert alarm["kind"] == "silent-sender" and alarm["organisation"] == ORG and alarm["since"] == last
    assert alarm["usual_gap_s"] == 1800 and alarm["allowed_s"] == 7200 and alarm["quiet_s"] == 121 * 60


def test_a_busy_sender_gets_the_floor_and_a_rare_one_no_alarm() -> None:
    busy = every(timedelta(seconds=20), 10)
    assert silent_sender(ORG, busy, busy[-1], busy[-1] + SILENT_FLOOR) is None
    assert silent_sender(ORG, busy, busy[-1], busy[-1] + SILENT_FLOOR + timedelta(seconds=1)) is not None
    rare = every(timedelta(hours=1), 2)  # two studies: it does not "usually send" yet
    assert silent_sender(ORG, rare, rare[-1], rare[-1] + timedelta(days=3)) is None
    assert silent_sender(ORG, busy, None, T0 + timedelta(days=3)) is None


def test_an_agent_that_missed_three_heartbeats_raises_the_alarm() -> None:
    beats = every(timedelta(seconds=10), 8)
    assert agent_silent(ORG, "okb-1", beats, beats[-1] + timedelta(seconds=30)) is None
    alarm = agent_silent(ORG, "okb-1", beats, beats[-1] + timedelta(seconds=31))
    assert alarm is not None and alarm["kind"] == "agent-silent" and alarm["agent_id"] == "okb-1"
    assert alarm["usual_gap_s"] == 10 and alarm["allowed_s"] == 30
    fast = every(timedelta(seconds=1), 5)  # 3 x 1 s is below the floor
    assert agent_silent(ORG, "okb-1", fast, fast[-1] + HEARTBEAT_FLOOR) is None
    assert agent_silent(ORG, "okb-1", [T0], T0 + timedelta(days=1)) is None  # its interval is unknown


def test_a_transfer_without_sign_of_life_is_stalled() -> None:
    transfer = {"organisation": ORG, "transfer_id": "T1", "last_activity": T0}
    assert stalled_transfer(transfer, T0 + STALLED_AFTER) is None
    alarm = stalled_transfer(transfer, T0 + STALLED_AFTER + timedelta(seconds=1))
    assert alarm is not None and alarm["kind"] == "stalled-transfer" and alarm["transfer_id"] == "T1"
