"""Errors of the event codec and the encoding of one payload with its type's current schema.

Both :mod:`schemas.events` (which validates and hashes a payload when an event is built) and
:mod:`schemas.codec` (which writes and reads whole events) need these; they live in this leaf
module so that neither of those two imports the other in a circle.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastavro import schemaless_reader, schemaless_writer
from fastavro.validation import validate

from schemas.registry import SchemaVersion, registry


class CodecError(ValueError):
    """The bytes or the event cannot be (de)serialised."""


class MalformedEvent(CodecError):
    """The bytes are not a complete, intact event (bad header, truncated, trailing, hash mismatch)."""


class UnknownSchema(CodecError):
    """The fingerprint names no schema this archive knows."""


class InvalidEvent(CodecError):
    """An event (or payload) does not fit its schema: missing field, wrong type, unknown type."""


def payload_bytes(event_type: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
    """Encode a payload with the current schema; returns the normalised payload and its bytes."""
    try:
        schema = registry().schema(event_type).current
    except KeyError as exc:
        raise InvalidEvent(str(exc)) from None
    check_aware(payload, event_type)
    buffer = io.BytesIO()
    try:
        schemaless_writer(buffer, schema.payload, _with_defaults(schema.payload, payload), strict=True)
    except Exception as exc:
        raise InvalidEvent(f"{event_type} payload does not fit its schema: {_explain(schema, payload, exc)}") from None
    raw = buffer.getvalue()
    normalised = avro_record(schemaless_reader(io.BytesIO(raw), schema.payload, None))
    return normalised, raw


def avro_record(value: object) -> dict[str, Any]:
    """Our event schemas are records; fastavro's reader is typed for any Avro value."""
    if not isinstance(value, dict):
        raise MalformedEvent(f"expected an Avro record, decoded {type(value).__name__}")
    return value


def _with_defaults(record_schema: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """Fill absent fields that have a schema default (so producers may omit optional fields)."""
    if not isinstance(values, Mapping):
        return values  # the writer reports the type error with the field's name
    filled = dict(values)
    for field in record_schema["fields"]:
        name = field["name"]
        if name not in filled and "default" in field:
            filled[name] = copy.deepcopy(field["default"])
        elif isinstance(field["type"], dict) and field["type"].get("type") == "record" and name in filled:
            filled[name] = _with_defaults(field["type"], filled[name])
    return filled


def check_aware(values: Mapping[str, Any], where: str) -> None:
    for name, value in values.items():
        if isinstance(value, datetime) and value.tzinfo is None:
            raise InvalidEvent(f"{where}.{name}: timestamps must be timezone-aware (UTC)")


def _explain(schema: SchemaVersion, payload: Mapping[str, Any], exc: Exception) -> str:
    """fastavro's writer errors are terse; the validator names the offending field."""
    known = {f["name"] for f in schema.payload["fields"]}
    extra = sorted(set(payload) - known)
    if extra:
        return f"unknown field(s) {extra}"
    try:
        validate(dict(payload), schema.payload, raise_errors=True, strict=True)
    except Exception as detail:
        return str(detail)
    return str(exc)
