"""Avro single-object encoding of events (the Avro specification's format).

Wire layout of every message::

    C3 01 | 8-byte CRC-64-AVRO fingerprint of the writer schema | envelope | payload

The fingerprint says exactly which schema version wrote the bytes, so old events stay readable
after the schema evolves. Decoding is all-or-nothing: a message is returned only when the
header is right, the fingerprint is known, the bytes decode completely with nothing left over,
and the payload's SHA-256 equals the one in the envelope. Anything else raises a
:class:`CodecError` subclass that says what was wrong.
"""

from __future__ import annotations

import hashlib
import io

from fastavro import schemaless_reader, schemaless_writer

from schemas.events import Envelope, Event
from schemas.payload import (
    CodecError,
    InvalidEvent,
    MalformedEvent,
    UnknownSchema,
    avro_record,
    check_aware,
    payload_bytes,
)
from schemas.registry import SchemaVersion, registry

# the errors live in schemas.payload (schemas.events raises them too); callers keep importing them from here
__all__ = [
    "HEADER_SIZE",
    "MAGIC",
    "MAX_EVENT_BYTES",
    "CodecError",
    "InvalidEvent",
    "MalformedEvent",
    "UnknownSchema",
    "decode",
    "encode",
    "payload_bytes",
    "writer_schema",
]

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8
#: events are facts, not documents; a report's text fits easily (blobs go to the blob store)
MAX_EVENT_BYTES = 8 * 1024 * 1024


def encode(event: Event) -> bytes:
    """Single-object encoding of ``event`` with its type's current schema."""
    try:
        schema = registry().schema(event.type).current
    except KeyError as exc:
        raise InvalidEvent(str(exc)) from None
    if event.envelope.schema_version != schema.version:
        raise InvalidEvent(
            f"{event.type}: envelope says schema version {event.envelope.schema_version}, "
            f"current is {schema.version}; events are re-encoded only by the version that wrote them"
        )
    raw_payload = event.payload_raw
    if raw_payload is None:  # an event built by hand or decoded: encode its payload now
        _, raw_payload = payload_bytes(event.type, event.payload)
    if hashlib.sha256(raw_payload).hexdigest() != event.envelope.payload_sha256:
        raise InvalidEvent(f"{event.type}: payload_sha256 in the envelope does not match the payload")
    buffer = io.BytesIO()
    buffer.write(MAGIC)
    buffer.write(schema.fingerprint)
    envelope = event.envelope.to_dict()
    check_aware(envelope, "envelope")
    try:
        schemaless_writer(buffer, schema.envelope, envelope, strict=True)
    except Exception as exc:
        raise InvalidEvent(f"{event.type} envelope does not fit its schema: {exc}") from None
    buffer.write(raw_payload)
    return buffer.getvalue()


def writer_schema(data: bytes) -> SchemaVersion:
    """The schema version that wrote ``data`` (checks the header only)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEvent(f"expected bytes, got {type(data).__name__}")
    if len(data) < HEADER_SIZE:
        raise MalformedEvent(f"truncated: {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    if bytes(data[:2]) != MAGIC:
        raise MalformedEvent(f"not an Avro single-object message (starts with {bytes(data[:2]).hex()})")
    fingerprint = bytes(data[2:HEADER_SIZE])
    try:
        return registry().by_fingerprint[fingerprint]
    except KeyError:
        raise UnknownSchema(f"unknown schema fingerprint {fingerprint.hex()}") from None


def decode(data: bytes) -> Event:
    """Decode a message written by any released schema version into the current shape."""
    if len(data) > MAX_EVENT_BYTES:
        raise MalformedEvent(f"event of {len(data)} bytes exceeds the {MAX_EVENT_BYTES}-byte limit")
    writer = writer_schema(data)
    reader = registry().schema(writer.event_type).current
    body = io.BytesIO(bytes(data[HEADER_SIZE:]))
    size = len(data) - HEADER_SIZE
    try:
        # no reader schema when the writer's is current: fastavro then skips schema resolution
        same = writer is reader
        envelope = avro_record(schemaless_reader(body, writer.envelope, None if same else reader.envelope))
        payload_start = body.tell()
        payload = avro_record(schemaless_reader(body, writer.payload, None if same else reader.payload))
    except Exception as exc:
        raise MalformedEvent(f"{writer.event_type}: bytes do not decode ({type(exc).__name__}: {exc})") from None
    end = body.tell()
    if end != size:
        raise MalformedEvent(f"{writer.event_type}: {size - end} unexpected bytes after the event")
    raw_payload = body.getbuffer()[payload_start:end]
    if hashlib.sha256(raw_payload).hexdigest() != envelope.get("payload_sha256"):
        raise MalformedEvent(f"{writer.event_type}: payload does not match the payload_sha256 in its envelope")
    if envelope.get("event_type") != writer.event_type:
        raise MalformedEvent(f"envelope says {envelope.get('event_type')!r} but the schema is {writer.event_type!r}")
    try:
        return Event(Envelope.from_dict(envelope), payload)
    except (KeyError, TypeError) as exc:
        raise MalformedEvent(f"{writer.event_type}: incomplete envelope ({exc})") from None
