"""Transfer windows: when the agent may send scheduled studies (emergencies go at any time).

A window is written ``DAYS START-END``:

- ``DAYS``: ``daily``, a day (``mon`` ... ``sun``), a range (``mon-fri``, ``sat-mon`` wraps the
  week) or a comma list of both (``mon,wed-fri``);
- ``START``/``END``: ``HH:MM`` or ``HH:MM:SS`` in the agent machine's local time; ``END`` may be
  ``24:00`` (to midnight). The start is included, the end is not.

A window whose end is not after its start crosses midnight and belongs to the weekday it *starts*
on: ``mon-fri 20:00-07:00`` is open from Monday 20:00 to Tuesday 07:00, ..., from Friday 20:00
to Saturday 07:00, and not on Monday 00:00-07:00. No windows at all: always open.

Pure functions: ``now`` is an aware datetime, turned into local time with ``.astimezone()``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta


@dataclass(frozen=True)
class Window:
    """Transfer window: on these weekdays (0 = Monday), from ``start`` to ``end`` (may cross midnight)."""

    weekdays: frozenset[int]
    start: time
    end: time
    #: True when end is 24:00 (the whole rest of the day)
    until_midnight: bool = False


DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")


def parse_window(text: str) -> Window:
    """``"mon-fri 20:00-07:00"`` -> :class:`Window`; ValueError saying what is wrong."""
    parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"transfer window {text!r}: expected 'DAYS HH:MM-HH:MM', e.g. 'mon-fri 20:00-07:00'")
    weekdays = _parse_days(parts[0], text)
    bounds = parts[1].split("-")
    if len(bounds) != 2:
        raise ValueError(f"transfer window {text!r}: the times must be START-END, e.g. 20:00-07:00")
    start, start_is_24 = _parse_time(bounds[0], text)
    end, until_midnight = _parse_time(bounds[1], text)
    if start_is_24:
        raise ValueError(f"transfer window {text!r}: a window cannot start at 24:00 (write 00:00)")
    if not until_midnight and end == start:
        raise ValueError(f"transfer window {text!r}: start and end are equal (for a whole day write 00:00-24:00)")
    return Window(weekdays=weekdays, start=start, end=end, until_midnight=until_midnight)


def _parse_days(spec: str, text: str) -> frozenset[int]:
    spec = spec.lower()
    if spec in ("daily", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in spec.split(","):
        ends = part.split("-")
        if len(ends) > 2 or not all(end in DAYS for end in ends):
            raise ValueError(
                f"transfer window {text!r}: {part!r} is not a day or a range of days (mon, tue, ..., sun, daily)"
            )
        first, last = DAYS.index(ends[0]), DAYS.index(ends[-1])
        span = (last - first) % 7
        days.update((first + n) % 7 for n in range(span + 1))
    return frozenset(days)


def _parse_time(value: str, text: str) -> tuple[time, bool]:
    """The time and whether it was ``24:00`` (midnight at the end of the day)."""
    match = _TIME.match(value)
    if match is None:
        raise ValueError(f"transfer window {text!r}: {value!r} is not a time HH:MM or HH:MM:SS")
    hours, minutes, seconds = int(match[1]), int(match[2]), int(match[3] or 0)
    if (hours, minutes, seconds) == (24, 0, 0):
        return time(0, 0), True
    if hours > 23 or minutes > 59 or seconds > 59:
        raise ValueError(f"transfer window {text!r}: {value!r} is not a time of day (00:00 to 24:00)")
    return time(hours, minutes, seconds), False


def _crosses_midnight(window: Window) -> bool:
    return not window.until_midnight and window.end <= window.start


def _open_in(window: Window, local: datetime) -> bool:
    moment = local.time().replace(tzinfo=None)
    weekday = local.weekday()
    if window.until_midnight:
        return weekday in window.weekdays and moment >= window.start
    if not _crosses_midnight(window):
        return weekday in window.weekdays and window.start <= moment < window.end
    # from the start to midnight on its own day, then to the end on the next day
    started_today = weekday in window.weekdays and moment >= window.start
    started_yesterday = (weekday - 1) % 7 in window.weekdays and moment < window.end
    return started_today or started_yesterday


def is_open(windows: Sequence[Window], now: datetime) -> bool:
    """Whether scheduled transfers may go at ``now`` (no windows: always)."""
    if not windows:
        return True
    local = now.astimezone()
    return any(_open_in(window, local) for window in windows)


def next_opening(windows: Sequence[Window], now: datetime) -> datetime | None:
    """The first moment at or after ``now`` when a window is open: ``now`` itself when one is open
    (or there are none); None only when no window names any day. In ``now``'s time zone."""
    if is_open(windows, now):
        return now
    local = now.astimezone()
    today: date = local.date()
    best: datetime | None = None
    for offset in range(8):
        day = today + timedelta(days=offset)
        for window in windows:
            if day.weekday() not in window.weekdays:
                continue
            # a naive local wall time made aware in the machine's zone
            opening = datetime.combine(day, window.start).astimezone()
            if opening > local and (best is None or opening < best):
                best = opening
        if best is not None:
            break
    return None if best is None else best.astimezone(now.tzinfo)
