"""The pure parts of the auditor's tools: checking a signed bundle offline (every kind of change
named at its entry), the moment parser, and the study-at-T fold over hand-made events."""

from __future__ import annotations

import base64
import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from projections.audit.at import fold, parse_moment
from projections.audit.bundle import FORMAT, canonical, entry_view, public_key_text, signing_key, verify
from projections.audit.fold import GENESIS, chain_hash, event_hash
from schemas.codec import decode, encode
from schemas.events import Actor, Event, new_event
from streams.processing import Source

STUDY = "1.2.826.0.1.3680043.8.498.77"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def access(user: str) -> Event:
    return new_event(
        "RecordAccessed",
        {"action": "view", "channel": "study-page", "StudyInstanceUID": STUDY, "PatientID": "P-1", "results": 1},
        aggregate_id=STUDY,
        source_node="http",
        actor=Actor(user, "radiologist"),
    )


def bundle(key: Ed25519PrivateKey, users: list[str], selected: set[int]) -> dict[str, Any]:
    """A chain of accesses of one record, some of them selected (the others as hashes only)."""
    entries = []
    prev = GENESIS
    for offset, user in enumerate(users):
        raw = encode(access(user))
        sha = event_hash(raw)
        link = chain_hash(prev, sha, "cami.access", 0, offset)
        chosen = offset in selected
        entries.append(
            {
                "n": offset + 1,
                "record": STUDY,
                "topic": "cami.access",
                "partition": 0,
                "offset": offset,
                "event_sha256": sha,
                "prev_hash": prev,
                "entry_hash": link,
                "selected": chosen,
                "event": base64.b64encode(raw).decode() if chosen else None,
                "view": entry_view(decode(raw)) if chosen else None,
            }
        )
        prev = link
    document: dict[str, Any] = {
        "format": FORMAT,
        "created_at": T0.isoformat(),
        "query": {"patient_id": "P-1"},
        "public_key": public_key_text(key),
        "entries": entries,
    }
    document["signature"] = base64.b64encode(key.sign(canonical(document))).decode()
    return document


@pytest.fixture
def signed() -> tuple[Ed25519PrivateKey, dict[str, Any]]:
    key = Ed25519PrivateKey.generate()
    return key, bundle(key, ["dr.a", "dr.b", "dr.c", "dr.d"], {1, 3})


def test_an_intact_bundle_verifies_with_its_pinned_key(signed: tuple[Ed25519PrivateKey, dict[str, Any]]) -> None:
    key, document = signed
    report = verify(document, public_key_text(key))
    assert report.ok, report.problems
    assert (report.entries, report.selected, report.chains, report.signature_ok) == (4, 2, 1, True)
    other = verify(document, public_key_text(Ed25519PrivateKey.generate()))
    assert not other.ok and other.first_bad_entry is None and "pinned" in other.problems[0]


@pytest.mark.parametrize(
    ("change", "entry", "problem"),
    [
        (lambda e: e[1]["view"].__setitem__("user", "dr.x"), 2, "the view differs"),
        (lambda e: e[3].__setitem__("event", base64.b64encode(encode(access("dr.z"))).decode()), 4, "do not hash"),
        (lambda e: e[2].__setitem__("entry_hash", "0" * 64), 3, "entry_hash does not recompute"),
        (lambda e: e.pop(1), 2, "prev_hash is not the previous link"),  # an entry taken out
        (lambda e: e[0].__setitem__("event_sha256", "1" * 64), 1, "entry_hash does not recompute"),
    ],
    ids=["view", "event-bytes", "entry-hash", "removed", "event-hash"],
)
def test_a_changed_entry_is_named(
    signed: tuple[Ed25519PrivateKey, dict[str, Any]], change: Any, entry: int, problem: str
) -> None:
    _, document = signed
    changed = copy.deepcopy(document)
    change(changed["entries"])
    report = verify(changed)
    assert not report.ok and report.first_bad_entry == entry
    assert any(problem in p for p in report.problems), report.problems
    assert not report.signature_ok  # the signature covers every entry too


def test_the_signing_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    key = signing_key(tmp_path)
    assert (tmp_path / "audit-signing.key").stat().st_mode & 0o777 == 0o600
    assert public_key_text(signing_key(tmp_path)) == public_key_text(key)


def test_moments() -> None:
    assert parse_moment("2026-03-01T12:00:00+03:00") == datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    assert parse_moment("2026-03-01T12:00") == datetime(2026, 3, 1, 12, 0, tzinfo=UTC)  # no zone: UTC
    assert parse_moment("2026-03-01", end_of_day=True) == datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    for bad in ("yesterday", "31.02.2026", "2026-02-30", ""):
        with pytest.raises(ValueError, match="not an ISO 8601 time"):
            parse_moment(bad)


def test_the_fold_knows_at_each_moment_only_what_was_recorded_by_then() -> None:
    def received(n: int, version: int = 1) -> Event:
        return new_event(
            "InstanceReceived",
            {
                "StudyInstanceUID": STUDY,
                "SeriesInstanceUID": f"{STUDY}.1",
                "SOPInstanceUID": f"{STUDY}.1.{n}",
                "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                "TransferSyntaxUID": "1.2.840.10008.1.2.1",
                "PatientID": "P-1",
                "Modality": "CT",
                "PerformingPhysician": {"code": "1", "name": "A"},
                "version": version,
                "blob": {"sha256": f"{n:064x}", "size": 10, "store": "file://"},
                "channel": "dicom",
            },
            aggregate_id=STUDY,
            source_node="scp",
        )

    drafted = new_event(
        "ReportDrafted",
        {
            "report_id": "r1",
            "StudyInstanceUID": STUDY,
            "protocol_text": "p",
            "conclusion_text": "c1",
            "revision": 1,
            "author": {"code": "1", "name": "A"},
            "source": "http",
        },
        aggregate_id=STUDY,
        source_node="http",
    )
    merged = new_event(
        "PatientsMerged",
        {"PatientID": "P-2", "PriorPatientID": "P-1", "source": "hl7"},
        aggregate_id="P-2",
        source_node="MIS",
    )
    timeline = [(received(1), 1), (received(2), 2), (drafted, 3), (received(2, version=2), 4), (merged, 5)]
    events = []
    for offset, (event, minutes) in enumerate(timeline):
        moment = T0 + timedelta(minutes=minutes)
        stamped = Event(replace(event.envelope, recorded_at=moment), event.payload)
        events.append((stamped, Source("t", 0, offset, b"")))

    then, now = fold(events, STUDY, T0 + timedelta(minutes=2, seconds=30))
    assert [(i["sop_uid"][-1], i["version"]) for i in then["instances"]] == [("1", 1), ("2", 1)]
    assert then["reports"] == [] and then["patient"]["patient_id"] == "P-1"
    assert [(i["sop_uid"][-1], i["version"]) for i in now["instances"]] == [("1", 1), ("2", 2)]
    assert len(now["versions"]) == 3 and now["reports"][0]["conclusion_text"] == "c1"
    assert now["patient"]["patient_id"] == "P-2" and now["patient"]["patient_id_on_images"] == "P-1"
    early, _ = fold(events, STUDY, T0)
    assert early["known"] is False and early["events"] == 0
