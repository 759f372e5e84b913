"""DICOM matching values, parsed and checked before any query runs (PS3.4 C.2.2.2, PS3.18 8.3.4).

Pure: text in, a :data:`Condition` out, or :class:`MatchingError` naming the attribute. The query
layer (:mod:`projections.query_model.find`) turns conditions into SQL with named parameters;
QIDO-RS (:mod:`api.http.qido`) and C-FIND (:mod:`api.dicom.find`) both parse through here, so the two
channels match the same way.

=================  ===================================================================================
matching           value
=================  ===================================================================================
universal          empty, or ``*`` alone: every record matches (the attribute is only returned)
single value       ``CT``: equal, case-sensitive
wildcard           ``Ив*``, ``CT?``: ``*`` any run, ``?`` one character; every other character is
                   literal. Person names (PN: PatientName, ReferringPhysicianName) match
                   case-insensitively, as most archives do; everything else is case-sensitive
list               several values (``\\`` in DICOM, ``,`` or a repeated parameter in QIDO-RS):
                   any of them; UIDs match by list only (no wildcards in UIDs, PS3.4 C.2.2.2.2)
date range (DA)    ``20260101-20260131``, ``-20260131``, ``20260101-``, or one date
time range (TM)    ``0800-1230``, ``-1200``, ``1200-``, or one time; ``HH[MM[SS[.F{1,6}]]]``; a
                   bound names its whole span: ``-12`` includes 12:59:59.999999
integer (IS)       one number or a list
=================  ===================================================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

from schemas.uids import is_uid

#: at most this many values in one list (a guard; real lists are a few UIDs or modalities)
MAX_LIST = 1000
#: a matching value longer than this is refused (DICOM values are at most 1024 characters, UT aside)
MAX_VALUE = 1024


class MatchingError(ValueError):
    """A matching value that does not parse; ``attribute`` is the keyword (or parameter) at fault.
    The message says what is wrong with it without repeating the value (it may be patient data)."""

    def __init__(self, attribute: str, message: str) -> None:
        super().__init__(f"{attribute}: {message}")
        self.attribute = attribute
        self.message = message


@dataclass(frozen=True)
class Attribute:
    keyword: str
    tag: int
    vr: str
    #: PATIENT, STUDY, SERIES or IMAGE: the level whose records carry it
    level: str
    #: may it be a matching key (the counts are return keys only)
    matchable: bool = True


def _attributes(*specs: tuple[str, int, str, str, bool]) -> dict[str, Attribute]:
    return {s[0]: Attribute(*s) for s in specs}


#: every attribute the archive can match on or return, by keyword
ATTRIBUTES: dict[str, Attribute] = _attributes(
    ("PatientName", 0x00100010, "PN", "PATIENT", True),
    ("PatientID", 0x00100020, "LO", "PATIENT", True),
    ("IssuerOfPatientID", 0x00100021, "LO", "PATIENT", True),
    ("PatientBirthDate", 0x00100030, "DA", "PATIENT", True),
    ("PatientSex", 0x00100040, "CS", "PATIENT", True),
    ("NumberOfPatientRelatedStudies", 0x00201200, "IS", "PATIENT", False),
    ("NumberOfPatientRelatedSeries", 0x00201202, "IS", "PATIENT", False),
    ("NumberOfPatientRelatedInstances", 0x00201204, "IS", "PATIENT", False),
    ("StudyInstanceUID", 0x0020000D, "UI", "STUDY", True),
    ("StudyDate", 0x00080020, "DA", "STUDY", True),
    ("StudyTime", 0x00080030, "TM", "STUDY", True),
    ("AccessionNumber", 0x00080050, "SH", "STUDY", True),
    ("StudyID", 0x00200010, "SH", "STUDY", True),
    ("StudyDescription", 0x00081030, "LO", "STUDY", True),
    ("ReferringPhysicianName", 0x00080090, "PN", "STUDY", True),
    ("ModalitiesInStudy", 0x00080061, "CS", "STUDY", True),
    ("NumberOfStudyRelatedSeries", 0x00201206, "IS", "STUDY", False),
    ("NumberOfStudyRelatedInstances", 0x00201208, "IS", "STUDY", False),
    ("SeriesInstanceUID", 0x0020000E, "UI", "SERIES", True),
    ("Modality", 0x00080060, "CS", "SERIES", True),
    ("SeriesNumber", 0x00200011, "IS", "SERIES", True),
    ("SeriesDescription", 0x0008103E, "LO", "SERIES", True),
    ("BodyPartExamined", 0x00180015, "CS", "SERIES", True),
    ("NumberOfSeriesRelatedInstances", 0x00201209, "IS", "SERIES", False),
    ("SOPInstanceUID", 0x00080018, "UI", "IMAGE", True),
    ("SOPClassUID", 0x00080016, "UI", "IMAGE", True),
    ("InstanceNumber", 0x00200013, "IS", "IMAGE", True),
    ("Rows", 0x00280010, "US", "IMAGE", False),
    ("Columns", 0x00280011, "US", "IMAGE", False),
    ("NumberOfFrames", 0x00280008, "IS", "IMAGE", False),
)
BY_TAG: dict[int, Attribute] = {a.tag: a for a in ATTRIBUTES.values()}

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


# -- conditions ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Universal:
    """Matches everything (the key is only asked to be returned)."""


@dataclass(frozen=True)
class Text:
    """Any of ``values``; a value with ``*``/``?`` is a wildcard pattern, the others match exactly."""

    values: tuple[str, ...]
    case_insensitive: bool = False

    @property
    def exact(self) -> tuple[str, ...]:
        return tuple(v for v in self.values if not has_wildcard(v))

    @property
    def patterns(self) -> tuple[str, ...]:
        return tuple(v for v in self.values if has_wildcard(v))


@dataclass(frozen=True)
class Uids:
    values: tuple[str, ...]


@dataclass(frozen=True)
class Integers:
    values: tuple[int, ...]


@dataclass(frozen=True)
class DateRange:
    """Inclusive; None = open."""

    start: date | None
    end: date | None

    def dicom(self) -> tuple[str | None, str | None]:
        """The bounds as DA text (``YYYYMMDD``), for string-typed columns."""
        return (
            self.start.strftime("%Y%m%d") if self.start else None,
            self.end.strftime("%Y%m%d") if self.end else None,
        )


@dataclass(frozen=True)
class TimeRange:
    """Inclusive, as normalised ``HHMMSS.ffffff`` text (compares as times); None = open."""

    start: str | None
    end: str | None


Condition = Universal | Text | Uids | Integers | DateRange | TimeRange


# -- parsing -------------------------------------------------------------------------------------
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?$")


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def wildcard_to_like(pattern: str) -> str:
    """DICOM wildcards (``*`` any run, ``?`` one character) -> a LIKE pattern where every other
    character, the LIKE metacharacters ``%``, ``_`` and the escape ``\\`` included, is literal."""
    out: list[str] = []
    for ch in pattern:
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch in "\\%_":
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def parse_date(attribute: str, text: str) -> date:
    """``YYYYMMDD`` (the old ``YYYY.MM.DD`` too) -> a real calendar date."""
    compact = text.strip().replace(".", "") if re.fullmatch(r"\d{4}\.\d{2}\.\d{2}", text.strip()) else text.strip()
    if not _DATE.match(compact):
        raise MatchingError(attribute, "a date is YYYYMMDD")
    try:
        return date(int(compact[:4]), int(compact[4:6]), int(compact[6:]))
    except ValueError:
        raise MatchingError(attribute, "not a calendar date") from None


def parse_date_range(attribute: str, text: str) -> DateRange:
    value = text.strip()
    if value.count("-") > 1:
        raise MatchingError(attribute, "a date range is START-END, -END or START-")
    if "-" not in value:
        day = parse_date(attribute, value)
        return DateRange(day, day)
    start_text, end_text = value.split("-")
    if not start_text.strip() and not end_text.strip():
        raise MatchingError(attribute, "a date range needs at least one bound")
    start = parse_date(attribute, start_text) if start_text.strip() else None
    end = parse_date(attribute, end_text) if end_text.strip() else None
    if start and end and start > end:
        raise MatchingError(attribute, "the range starts after it ends")
    return DateRange(start, end)


def parse_time(attribute: str, text: str, *, upper: bool = False) -> str:
    """``HH[MM[SS[.F{1,6}]]]`` (colons tolerated) -> ``HHMMSS.ffffff``. The missing parts are the
    start of the span (``upper=False``) or its end (``upper=True``: ``12`` -> ``125959.999999``)."""
    found = _TIME.match(text.strip().replace(":", ""))
    if not found:
        raise MatchingError(attribute, "a time is HH, HHMM, HHMMSS or HHMMSS.FFFFFF")
    hours, minutes, seconds, fraction = found.groups()
    if fraction and seconds is None:
        raise MatchingError(attribute, "a time is HH, HHMM, HHMMSS or HHMMSS.FFFFFF")
    if int(hours) > 23 or (minutes and int(minutes) > 59) or (seconds and int(seconds) > 60):
        raise MatchingError(attribute, "not a time of day")
    fill = "59" if upper else "00"
    digits = fraction[1:] if fraction else ""
    fill_fraction = "9" if upper and not fraction else "0"
    return f"{hours}{minutes or fill}{seconds or fill}.{digits.ljust(6, fill_fraction)}"


def normalise_time(value: str) -> str | None:
    """A stored TM value as comparable ``HHMMSS.ffffff`` (None when it is no valid time)."""
    try:
        return parse_time("time", value)
    except MatchingError:
        return None


def parse_time_range(attribute: str, text: str) -> TimeRange:
    value = text.strip()
    if value.count("-") > 1:
        raise MatchingError(attribute, "a time range is START-END, -END or START-")
    if "-" not in value:
        return TimeRange(parse_time(attribute, value), parse_time(attribute, value, upper=True))
    start_text, end_text = (part.strip() for part in value.split("-"))
    if not start_text and not end_text:
        raise MatchingError(attribute, "a time range needs at least one bound")
    start = parse_time(attribute, start_text) if start_text else None
    end = parse_time(attribute, end_text, upper=True) if end_text else None
    if start and end and start > end:
        raise MatchingError(attribute, "the range starts after it ends")
    return TimeRange(start, end)


def parse_uid_list(attribute: str, values: Sequence[str]) -> Uids:
    uids = tuple(dict.fromkeys(v.strip() for v in values if v.strip()))
    if len(uids) > MAX_LIST:
        raise MatchingError(attribute, f"at most {MAX_LIST} UIDs in one list")
    for value in uids:
        if not is_uid(value):
            raise MatchingError(attribute, "not a valid DICOM UID (digits and dots, at most 64 characters)")
    return Uids(uids)


def split_values(value: str | Sequence[str], separators: str) -> list[str]:
    """One or several raw values -> the list of values, each split at any of ``separators``."""
    raw = [value] if isinstance(value, str) else list(value)
    out: list[str] = []
    for item in raw:
        pieces = [item]
        for separator in separators:
            pieces = [p for piece in pieces for p in piece.split(separator)]
        out.extend(pieces)
    return out


def resolve_attribute(name: str) -> Attribute:
    """A keyword (``PatientName``) or a tag (``00100010``, ``0010,0010``) -> the attribute."""
    key = name.strip()
    found = ATTRIBUTES.get(key)
    if found is not None:
        return found
    compact = key.replace(",", "").replace("(", "").replace(")", "")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", compact):
        by_tag = BY_TAG.get(int(compact, 16))
        if by_tag is not None:
            return by_tag
    raise MatchingError(name, "not an attribute the archive can match or return")


def parse_condition(attribute: Attribute, value: str | Sequence[str], *, separators: str = "\\") -> Condition:
    """The matching value(s) of one key -> its condition. ``separators`` split a list: ``\\`` for
    DICOM identifiers, ``\\`` and ``,`` for QIDO-RS (lists of UIDs and codes only)."""
    name = attribute.keyword
    raw = [value] if isinstance(value, str) else list(value)
    if any(len(v) > MAX_VALUE for v in raw):
        raise MatchingError(name, f"a matching value is at most {MAX_VALUE} characters")
    if all(not v.strip() or v.strip() == "*" for v in raw):
        return Universal()
    if not attribute.matchable:
        raise MatchingError(name, "is a return key only; it cannot be matched (leave it empty)")
    if attribute.vr in ("DA", "TM"):
        if len(raw) != 1 or "\\" in raw[0]:
            raise MatchingError(name, "takes one value or one range")
        return parse_date_range(name, raw[0]) if attribute.vr == "DA" else parse_time_range(name, raw[0])
    list_separators = separators if attribute.vr in ("UI", "CS", "IS") else "\\"
    values = [v.strip() for v in split_values(raw, list_separators) if v.strip()]
    if not values:
        raise MatchingError(name, "the list is empty")
    if len(values) > MAX_LIST:
        raise MatchingError(name, f"at most {MAX_LIST} values in one list")
    if attribute.vr == "UI":
        if any(has_wildcard(v) for v in values):
            raise MatchingError(name, "UIDs match exactly or by list, not by wildcard")
        return parse_uid_list(name, values)
    if attribute.vr == "IS":
        try:
            numbers = tuple(int(v) for v in values)
        except ValueError:
            raise MatchingError(name, "an integer (or a list of integers) is expected") from None
        if any(not -(2**31) <= n < 2**31 for n in numbers):
            raise MatchingError(name, "the integer is out of range")
        return Integers(numbers)
    if any("*" in v and v.strip("*") == "" for v in values):
        return Universal()  # one of the alternatives matches everything
    return Text(tuple(dict.fromkeys(values)), case_insensitive=attribute.vr == "PN")
