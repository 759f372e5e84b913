"""Old events must stay readable: every released schema version against today's schema."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import random

import pytest
from fastavro import parse_schema, schemaless_writer

from schemas.codec import MAGIC, decode
from schemas.compat import incompatibilities, sample
from schemas.registry import history_files, registry, schema_fingerprint


def test_every_current_schema_is_a_released_version() -> None:
    unreleased = [name for name, s in registry().events.items() if not s.frozen]
    assert not unreleased, f"schemas changed without a recorded version: {unreleased}; run python -m schemas.freeze"


def test_history_covers_every_event_type() -> None:
    assert set(history_files()) == set(registry().events)


@pytest.mark.parametrize(
    ("event_type", "version"),
    [(name, v) for name, versions in sorted(history_files().items()) for v in sorted(versions)],
)
def test_released_version_is_readable_by_the_current_schema(event_type: str, version: int) -> None:
    path = history_files()[event_type][version]
    writer = parse_schema(json.loads(path.read_text(encoding="utf-8")), named_schemas={})
    reader = registry().schema(event_type).current.parsed
    assert incompatibilities(writer, reader) == []
    # and through the codec, exactly as a replay would meet it: old fingerprint, old bytes
    rng = random.Random(version)
    for _ in range(5):
        value = sample(writer, rng)
        value["envelope"]["event_type"] = event_type
        payload_buf = io.BytesIO()
        schemaless_writer(
            payload_buf, next(f for f in writer["fields"] if f["name"] == "payload")["type"], value["payload"]
        )
        value["envelope"]["payload_sha256"] = hashlib.sha256(payload_buf.getvalue()).hexdigest()
        body = io.BytesIO()
        schemaless_writer(body, writer, value)
        event = decode(MAGIC + schema_fingerprint(writer) + body.getvalue())
        assert event.type == event_type
        assert set(event.payload) == {f["name"] for f in reader["fields"][1]["type"]["fields"]}


# The checker itself must catch what breaks old data, or the test above proves nothing.
def _evolve(change: str) -> tuple[dict, dict]:
    writer = {
        "type": "record",
        "name": "R",
        "fields": [
            {"name": "PatientID", "type": "string"},
            {"name": "InstanceNumber", "type": "int"},
            {"name": "Modality", "type": ["null", "string"], "default": None},
        ],
    }
    reader = copy.deepcopy(writer)
    fields = reader["fields"]
    if change == "add field with default":
        fields.append({"name": "pathology", "type": "boolean", "default": False})
    elif change == "add field without default":
        fields.append({"name": "pathology", "type": "boolean"})
    elif change == "remove field":
        del fields[2]
    elif change == "int to long":
        fields[1]["type"] = "long"
    elif change == "int to string":
        fields[1]["type"] = "string"
    elif change == "nullable to required":
        fields[2] = {"name": "Modality", "type": "string"}
    return writer, reader


@pytest.mark.parametrize(
    ("change", "compatible"),
    [
        ("add field with default", True),
        ("remove field", True),
        ("int to long", True),
        ("add field without default", False),
        ("int to string", False),
        ("nullable to required", False),
    ],
)
def test_checker_tells_compatible_from_breaking_changes(change: str, compatible: bool) -> None:
    writer, reader = _evolve(change)
    problems = incompatibilities(writer, reader)
    assert (problems == []) is compatible, problems
