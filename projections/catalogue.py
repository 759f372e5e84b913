"""Event catalogue: one row per event with who, what, when and where it sits in the log.

The simplest projection there is, and the seed of the audit trail: it proves the plumbing
(log -> runner/Faust -> pure function -> sink) end to end. Rows are keyed by the event's log
position, so redelivery rewrites the same row.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import SOURCE_OF_TRUTH

TABLE = "event_catalogue"

#: ReplacingMergeTree on the log position: a redelivered event replaces itself. Ordered by
#: aggregate first because the catalogue is read per record ("everything about this study").
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    event_id UUID,
    event_type LowCardinality(String),
    schema_version UInt16,
    aggregate_id String,
    organisation Nullable(String),
    source_node String,
    actor_user String,
    actor_role LowCardinality(String),
    occurred_at DateTime64(6, 'UTC'),
    recorded_at DateTime64(6, 'UTC'),
    payload_sha256 FixedString(64)
) ENGINE = ReplacingMergeTree
ORDER BY (aggregate_id, topic, partition, offset)
"""


class EventCatalogue:
    name = "catalogue"
    topics: Sequence[str] = SOURCE_OF_TRUTH
    ddl = (DDL,)
    tables = (TABLE,)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        env = event.envelope
        return [
            Row(
                TABLE,
                {
                    "topic": source.topic,
                    "partition": source.partition,
                    "offset": source.offset,
                    "event_id": env.event_id,
                    "event_type": env.event_type,
                    "schema_version": env.schema_version,
                    "aggregate_id": env.aggregate_id,
                    "organisation": env.organisation,
                    "source_node": env.source_node,
                    "actor_user": env.actor.user,
                    "actor_role": env.actor.role,
                    "occurred_at": env.occurred_at,
                    "recorded_at": env.recorded_at,
                    "payload_sha256": env.payload_sha256,
                },
            )
        ]
