"""Transfer windows (pure): parsing, open or closed at a moment, the next opening."""

from __future__ import annotations

import time as systime
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta

import pytest

from ingest.agent.schedule import Window, is_open, next_opening, parse_window


def local(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    """An aware datetime at this wall time in the machine's zone (what the schedule reads)."""
    return datetime(year, month, day, hour, minute, second).astimezone()


# 2026-03-02 is a Monday; March has no DST change in most zones before the 29th
MON, TUE, FRI, SAT, SUN = 2, 3, 6, 7, 8


@pytest.fixture
def moscow(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's zone set to Europe/Moscow (UTC+3 all year, no DST)."""
    monkeypatch.setenv("TZ", "Europe/Moscow")
    systime.tzset()
    yield
    monkeypatch.undo()
    systime.tzset()


def test_parse_days_ranges_lists_daily_and_seconds() -> None:
    assert parse_window("mon-fri 20:00-07:00") == Window(frozenset(range(5)), time(20), time(7))
    weekend = parse_window("sat,sun 00:00-24:00")
    assert weekend.weekdays == frozenset({5, 6}) and weekend.until_midnight and weekend.start == time(0)
    assert parse_window("daily 20:00:30-07:00:15") == Window(frozenset(range(7)), time(20, 0, 30), time(7, 0, 15))
    assert parse_window("sat-mon 01:00-02:00").weekdays == frozenset({5, 6, 0})  # wraps the week
    assert parse_window("MON,wed-fri 9:00-10:00").weekdays == frozenset({0, 2, 3, 4})


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("mon-fri", "expected 'DAYS HH:MM-HH:MM'"),
        ("monday 20:00-07:00", "'monday' is not a day"),
        ("mon 25:00-07:00", "'25:00' is not a time of day"),
        ("mon 20:00-07:60", "'07:60' is not a time of day"),
        ("mon 20-07", "'20' is not a time"),
        ("mon 08:00-08:00", "start and end are equal"),
        ("mon 24:00-08:00", "cannot start at 24:00"),
        ("mon 08:00", "START-END"),
    ],
)
def test_bad_windows_are_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_window(text)


def test_no_windows_means_always_open() -> None:
    now = local(2026, 3, MON, 12)
    assert is_open([], now)
    assert next_opening([], now) == now


def test_a_window_crossing_midnight_belongs_to_the_day_it_starts_on() -> None:
    nights = [parse_window("mon-fri 20:00-07:00")]
    assert not is_open(nights, local(2026, 3, MON, 6, 59))  # Sunday night's window does not exist
    assert not is_open(nights, local(2026, 3, MON, 19, 59, 59))
    assert is_open(nights, local(2026, 3, MON, 20))  # the start is included
    assert is_open(nights, local(2026, 3, MON, 23, 59, 59))
    assert is_open(nights, local(2026, 3, TUE, 0))
    assert is_open(nights, local(2026, 3, TUE, 6, 59, 59))
    assert not is_open(nights, local(2026, 3, TUE, 7))  # the end is not
    assert is_open(nights, local(2026, 3, SAT, 3))  # Friday's night runs into Saturday
    assert not is_open(nights, local(2026, 3, SAT, 21))


def test_seconds_and_until_midnight() -> None:
    windows = [parse_window("daily 12:00:30-12:00:45"), parse_window("sat,sun 00:00-24:00")]
    assert not is_open(windows, local(2026, 3, MON, 12, 0, 29))
    assert is_open(windows, local(2026, 3, MON, 12, 0, 30))
    assert not is_open(windows, local(2026, 3, MON, 12, 0, 45))
    assert is_open(windows, local(2026, 3, SAT, 0))
    assert is_open(windows, local(2026, 3, SUN, 23, 59, 59))
    assert not is_open(windows, local(2026, 3, MON + 7, 0, 0, 1))  # Sunday's 24:00 ends at Monday 00:00
    evening = [parse_window("fri 22:00-24:00")]
    assert is_open(evening, local(2026, 3, FRI, 23, 59, 59)) and not is_open(evening, local(2026, 3, SAT, 0))


def test_next_opening() -> None:
    nights = [parse_window("mon-fri 20:00-07:00")]
    morning = local(2026, 3, TUE, 9)
    assert next_opening(nights, morning) == local(2026, 3, TUE, 20)
    inside = local(2026, 3, TUE, 21)
    assert next_opening(nights, inside) == inside  # open now: now
    weekend = local(2026, 3, SAT, 8)
    assert next_opening(nights, weekend) == local(2026, 3, MON + 7, 20)  # over the weekend
    # the earliest of several windows, to the second
    several = [parse_window("wed 10:00:05-11:00"), parse_window("tue 23:30-01:00")]
    assert next_opening(several, morning) == local(2026, 3, TUE, 23, 30)
    assert next_opening(several, local(2026, 3, TUE, 23, 29, 59)) == local(2026, 3, TUE, 23, 30)
    assert next_opening(several, local(2026, 3, 4, 1, 0, 0)) == local(2026, 3, 4, 10, 0, 5)
    assert next_opening([Window(frozenset(), time(1), time(2))], morning) is None  # no day: never


def test_the_schedule_reads_the_machines_local_time(moscow: None) -> None:
    nights = [parse_window("mon-fri 20:00-07:00")]
    # 17:30 UTC on a Monday is 20:30 in Moscow: open there, although 17:30 is outside the window
    assert is_open(nights, datetime(2026, 3, MON, 17, 30, tzinfo=UTC))
    assert not is_open(nights, datetime(2026, 3, MON, 16, 30, tzinfo=UTC))
    opening = next_opening(nights, datetime(2026, 3, MON, 12, 0, tzinfo=UTC))
    assert opening == datetime(2026, 3, MON, 17, 0, tzinfo=UTC)
    assert opening is not None and opening.utcoffset() == timedelta(0)  # in the caller's zone
