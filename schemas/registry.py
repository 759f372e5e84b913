"""The archive's event schemas, loaded from the ``.avsc`` files next to this module.

``avro/types/`` holds the named types shared by every event (Envelope, Actor...), ``avro/events/``
one schema per event type, and ``avro/history/`` every released version of each event schema,
fully expanded (``<Type>.v<N>.avsc``). History is what lets the archive read its own past: an
event written years ago is decoded with the schema it was written with and resolved to today's.
``python -m schemas.freeze`` records a new version after a (compatible) change; the evolution
test refuses changes that old data cannot be read through.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form

AVRO_DIR = Path(__file__).resolve().parent / "avro"
NAMESPACE = "cami.events"
_HISTORY_NAME = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>[0-9]+)\.avsc$")

Schema = dict[str, Any]


@dataclass(frozen=True)
class SchemaVersion:
    """One concrete writer schema: what a fingerprint in a message points to."""

    event_type: str
    version: int
    fingerprint: bytes  # 8 bytes, CRC-64-AVRO of the parsing canonical form, as on the wire
    parsed: Schema  # fastavro-parsed, self-contained
    envelope: Schema  # the envelope field's schema within ``parsed``
    payload: Schema  # the payload field's schema within ``parsed``


@dataclass(frozen=True)
class EventSchema:
    """The current schema of an event type plus everything needed to read its older versions."""

    event_type: str
    current: SchemaVersion
    #: True when the current schema is recorded in history (a released version)
    frozen: bool
    #: payload field names that hold patient-identifying data (tagged ``"phi": true``)
    phi_fields: frozenset[str]
    doc: str


def parse(schema: Any, named: dict[str, Schema] | None = None) -> Schema:
    """Parse a self-contained schema document (``named``: the named types it may use, and where
    the ones it defines are added)."""
    parsed = parse_schema(schema, named_schemas={} if named is None else named)
    if not isinstance(parsed, dict):
        raise ValueError("an event schema must be an Avro record")
    return parsed


def schema_fingerprint(parsed: Schema) -> bytes:
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _load_json(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def _split(parsed: Schema) -> tuple[Schema, Schema]:
    fields = {f["name"]: f["type"] for f in parsed["fields"]}
    if list(fields)[:2] != ["envelope", "payload"]:
        raise ValueError(f"{parsed.get('name')}: an event schema must start with envelope, payload")
    return fields["envelope"], fields["payload"]


def _version(event_type: str, version: int, parsed: Schema) -> SchemaVersion:
    envelope, payload = _split(parsed)
    # fastavro re-parses on every call a schema it has not marked as parsed, and the fields of a
    # parsed record are not marked: parsed once here, the envelope and the payload decode twice
    # as fast. They share one name table: a named type defined in the envelope may be used again
    # by the payload.
    named: dict[str, Schema] = {}
    return SchemaVersion(
        event_type,
        version,
        schema_fingerprint(parsed),
        parsed,
        parse(envelope, named),
        parse(payload, named),
    )


def _raw_types() -> dict[str, Schema]:
    """Raw JSON of the shared named types, by full name."""
    types: dict[str, Schema] = {}
    for path in sorted(AVRO_DIR.joinpath("types").glob("*.avsc")):
        raw = _load_json(path)
        types[f"{raw.get('namespace', NAMESPACE)}.{raw['name']}"] = raw
    return types


def _inline(node: Any, types: Mapping[str, Schema], defined: set[str]) -> Any:
    """Replace references to shared types by their definitions: the first use defines the
    type, later uses refer to it by name (Avro allows one definition per name)."""
    if isinstance(node, str):
        full = node if "." in node else f"{NAMESPACE}.{node}"
        if full in types and full not in defined:
            defined.add(full)
            return _inline(types[full], types, defined)
        return node
    if isinstance(node, list):
        return [_inline(item, types, defined) for item in node]
    if isinstance(node, dict):
        if node.get("type") in ("record", "enum", "fixed") and "name" in node:
            defined.add(
                f"{node.get('namespace', NAMESPACE)}.{node['name']}" if "." not in node["name"] else node["name"]
            )
        out = {}
        for key, value in node.items():
            out[key] = _inline(value, types, defined) if key in ("type", "items", "values", "fields") else value
        return out
    return node


def expanded(event_type: str) -> Schema:
    """The current schema of ``event_type`` as one self-contained document (what history stores)."""
    raw = _load_json(AVRO_DIR / "events" / f"{event_type}.avsc")
    result: Schema = _inline(raw, _raw_types(), set())
    return result


def history_files() -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    for path in sorted(AVRO_DIR.joinpath("history").glob("*.avsc")):
        match = _HISTORY_NAME.match(path.name)
        if not match:
            raise ValueError(f"unexpected file in schema history: {path.name}")
        found.setdefault(match["name"], {})[int(match["version"])] = path
    return found


@dataclass(frozen=True)
class Registry:
    events: dict[str, EventSchema]
    by_fingerprint: dict[bytes, SchemaVersion]

    def schema(self, event_type: str) -> EventSchema:
        try:
            return self.events[event_type]
        except KeyError:
            raise KeyError(f"unknown event type {event_type!r}") from None


@cache
def registry() -> Registry:
    history = history_files()
    events: dict[str, EventSchema] = {}
    by_fp: dict[bytes, SchemaVersion] = {}
    for path in sorted(AVRO_DIR.joinpath("events").glob("*.avsc")):
        event_type = path.stem
        raw = expanded(event_type)
        if raw.get("name") != event_type:
            raise ValueError(f"{path.name} defines {raw.get('name')}; file and record names must match")
        parsed = parse(raw)
        current_fp = schema_fingerprint(parsed)
        versions = history.get(event_type, {})
        for number, hist_path in versions.items():
            old = _version(event_type, number, parse(_load_json(hist_path)))
            by_fp[old.fingerprint] = old
        released = {v.fingerprint: v.version for v in by_fp.values() if v.event_type == event_type}
        frozen = current_fp in released
        number = released.get(current_fp, max(versions, default=0) + 1)
        current = _version(event_type, number, parsed)
        by_fp[current.fingerprint] = current
        payload_fields = current.payload["fields"]
        phi = frozenset(f["name"] for f in payload_fields if f.get("phi"))
        events[event_type] = EventSchema(event_type, current, frozen, phi, raw.get("doc", ""))
    return Registry(events, by_fp)
