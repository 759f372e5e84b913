"""Who saw this patient: every access event to a patient's records, across organisations.

A patient's records are the patient IDs merged with theirs (followed both ways, as the archive
index knows them: :func:`~projections.archive_index.views.linked_patient_ids`) and every study
filed under one of those IDs. An access is a ``cami.access`` audit entry (a RecordAccessed
event: a read, a search or a refused one) that names one of those IDs or studies, or whose record
is one of them. Read from the audit trail (one row per event, with its chain hashes); the signed
export (:mod:`projections.audit.bundle`) adds the events' bytes from the log.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from projections.archive_index.fold import INSTANCES
from projections.archive_index.views import linked_patient_ids
from projections.audit.fold import COLUMNS, DDL, TABLE, as_hex
from projections.warehouse import Warehouse
from streams.topics import ACCESS

#: the most entries one answer carries (a bound on memory; narrow the dates to see more)
MAX_ACCESSES = 50_000


class TooManyAccesses(ValueError):
    """More access entries than one answer carries."""


@dataclass(frozen=True)
class AccessFilter:
    since: datetime | None = None
    until: datetime | None = None
    user: str | None = None
    organisation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"since": self.since, "until": self.until, "user": self.user, "organisation": self.organisation}


def patient_records(warehouse: Warehouse, patient_id: str) -> tuple[list[str], list[str]]:
    """(the patient's IDs, merges followed; the studies filed under any of them)."""
    _, ids = linked_patient_ids(warehouse, patient_id)
    ids = sorted(set(ids) | {patient_id})
    result = warehouse.query(
        f"SELECT DISTINCT study_uid FROM {INSTANCES} WHERE patient_id IN {{ids:Array(String)}} ORDER BY study_uid",
        {"ids": ids},
    )
    return ids, [str(row[0]) for row in result.rows]


def accesses(warehouse: Warehouse, patient_id: str, only: AccessFilter | None = None) -> dict[str, Any]:
    """The access entries to the patient's records (every column, in the order they happened)."""
    only = only or AccessFilter()
    warehouse.command(DDL)
    ids, studies = patient_records(warehouse, patient_id)
    conditions = [
        "topic = {topic:String}",
        "(aggregate_id IN {records:Array(String)} OR patient_id IN {ids:Array(String)}"
        " OR study_instance_uid IN {studies:Array(String)})",
    ]
    parameters: dict[str, Any] = {"topic": ACCESS, "records": ids + studies, "ids": ids, "studies": studies}
    if only.since is not None:
        conditions.append("occurred_at >= {since:DateTime64(6, 'UTC')}")
        parameters["since"] = only.since
    if only.until is not None:
        conditions.append("occurred_at <= {until:DateTime64(6, 'UTC')}")
        parameters["until"] = only.until
    if only.user:
        conditions.append("actor_user = {user:String}")
        parameters["user"] = only.user
    if only.organisation:
        conditions.append("organisation = {organisation:String}")
        parameters["organisation"] = only.organisation
    result = warehouse.query(
        f"SELECT {', '.join(COLUMNS)} FROM {TABLE} FINAL WHERE {' AND '.join(conditions)}"
        f" ORDER BY occurred_at, recorded_at, aggregate_id, partition, offset LIMIT {MAX_ACCESSES + 1}",
        parameters,
    )
    entries = result.dicts()
    if len(entries) > MAX_ACCESSES:
        raise TooManyAccesses(f"more than {MAX_ACCESSES} access entries: narrow the dates")
    for entry in entries:
        for column in ("event_sha256", "prev_hash", "entry_hash"):
            entry[column] = as_hex(entry[column])
    return {
        "patient_id": patient_id,
        "patient_ids": ids,
        "studies": studies,
        "filter": only.to_dict(),
        "entries": entries,
    }


#: the columns of the CSV export, in order
CSV_COLUMNS = (
    "occurred_at",
    "actor_user",
    "actor_role",
    "organisation",
    "organisation_name",
    "peer_address",
    "event_type",
    "summary",
    "aggregate_id",
    "patient_id",
    "study_instance_uid",
    "topic",
    "partition",
    "offset",
    "event_sha256",
    "prev_hash",
    "entry_hash",
)
