"""The fold of ``cami.reports`` into the report store: each report event becomes one row carrying
its fact (:func:`fact`), and :class:`ReportStoreSink` folds those facts into a
:class:`~ingest.reports.store.ReportStore` with :func:`~ingest.reports.rules.evolve`. The same
pair rebuilds the store from the log and keeps it current on the live path."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from ingest.reports.store import TABLE, TASKS, ReportStore
from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import REPORTS

REPORT_EVENTS = frozenset({"ReportDrafted", "ReportEdited", "ReportSigned", "ReportAmended"})
#: second opinions and double reading's arbitration (ingest/reports/readings.py)
TASK_EVENTS = frozenset({"SecondOpinionRequested", "SecondOpinionAccepted", "ArbitrationRequested"})


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


def fact(event: Event) -> dict[str, Any]:
    """The part of an event the fold needs, as plain values (what a projection row carries)."""
    return {
        "event_id": event.envelope.event_id,
        "event_type": event.type,
        "recorded_at": _iso(event.envelope.recorded_at),
        "organisation": event.envelope.organisation,
        "actor": event.envelope.actor.to_dict(),
        "payload": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in event.payload.items()},
    }


class ReportStoreProjection:
    """Pure: a report event -> one row carrying its fact for :class:`ReportStoreSink`."""

    topics: Sequence[str] = (REPORTS,)

    def __init__(self, node: str = "local") -> None:
        self.name = f"report-store.{node}"

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        if event.type in REPORT_EVENTS:
            return [Row(TABLE, fact(event))]
        if event.type in TASK_EVENTS:
            return [Row(TASKS, fact(event))]
        return []


class ReportStoreSink:
    def __init__(self, store: ReportStore) -> None:
        self.store = store

    def write(self, rows: Sequence[Row]) -> None:
        self.store.apply([r.values for r in rows if r.table == TABLE])
        self.store.apply_tasks([r.values for r in rows if r.table == TASKS])
