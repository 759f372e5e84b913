"""Reading HL7 v2 fields into DICOM-shaped values: safe accessors over the ``hl7`` library's
parse tree, names (XPN/XCN -> PN), dates and timestamps (TS/DTM -> DA and aware datetimes),
sex, priority. Pure functions; a value that cannot be read raises :class:`MessageRefused` (AE)
naming the field."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone, tzinfo

import hl7

from ingest.hl7.wire import DATA_TYPE_ERROR, MessageRefused

#: HL7's "explicitly empty" value
_NULL = '""'
_TIMESTAMP = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.(\d{1,4}))?([+-]\d{4})?$")


def value(segment: hl7.Segment | None, field: int, component: int = 1, sub: int = 1, repetition: int = 1) -> str:
    """The unescaped text at SEG-field.component.sub of a repetition; "" when absent."""
    if segment is None:
        return ""
    try:
        text = segment.extract_field(1, field, repetition, component, sub)
    except (IndexError, KeyError, TypeError):
        return ""
    text = str(text).strip()
    return "" if text == _NULL else text


def repetitions(segment: hl7.Segment | None, field: int) -> int:
    if segment is None or field >= len(segment):
        return 0
    return len(segment(field)) if isinstance(segment(field), hl7.Field) else 1


def segments(message: hl7.Message, name: str) -> list[hl7.Segment]:
    return [s for s in message if str(s[0][0]) == name]


def first(message: hl7.Message, name: str) -> hl7.Segment | None:
    found = segments(message, name)
    return found[0] if found else None


def person_name(segment: hl7.Segment | None, field: int, *, offset: int = 0, repetition: int = 1) -> str | None:
    """XPN (``offset`` 0) or XCN (``offset`` 1: the id comes first) -> DICOM PN
    ``Family^Given^Middle^Prefix^Suffix``, trailing empty components dropped."""
    family = value(segment, field, 1 + offset, 1, repetition)
    given = value(segment, field, 2 + offset, 1, repetition)
    middle = value(segment, field, 3 + offset, 1, repetition)
    suffix = value(segment, field, 4 + offset, 1, repetition)
    prefix = value(segment, field, 5 + offset, 1, repetition)
    parts = [family, given, middle, prefix, suffix]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts) or None


def birth_date(segment: hl7.Segment | None, field: int, where: str) -> str | None:
    """TS/DT -> DA (YYYYMMDD); a date that is not a calendar date is refused."""
    raw = value(segment, field)
    if not raw:
        return None
    digits = raw[:8]
    try:
        if len(digits) != 8 or not digits.isdigit():
            raise ValueError(raw)
        date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        raise MessageRefused(
            "AE", DATA_TYPE_ERROR, "invalid-date", f"{where} {raw!r} is not a date (YYYYMMDD)", where
        ) from None
    return digits


def timestamp(segment: hl7.Segment | None, field: int, zone: tzinfo, where: str, component: int = 1) -> datetime | None:
    """TS/DTM -> an aware datetime; without an offset it is the region's local time (``zone``)."""
    raw = value(segment, field, component)
    if not raw:
        return None
    match = _TIMESTAMP.match(raw)
    if match is None:
        raise MessageRefused("AE", DATA_TYPE_ERROR, "invalid-timestamp", f"{where} {raw!r} is not a timestamp", where)
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year),
            int(month or 1),
            int(day or 1),
            int(hour or 0),
            int(minute or 0),
            int(second or 0),
            int((fraction or "0").ljust(6, "0")[:6]),
        )
    except ValueError:
        raise MessageRefused(
            "AE", DATA_TYPE_ERROR, "invalid-timestamp", f"{where} {raw!r} is not a valid time", where
        ) from None
    if offset:
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
        return moment.replace(tzinfo=timezone(sign * delta))
    return moment.replace(tzinfo=zone)


def sex(segment: hl7.Segment | None, field: int) -> str | None:
    """HL7 table 0001 -> DICOM (M, F, O); unknown and empty say nothing."""
    code = value(segment, field).upper()[:1]
    return {"M": "M", "F": "F", "O": "O", "A": "O", "N": "O"}.get(code)


def priority(code: str) -> str:
    """HL7 table 0027 (S stat, A asap, R routine...) -> the order's priority."""
    return {"S": "STAT", "A": "URGENT", "P": "URGENT", "C": "URGENT"}.get(code.upper()[:1], "ROUTINE")
