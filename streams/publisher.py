"""Publishing events: encode, route to the event's topic, key by its aggregate, wait until durable."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

from schemas.codec import encode
from schemas.events import Event
from streams.log import EventLog, Position
from streams.topics import topic_for


def _headers(event: Event) -> list[tuple[str, bytes]]:
    # the type in a header lets tools filter without decoding; the bytes stay the source of truth
    return [("event_type", event.type.encode())]


def publish_async(log: EventLog, event: Event) -> Future[Position]:
    return log.append_async(topic_for(event.type), event.key.encode(), encode(event), _headers(event))


def publish(log: EventLog, event: Event, timeout: float = 30.0) -> Position:
    """Append ``event``; returns only once it is durable (raises otherwise)."""
    return log.append(topic_for(event.type), event.key.encode(), encode(event), _headers(event), timeout)


def publish_encoded(log: EventLog, event: Event, encoded: bytes, timeout: float = 30.0) -> Position:
    """:func:`publish` for an event already encoded (``encoded == encode(event)``), so that
    bytes checked before anything was stored are the bytes appended."""
    return log.append(topic_for(event.type), event.key.encode(), encoded, _headers(event), timeout)


def publish_many(log: EventLog, events: Sequence[Event], timeout: float = 60.0) -> list[Position]:
    futures = [publish_async(log, e) for e in events]
    return [f.result(timeout=timeout) for f in futures]
