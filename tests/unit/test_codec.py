"""The codec returns whole, intact events or raises a clear CodecError; nothing in between."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest

from schemas.codec import (
    HEADER_SIZE,
    MAGIC,
    CodecError,
    InvalidEvent,
    MalformedEvent,
    UnknownSchema,
    decode,
    encode,
)
from schemas.compat import sample
from schemas.events import Actor, Event, new_event
from schemas.registry import registry

UID = "1.2.826.0.1.3680043.8.498.12345"


def instance_payload(**overrides: Any) -> dict[str, Any]:
    payload = {
        "StudyInstanceUID": UID,
        "SeriesInstanceUID": UID + ".1",
        "SOPInstanceUID": UID + ".1.1",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "TransferSyntaxUID": "1.2.840.10008.1.2.4.70",
        "PatientID": "P-0042",
        "PatientName": "Смирнова^Ольга^Петровна",
        "PatientBirthDate": "19811203",
        "Modality": "CT",
        "SeriesNumber": 3,
        "PerformingPhysician": {"code": "D-17", "name": "Орлов^А^Б"},
        "blob": {"sha256": "ab" * 32, "size": 524_288, "store": "s3://cami"},
        "channel": "dicom",
        "calling_ae_title": "OKB_CT1",
        "pathology": True,
    }
    payload.update(overrides)
    return payload


def instance_event(**overrides: Any) -> Event:
    return new_event(
        "InstanceReceived",
        instance_payload(**overrides),
        aggregate_id=UID,
        source_node="OKB_CT1",
        organisation="1.2.643.5.1.13.13.12.2.50.1001",
        actor=Actor("modality", "modality"),
    )


def sample_event(event_type: str, rng: random.Random) -> Event:
    payload_schema = registry().schema(event_type).current.payload
    return new_event(event_type, sample(payload_schema, rng), aggregate_id="agg-1", source_node="node")


@pytest.mark.parametrize("event_type", sorted(registry().events))
def test_every_event_type_round_trips(event_type: str) -> None:
    rng = random.Random(event_type)
    for _ in range(10):
        event = sample_event(event_type, rng)
        data = encode(event)
        assert data[:2] == MAGIC
        assert data[2:HEADER_SIZE] == registry().schema(event_type).current.fingerprint
        assert decode(data) == event


def test_cyrillic_names_and_defaults_survive() -> None:
    event = decode(encode(instance_event()))
    assert event["PatientName"] == "Смирнова^Ольга^Петровна"
    assert event["PerformingPhysician"] == {"code": "D-17", "name": "Орлов^А^Б"}
    assert event["missing"] == [] and event["version"] == 1 and event["emergency"] is False
    assert event.envelope.organisation == "1.2.643.5.1.13.13.12.2.50.1001"
    assert event.envelope.occurred_at.tzinfo is not None


def test_patient_fields_are_tagged_and_redacted() -> None:
    event = instance_event()
    assert {"PatientID", "PatientName", "PatientBirthDate"} <= registry().schema(event.type).phi_fields
    redacted = event.redacted()
    assert redacted["PatientName"] == "***" and redacted["PatientID"] == "***"
    assert redacted["StudyInstanceUID"] == UID


@pytest.mark.parametrize("cut", range(0, 60))
def test_truncated_bytes_are_refused(cut: int) -> None:
    data = encode(instance_event())
    with pytest.raises(MalformedEvent):
        decode(data[: len(data) - 1 - cut * 5] if cut else data[:-1])


def test_truncated_header_is_refused() -> None:
    for n in range(HEADER_SIZE):
        with pytest.raises(MalformedEvent, match=r"truncated|not an Avro"):
            decode(encode(instance_event())[:n])


def test_wrong_magic_is_refused() -> None:
    data = encode(instance_event())
    with pytest.raises(MalformedEvent, match="not an Avro single-object"):
        decode(b"\x00\x00" + data[2:])


def test_unknown_fingerprint_is_refused() -> None:
    data = bytearray(encode(instance_event()))
    data[2:10] = b"\x01" * 8
    with pytest.raises(UnknownSchema, match="0101010101010101"):
        decode(bytes(data))


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(MalformedEvent, match="unexpected bytes"):
        decode(encode(instance_event()) + b"\x00")


def test_changed_payload_byte_is_detected() -> None:
    data = bytearray(encode(instance_event()))
    data[-5] ^= 0x01  # a payload byte (the payload is the tail)
    with pytest.raises(MalformedEvent):
        decode(bytes(data))


def test_bytes_under_another_types_fingerprint_do_not_decode() -> None:
    data = encode(instance_event())
    other = registry().schema("RecordAccessed").current.fingerprint
    with pytest.raises(MalformedEvent):
        decode(data[:2] + other + data[HEADER_SIZE:])


def test_random_garbage_after_a_valid_header_never_half_decodes() -> None:
    rng = random.Random(7)
    header = encode(instance_event())[:HEADER_SIZE]
    for _ in range(500):
        junk = rng.randbytes(rng.randrange(0, 400))
        with pytest.raises(CodecError):
            decode(header + junk)


def test_wrong_field_type_is_refused_naming_the_field() -> None:
    with pytest.raises(InvalidEvent, match="SeriesNumber"):
        instance_event(SeriesNumber="three")


def test_missing_required_field_is_refused() -> None:
    payload = instance_payload()
    del payload["PatientID"]
    with pytest.raises(InvalidEvent, match="PatientID"):
        new_event("InstanceReceived", payload, aggregate_id=UID, source_node="x")


def test_unknown_field_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="PatientWeight"):
        instance_event(PatientWeight=70)


def test_naive_timestamp_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="timezone-aware"):
        new_event(
            "TransferStarted",
            {"transfer_id": "t1", "attempt": 1},
            aggregate_id="org",
            source_node="x",
            occurred_at=datetime(2026, 1, 1),
        )


def test_unknown_event_type_is_refused() -> None:
    with pytest.raises(InvalidEvent, match="unknown event type"):
        new_event("StudyTeleported", {}, aggregate_id="x", source_node="x")


def test_tampered_event_object_is_refused_on_encode() -> None:
    event = instance_event()
    forged = Event(event.envelope, {**event.payload, "PatientID": "someone-else"})
    with pytest.raises(InvalidEvent, match="payload_sha256"):
        encode(forged)


def test_occurred_at_is_kept_and_recorded_at_is_the_archive_clock() -> None:
    when = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
    event = decode(
        encode(
            new_event(
                "TransferStarted",
                {"transfer_id": "t1", "attempt": 2},
                aggregate_id="org",
                source_node="agent",
                occurred_at=when,
            )
        )
    )
    assert event.envelope.occurred_at == when
    assert event.envelope.recorded_at > when


def test_every_schema_version_is_parsed_once_not_on_each_call() -> None:
    """fastavro parses again, on every read and write, a schema it has not marked as parsed;
    the envelope and payload schemas of every known version (old ones included, which decode
    through schema resolution) must be handed over parsed, with the named types they use."""
    for version in registry().by_fingerprint.values():
        for part in (version.envelope, version.payload):
            assert "__fastavro_parsed" in part, (version.event_type, version.version)
            assert "__named_schemas" in part
