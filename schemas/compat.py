"""Can data written with an old schema still be read with a new one?

Avro answers this by *schema resolution* at read time. We ask it directly: generate values that
cover the writer schema (every union branch, empty and non-empty arrays, defaults and
non-defaults), write them with the writer schema, and read them with the reader schema. Any
resolution error is an incompatibility. The evolution test runs this for every released
version of every event type against the current schema.
"""

from __future__ import annotations

import io
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer

Schema = Any


def sample(schema: Schema, rng: random.Random, branch: int | None = None) -> Any:
    """A random value of ``schema`` (a fastavro-parsed schema). ``branch`` picks union branches."""
    if isinstance(schema, list):  # union
        index = (branch if branch is not None else rng.randrange(len(schema))) % len(schema)
        return sample(schema[index], rng, branch)
    if isinstance(schema, str):
        schema = {"type": schema}
    kind = schema["type"]
    logical = schema.get("logicalType")
    if logical == "timestamp-micros":
        return datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randrange(10**15))
    if logical == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if kind == "record":
        return {f["name"]: sample(f["type"], rng, branch) for f in schema["fields"]}
    if kind == "array":
        return [sample(schema["items"], rng, branch) for _ in range(rng.randrange(3))]
    if kind == "map":
        return {f"k{i}": sample(schema["values"], rng, branch) for i in range(rng.randrange(3))}
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "fixed":
        return rng.randbytes(schema["size"])
    simple: dict[str, Callable[[], Any]] = {
        "null": lambda: None,
        "boolean": lambda: rng.random() < 0.5,
        "int": lambda: rng.randrange(-(2**31), 2**31),
        "long": lambda: rng.randrange(-(2**63), 2**63),
        "float": lambda: rng.random(),
        "double": lambda: rng.random() * 1e6,
        "string": lambda: rng.choice(["", "1.2.840.10008", "Иванов^Иван", "x" * rng.randrange(40)]),
        "bytes": lambda: rng.randbytes(rng.randrange(16)),
    }
    if kind in simple:
        return simple[kind]()
    if isinstance(kind, dict | list):
        return sample(kind, rng, branch)
    raise ValueError(f"cannot sample Avro type {kind!r}")


def incompatibilities(writer: Schema, reader: Schema, samples: int = 24, seed: int = 1) -> list[str]:
    """Problems reading data written with ``writer`` using ``reader``; empty when compatible."""
    writer = parse_schema(writer, named_schemas={}) if not _parsed(writer) else writer
    reader = parse_schema(reader, named_schemas={}) if not _parsed(reader) else reader
    rng = random.Random(seed)
    problems: list[str] = []
    for i in range(samples):
        # the first samples walk union branches systematically (all null, all second branch...)
        value = sample(writer, rng, branch=i if i < 4 else None)
        buffer = io.BytesIO()
        schemaless_writer(buffer, writer, value)
        try:
            schemaless_reader(io.BytesIO(buffer.getvalue()), writer, reader)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
            if problem not in problems:
                problems.append(problem)
    return problems


def _parsed(schema: Schema) -> bool:
    return isinstance(schema, dict) and "__fastavro_parsed" in schema
