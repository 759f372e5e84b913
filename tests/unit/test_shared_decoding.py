"""The processors of one embedded runner decode each record once between them (SharedDecoding)."""

from __future__ import annotations

from schemas.codec import encode
from schemas.events import new_event
from streams.processing import SharedDecoding, Source, decode_records


def _record(patient: str, offset: int) -> tuple[Source, bytes]:
    event = new_event(
        "PatientUpdated", {"PatientID": patient, "PatientName": "Петрова^Анна", "source": "hl7"}, aggregate_id=patient,
        source_node="MIS",
    )  # fmt: skip
    raw = encode(event)
    return Source("patients", 0, offset, raw), raw


def test_processors_reading_the_same_records_share_one_decoded_event() -> None:
    shared = SharedDecoding()
    batch = [_record(f"P{n}", n) for n in range(5)]
    first, _ = decode_records(batch, shared)
    second, _ = decode_records(batch, shared)
    assert [e["PatientID"] for e, _ in first] == [f"P{n}" for n in range(5)]
    assert all(a is b for (a, _), (b, _) in zip(first, second, strict=True))


def test_other_bytes_at_a_known_position_are_decoded_again() -> None:
    """A log rebuilt elsewhere, another broker: the position alone does not name the event."""
    shared = SharedDecoding()
    decode_records([_record("P1", 7)], shared)
    [(event, _)], _ = decode_records([_record("P2", 7)], shared)
    assert event["PatientID"] == "P2"


def test_the_shared_events_are_bounded_and_the_oldest_go_first() -> None:
    shared = SharedDecoding(capacity=3)
    batch = [_record(f"P{n}", n) for n in range(4)]
    before, _ = decode_records(batch, shared)
    after, _ = decode_records(batch, shared)
    same = [a is b for (a, _), (b, _) in zip(before, after, strict=True)]
    assert same[0] is False  # pushed out by the fourth, decoded again
    assert len(shared._events) == 3
