"""Events as Python values: an immutable envelope plus the event type's payload.

Events are facts in the past tense (``InstanceReceived``, ``ReportSigned``). They are built with
:func:`new_event`, which fills the envelope (ids, clocks, payload hash) so that an event is
complete from the moment it exists; :mod:`schemas.codec` turns them into bytes and back.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from schemas.payload import InvalidEvent, payload_bytes
from schemas.registry import registry


@dataclass(frozen=True, slots=True)
class Actor:
    user: str
    role: str

    def to_dict(self) -> dict[str, str]:
        return {"user": self.user, "role": self.role}


#: the archive itself, for events no person caused (ingest from a modality, replay...)
SYSTEM = Actor("cami", "system")


@dataclass(frozen=True, slots=True)
class Envelope:
    event_id: str
    event_type: str
    schema_version: int
    occurred_at: datetime
    recorded_at: datetime
    organisation: str | None
    source_node: str
    actor: Actor
    aggregate_id: str
    payload_sha256: str
    correlation_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "event_type": self.event_type,
            "schema_version": self.schema_version,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "organisation": self.organisation,
            "source_node": self.source_node,
            "actor": self.actor.to_dict(),
            "aggregate_id": self.aggregate_id,
            "correlation_id": self.correlation_id,
            "payload_sha256": self.payload_sha256,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Envelope:
        actor = data["actor"]
        return cls(
            event_id=str(data["event_id"]),
            event_type=data["event_type"],
            schema_version=data["schema_version"],
            occurred_at=data["occurred_at"],
            recorded_at=data["recorded_at"],
            organisation=data.get("organisation"),
            source_node=data["source_node"],
            actor=Actor(actor["user"], actor["role"]),
            aggregate_id=data["aggregate_id"],
            correlation_id=data.get("correlation_id"),
            payload_sha256=data["payload_sha256"],
        )


@dataclass(frozen=True, slots=True)
class Event:
    envelope: Envelope
    payload: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    #: the payload's Avro bytes as hashed by :func:`new_event` (spares the codec a second encoding)
    payload_raw: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def type(self) -> str:
        return self.envelope.event_type

    @property
    def key(self) -> str:
        """The log key: events of one aggregate stay ordered."""
        return self.envelope.aggregate_id

    def __getitem__(self, name: str) -> Any:
        return self.payload[name]

    def redacted(self) -> dict[str, Any]:
        """The payload with patient-identifying fields masked, for logs and error messages."""
        phi = registry().schema(self.type).phi_fields
        return {k: ("***" if k in phi and v is not None else v) for k, v in self.payload.items()}


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_event(
    event_type: str,
    payload: Mapping[str, Any],
    *,
    aggregate_id: str,
    source_node: str,
    organisation: str | None = None,
    actor: Actor = SYSTEM,
    occurred_at: datetime | None = None,
    correlation_id: str | None = None,
) -> Event:
    """Build a complete event. The payload is validated and hashed here, so a bad payload fails
    at the producer (with a clear :class:`~schemas.payload.InvalidEvent`) and never reaches the log."""
    normalised, raw = payload_bytes(event_type, payload)  # raises InvalidEvent for unknown types
    schema = registry().schema(event_type)
    if occurred_at is not None and occurred_at.tzinfo is None:
        raise InvalidEvent(f"{event_type}: occurred_at must be timezone-aware (UTC)")
    recorded_at = utc_now()
    envelope = Envelope(
        event_id=str(uuid.uuid4()),
        event_type=event_type,
        schema_version=schema.current.version,
        occurred_at=occurred_at or recorded_at,
        recorded_at=recorded_at,
        organisation=organisation,
        source_node=source_node,
        actor=actor,
        aggregate_id=aggregate_id,
        correlation_id=correlation_id,
        payload_sha256=_sha256(raw),
    )
    return Event(envelope, MappingProxyType(normalised), raw)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
