"""Parsing of DICOM matching values (projections.archive_index.matching): pure, no warehouse."""

from __future__ import annotations

from datetime import date

import pytest

from projections.archive_index.matching import (
    ATTRIBUTES,
    DateRange,
    Integers,
    MatchingError,
    Text,
    TimeRange,
    Uids,
    Universal,
    is_uid,
    parse_condition,
    parse_date_range,
    parse_time,
    parse_time_range,
    parse_uid_list,
    resolve_attribute,
    wildcard_to_like,
)


def condition(keyword: str, value: str | list[str], separators: str = "\\,") -> object:
    return parse_condition(ATTRIBUTES[keyword], value, separators=separators)


def test_universal_matching() -> None:
    for value in ("", "  ", "*", ["", "*"]):
        assert condition("PatientName", value) == Universal()
    assert condition("StudyDate", "") == Universal()
    assert condition("StudyInstanceUID", "") == Universal()
    assert condition("Modality", "CT,*") == Universal()  # one alternative matches everything
    assert condition("NumberOfStudyRelatedInstances", "") == Universal()  # a return key may be asked for


def test_single_values_wildcards_and_case() -> None:
    assert condition("AccessionNumber", "ACC-1") == Text(("ACC-1",))
    name = condition("PatientName", "Иван*^?нна")
    assert name == Text(("Иван*^?нна",), case_insensitive=True)
    assert isinstance(name, Text) and name.patterns == ("Иван*^?нна",) and name.exact == ()
    assert condition("ReferringPhysicianName", "Smith") == Text(("Smith",), case_insensitive=True)
    assert condition("Modality", "CT") == Text(("CT",), case_insensitive=False)
    # a description may hold commas: only UIDs, codes and numbers are split at them
    assert condition("StudyDescription", "КТ головы, шеи") == Text(("КТ головы, шеи",))


def test_lists() -> None:
    assert condition("StudyInstanceUID", "1.2.3,1.2.4") == Uids(("1.2.3", "1.2.4"))
    assert condition("StudyInstanceUID", "1.2.3\\1.2.4\\1.2.3") == Uids(("1.2.3", "1.2.4"))
    assert condition("StudyInstanceUID", ["1.2.3", "1.2.5"]) == Uids(("1.2.3", "1.2.5"))  # repeated
    assert condition("ModalitiesInStudy", "CT,MR") == Text(("CT", "MR"))
    assert condition("ModalitiesInStudy", "CT,MR", separators="\\") == Text(("CT,MR",))  # DICOM: \\ only
    assert condition("SeriesNumber", "1,2") == Integers((1, 2))
    assert condition("PatientID", "A\\B") == Text(("A", "B"))


def test_dates() -> None:
    assert condition("StudyDate", "20260115") == DateRange(date(2026, 1, 15), date(2026, 1, 15))
    assert condition("StudyDate", "20260101-20260131") == DateRange(date(2026, 1, 1), date(2026, 1, 31))
    assert condition("StudyDate", "-20260131") == DateRange(None, date(2026, 1, 31))
    assert condition("StudyDate", "20260101-") == DateRange(date(2026, 1, 1), None)
    assert parse_date_range("d", "2026.01.15") == DateRange(date(2026, 1, 15), date(2026, 1, 15))
    assert DateRange(date(2026, 1, 1), None).dicom() == ("20260101", None)


@pytest.mark.parametrize(
    "value", ["2026011", "20260230", "20261301", "20260131-20260101", "-", "2026-01-01", "a-b", "1-2-3", "20260101\\2"]
)
def test_bad_dates(value: str) -> None:
    with pytest.raises(MatchingError) as caught:
        condition("StudyDate", value)
    assert caught.value.attribute == "StudyDate" and value not in caught.value.message


def test_times() -> None:
    assert parse_time("t", "10") == "100000.000000"
    assert parse_time("t", "10", upper=True) == "105959.999999"
    assert parse_time("t", "1015", upper=True) == "101559.999999"
    assert parse_time("t", "101530.5") == "101530.500000"
    assert parse_time("t", "101530.5", upper=True) == "101530.500000"
    assert parse_time("t", "10:15:30") == "101530.000000"
    assert parse_time_range("t", "0800-1230") == TimeRange("080000.000000", "123059.999999")
    assert parse_time_range("t", "-12") == TimeRange(None, "125959.999999")
    assert parse_time_range("t", "12-") == TimeRange("120000.000000", None)
    assert condition("StudyTime", "1015") == TimeRange("101500.000000", "101559.999999")


@pytest.mark.parametrize("value", ["25", "1260", "126061", "1", "10.5", "12-11", "ab", "1200.1234567"])
def test_bad_times(value: str) -> None:
    with pytest.raises(MatchingError) as caught:
        condition("StudyTime", value)
    assert caught.value.attribute == "StudyTime"


def test_uids() -> None:
    assert is_uid("1.2.840.10008.1.2.1") and is_uid("0.0")
    for bad in ("1", "1.02", "1..2", "1.2.", "a.b", "1.2-3", "1." + "2" * 64):
        assert not is_uid(bad)
    assert parse_uid_list("u", [" 1.2.3 ", "1.2.3", ""]) == Uids(("1.2.3",))
    for value in ("1.2.*", "1.2.03", "' OR 1=1"):
        with pytest.raises(MatchingError) as caught:
            condition("SOPInstanceUID", value)
        assert caught.value.attribute == "SOPInstanceUID"


def test_other_refusals() -> None:
    with pytest.raises(MatchingError, match="return key"):
        condition("NumberOfStudyRelatedInstances", "4")
    with pytest.raises(MatchingError, match="integer"):
        condition("InstanceNumber", "one")
    with pytest.raises(MatchingError, match="at most"):
        condition("PatientName", "x" * 2000)
    with pytest.raises(MatchingError, match="at most"):
        condition("StudyInstanceUID", ",".join(f"1.{n}" for n in range(1, 1100)))


def test_attribute_names_and_tags() -> None:
    assert resolve_attribute("PatientName").tag == 0x00100010
    assert resolve_attribute("00100010").keyword == "PatientName"
    assert resolve_attribute("0020000d").keyword == "StudyInstanceUID"
    assert resolve_attribute("(0008,0061)").keyword == "ModalitiesInStudy"
    for unknown in ("NoSuchThing", "99990010", "patientname", ""):
        with pytest.raises(MatchingError):
            resolve_attribute(unknown)


def test_wildcards_become_literal_like_patterns() -> None:
    assert wildcard_to_like("Ив*") == "Ив%"
    assert wildcard_to_like("A?B") == "A_B"
    assert wildcard_to_like("100%_\\*") == "100\\%\\_\\\\%"
