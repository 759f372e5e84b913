"""Monitoring and analytics projections as pure functions (no warehouse), over the scenario of
:mod:`tests.support.scenarios` (the contract tests project the same scenario into both warehouse
backends).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from datetime import date
from typing import Any

import pytest

from api.demo.synthetic import synthetic_region
from ingest.validation import inspect
from projections.analytics import Analytics, age_band, keyed, pseudonym
from projections.monitoring.fold import Monitoring
from projections.registry import PROJECTIONS, ProjectionConfig, build
from schemas.events import Event, new_event
from streams.processing import Row, Source
from streams.topics import topic_for
from tests.support.scenarios import (
    KEY,
    ORG_A,
    ORG_B,
    P1,
    P2,
    P3,
    P4,
    PRIOR_ID,
    STUDIES,
    STUDY,
    at,
    instance_event,
    scenario,
)

OTHER_KEY = b"another-key"

PATIENTS = (P1, P2, P3, P4)


def region_events(seed: int = 3, studies: int = 10) -> list[Event]:
    """InstanceReceived events for a synthetic region (realistic Cyrillic names, birth dates)."""
    events = []
    for study in synthetic_region(seed, studies):
        for ds in study.instances[:2]:
            found = inspect(ds)
            payload = {
                **found.attributes,
                "TransferSyntaxUID": str(ds.file_meta.TransferSyntaxUID),
                "blob": {"sha256": "0" * 64, "size": 10, "store": "file://"},
                "missing": found.missing,
                "pathology": found.pathology,
                "emergency": found.emergency,
                "channel": "import",
            }
            events.append(
                new_event(
                    "InstanceReceived",
                    payload,
                    aggregate_id=study.study_uid,
                    source_node=study.organisation.ae_title,
                    organisation=study.organisation.code,
                )
            )
    return events


def positioned(events: Iterable[Event]) -> list[tuple[Event, Source]]:
    """Log positions as a single-partition log would assign them (one offset sequence per topic)."""
    offsets: dict[str, int] = {}
    out = []
    for event in events:
        topic = topic_for(event.type)
        offsets[topic] = offsets.get(topic, -1) + 1
        out.append((event, Source(topic, 0, offsets[topic])))
    return out


def project(processor: Any, events: Iterable[Event]) -> list[Row]:
    return [
        row
        for event, source in positioned(events)
        for row in processor.apply(event, source)
        if topic_for(event.type) in processor.topics
    ]


def phi_needles(people: Iterable[tuple[str, str | None, str | None]]) -> set[str]:
    """Every form a patient's identity could take in a column: the ID, the name and each of its
    parts, the birth date as DICOM and ISO text (compared case-insensitively by the scanners)."""
    needles: set[str] = set()
    for patient_id, name, birth in people:
        needles.add(patient_id)
        if name:
            needles |= {name, name.replace("^", " ").strip()}
            needles |= {part for part in name.split("^") if len(part) >= 3}
        if birth:
            needles |= {birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:8]}"}
    return {n.casefold() for n in needles}


def flatten(value: Any) -> Iterable[str]:
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from flatten(item)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield str(k)
            yield from flatten(v)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace")
    elif value is not None:
        yield str(value)


def leaks(values: Iterable[Any], needles: set[str]) -> list[tuple[str, str]]:
    found = []
    for value in values:
        for text in flatten(value):
            for needle in needles:
                if needle in text.casefold():
                    found.append((needle, text))
    return found


SCENARIO_PEOPLE = [(p.patient_id, p.name, p.birth_date) for p in PATIENTS] + [(PRIOR_ID, None, None)]


# -- monitoring -------------------------------------------------------------------------------------
def rows_of(rows: Sequence[Row], table: str) -> list[dict[str, Any]]:
    return [dict(r.values) for r in rows if r.table == table]


def test_monitoring_rows_for_arrivals() -> None:
    rows = project(Monitoring(), scenario())
    arrivals = rows_of(rows, "monitoring_arrivals")
    stored = [r for r in arrivals if r["kind"] == "stored"]
    assert len(stored) == sum(s.instances for s in STUDIES) + 1
    first = stored[0]
    assert first["organisation"] == ORG_A and first["ae_title"] == "OKB_PACS" and first["bytes"] == 1000
    assert first["minute"] == at("2025-03-03 10:00:00")
    third = stored[2]  # 10:01:25 falls in the 10:01 minute
    assert third["at"] == at("2025-03-03 10:01:25") and third["minute"] == at("2025-03-03 10:01:00")
    assert [r["missing"] for r in stored if r["study_uid"] == STUDY[3].uid] == [["ProcedureCode"], []]
    refused = [(r["kind"], r["reason"], r["organisation"], r["ae_title"]) for r in arrivals if r["kind"] != "stored"]
    assert refused == [
        ("rejected", "missing-patient-id", ORG_A, "OKB_PACS"),
        ("rejected", "missing-patient-id", ORG_A, "OKB_PACS"),
        ("rejected", "invalid-uid", ORG_B, "GKB2_PACS"),
        ("association-rejected", "unknown-caller", "", "ROGUE_AE"),
    ]


def test_monitoring_reports_use_the_archive_signing_time() -> None:
    rows = rows_of(project(Monitoring(), scenario()), "monitoring_reports")
    assert [(r["study_uid"], r["signed_at"]) for r in rows] == [
        (STUDY[1].uid, at("2025-03-03 10:30:00")),
        (STUDY[2].uid, at("2025-03-10 11:00:00")),
        (STUDY[4].uid, at("2025-03-05 12:10:00")),
        (STUDY[6].uid, at("2025-03-20 07:40:00")),
    ]  # drafts, edits and amendments are not signatures


def test_transfer_state_after_each_event() -> None:
    rows = rows_of(project(Monitoring(), scenario()), "monitoring_transfers")
    t2 = [(r["event_type"], r["state"]) for r in rows if r["transfer_id"] == "T2"]
    assert t2 == [
        ("TransferQueued", "queued"),
        ("TransferStarted", "in-flight"),
        ("TransferFailed", "queued"),  # will be retried
        ("TransferStarted", "in-flight"),
        ("TransferCompleted", "done"),
    ]
    t3 = [r["state"] for r in rows if r["transfer_id"] == "T3"]
    assert t3 == ["queued", "in-flight", "failed"]
    beats = rows_of(project(Monitoring(), scenario()), "monitoring_heartbeats")
    assert [(b["agent_id"], b["queue_depth"], b["last_success_at"]) for b in beats] == [
        ("okb-agent", 1, at("2025-03-03 10:02:00")),
        ("okb-agent", 0, at("2025-04-02 08:06:00")),
        ("gkb-agent", 1, None),
    ]


def test_apply_is_deterministic_and_ignores_foreign_events() -> None:
    """Redelivery rewrites the same row under the same key: apply depends only on event and position."""
    monitoring, analytics = Monitoring(), Analytics(KEY)
    for event, source in positioned(scenario()):
        assert monitoring.apply(event, source) == monitoring.apply(event, source)
        assert analytics.apply(event, source) == analytics.apply(event, source)
        for row in [*monitoring.apply(event, source), *analytics.apply(event, source)]:
            assert (row.values["topic"], row.values["partition"], row.values["offset"]) == (
                source.topic,
                source.partition,
                source.offset,
            )
        if event.type in ("OrderPlaced", "PatientUpdated", "RecordAccessed"):
            assert analytics.apply(event, source) == []
        if event.type in ("OrderPlaced", "PatientUpdated", "RecordAccessed", "PatientsMerged", "ReportDrafted"):
            assert monitoring.apply(event, source) == []


# -- analytics --------------------------------------------------------------------------------------
def test_pseudonym_is_hmac_sha256_of_the_patient_id() -> None:
    expected = hmac.new(KEY, P1.patient_id.encode(), hashlib.sha256).hexdigest()
    assert pseudonym(KEY, P1.patient_id) == expected
    rows = project(Analytics(KEY), scenario())
    instances = rows_of(rows, "analytics_instances")
    p1 = {
        r["patient_pseudonym"]
        for r in instances
        if r["study_key"] in (keyed(KEY, "study", STUDY[1].uid), keyed(KEY, "study", STUDY[4].uid))
    }
    assert p1 == {expected}  # the same patient at two organisations: one pseudonym
    assert len({r["patient_pseudonym"] for r in instances}) == len(PATIENTS)
    reports = rows_of(rows, "analytics_reports")
    assert {r["patient_pseudonym"] for r in reports if r["study_key"] == keyed(KEY, "study", STUDY[1].uid)} == {
        expected
    }
    merges = rows_of(rows, "analytics_patient_merges")
    assert merges[0]["prior_pseudonym"] == pseudonym(KEY, PRIOR_ID)
    assert merges[0]["pseudonym"] == pseudonym(KEY, P4.patient_id)


def test_a_different_key_gives_different_pseudonyms_and_keys() -> None:
    mine = rows_of(project(Analytics(KEY), scenario()), "analytics_instances")
    theirs = rows_of(project(Analytics(OTHER_KEY), scenario()), "analytics_instances")
    assert len(mine) == len(theirs)
    for a, b in zip(mine, theirs, strict=True):
        assert a["patient_pseudonym"] != b["patient_pseudonym"]
        assert a["study_key"] != b["study_key"] and a["instance_key"] != b["instance_key"]
        assert a["modality"] == b["modality"] and a["bytes"] == b["bytes"]
    # keys of different kinds never coincide even for the same text
    assert keyed(KEY, "study", "x") != keyed(KEY, "report", "x") != pseudonym(KEY, "x")


def test_registry_builds_both_with_the_configured_key() -> None:
    assert {"monitoring", "analytics"} <= set(PROJECTIONS)
    [analytics] = build(("analytics",), ProjectionConfig(pseudonym_key=OTHER_KEY))
    [event] = [e for e in scenario() if e.type == "InstanceReceived"][:1]
    [row] = analytics.apply(event, Source("cami.dicom", 0, 0))
    assert row.values["patient_pseudonym"] == pseudonym(OTHER_KEY, P1.patient_id)
    with pytest.raises(ValueError):
        Analytics(b"")


@pytest.mark.parametrize(
    ("birth", "on", "band"),
    [
        ("19720305", date(2025, 3, 3), "50-54"),  # 52
        ("19700303", date(2025, 3, 3), "55-59"),  # 55 on the birthday
        ("19700304", date(2025, 3, 3), "50-54"),  # 54, the day before
        ("20150401", date(2025, 3, 15), "05-09"),
        ("20150401", date(2025, 4, 2), "10-14"),
        ("20250101", date(2025, 3, 1), "00-04"),
        ("19310101", date(2025, 4, 20), "90+"),
        (None, date(2025, 1, 1), "unknown"),
        ("1972", date(2025, 1, 1), "unknown"),
        ("20300101", date(2025, 1, 1), "unknown"),
    ],
)
def test_age_band(birth: str | None, on: date, band: str) -> None:
    assert age_band(birth, on) == band


def test_analytics_rows_carry_no_patient_identity() -> None:
    """Every value of every analytics row, for the scenario and a synthetic region."""
    region = region_events()
    people = SCENARIO_PEOPLE + [
        (str(e.payload["PatientID"]), e.payload.get("PatientName"), e.payload.get("PatientBirthDate")) for e in region
    ]
    needles = phi_needles(people)
    assert len(needles) > 40
    rows = project(Analytics(KEY), [*scenario(), *region])
    assert {r.table for r in rows} == {
        "analytics_instances",
        "analytics_reports",
        "analytics_transfers",
        "analytics_rejections",
        "analytics_patient_merges",
    }
    assert leaks([list(r.values.values()) for r in rows], needles) == []
    # the scanner itself finds what it must: the raw events are full of it
    assert leaks([dict(e.payload) for e in region], needles)


def test_age_band_and_facts_of_an_instance() -> None:
    [row] = Analytics(KEY).apply(instance_event(STUDY[7], 0, at("2025-03-15 11:00:00")), Source("cami.dicom", 1, 9))
    v = row.values
    assert v["age_band"] == "05-09" and v["patient_sex"] == "F" and v["study_date"] == date(2025, 3, 15)
    assert v["doctor_code"] == "111-222-337 44" and v["calling_ae_title"] == "OKB_PACS"
    assert v["study_key"] == keyed(KEY, "study", STUDY[7].uid)
    assert "PatientName" not in v and "ReferringPhysicianName" not in v
