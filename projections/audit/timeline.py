"""A record's timeline for the auditor's page: every entry in order, each with its chain check.

The record is what the auditor searched for (:func:`resolve`): a record of the audit trail (a
study, a patient ID, an organisation, a reader's query history) or a report (its study). A
patient's timeline also holds the entries of other records that name the patient (the accesses
and studies filed under the patient ID).

Each entry is checked twice (:mod:`projections.audit.verify`): its link in its chain, recomputed
from the stored rows of the whole chain (:func:`~projections.audit.verify.broken_links`), and the
stored row against its event in the log, read at the entry's position only
(:func:`~projections.audit.verify.check_entry`): the event's hash and every column. The first
entry of the timeline that does not add up is the one the page highlights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from projections.archive_index.fold import INSTANCES, REPORTS_TABLE
from projections.audit.fold import COLUMNS, DDL, TABLE, as_hex
from projections.audit.queries import history
from projections.audit.verify import Broken, broken_links, check_entry, stored_links
from projections.warehouse import Warehouse
from schemas.organisations import OrganisationDirectory
from streams.log import EventLog

#: the most entries a timeline shows (a bound on memory and on the page)
MAX_ENTRIES = 20_000
#: the most records one read of the log asks for when checking entries against it
READ_SPAN = 200


def _exists(warehouse: Warehouse, sql: str, parameters: Mapping[str, Any]) -> bool:
    try:
        return bool(warehouse.query(sql, dict(parameters)).rows)
    except Exception:  # a table not created yet: nothing of that kind is known
        return False


def resolve(warehouse: Warehouse, query: str, directory: OrganisationDirectory) -> list[dict[str, str]]:
    """What ``query`` may mean: ``[{kind, record, label}]`` (a record of the trail, a report's
    study, a patient ID, organisations by name)."""
    warehouse.command(DDL)
    text = query.strip()
    found: list[dict[str, str]] = []
    if not text:
        return found
    row = warehouse.query(
        f"SELECT groupUniqArray(topic), countIf(patient_id = {{r:String}}) FROM {TABLE}"
        " WHERE aggregate_id = {r:String} GROUP BY aggregate_id",
        {"r": text},
    ).rows
    if row:
        topics, naming_patient = {str(t) for t in row[0][0]}, int(row[0][1])
        if topics & {"cami.dicom", "cami.reports"}:
            kind = "study"
        elif "cami.patients" in topics or naming_patient:
            kind = "patient"
        elif "cami.transfers" in topics or directory.lookup(text) is not None:
            kind = "organisation"
        else:
            kind = "record"
        label = directory.display(text) if kind == "organisation" else text
        found.append({"kind": kind, "record": text, "label": label})
    if _exists(warehouse, f"SELECT 1 FROM {REPORTS_TABLE} WHERE report_id = {{r:String}} LIMIT 1", {"r": text}):
        for (study,) in warehouse.query(
            f"SELECT DISTINCT study_uid FROM {REPORTS_TABLE} WHERE report_id = {{r:String}}", {"r": text}
        ).rows:
            found.append({"kind": "report", "record": str(study), "label": f"{text} → {study}"})
    if not any(f["record"] == text for f in found) and _exists(
        warehouse, f"SELECT 1 FROM {INSTANCES} WHERE patient_id = {{r:String}} LIMIT 1", {"r": text}
    ):
        found.append({"kind": "patient", "record": text, "label": text})
    lowered = text.casefold()
    for organisation in directory.organisations.values():
        names = (organisation.name, organisation.label, organisation.code)
        if any(lowered in name.casefold() for name in names if name) and organisation.code != text:
            found.append({"kind": "organisation", "record": organisation.code, "label": organisation.label})
    return found


def events_at(event_log: EventLog, positions: Iterable[tuple[str, int, int]]) -> dict[tuple[str, int, int], bytes]:
    """The events' bytes at ``positions`` (absent: the log has none there), read in runs of
    neighbouring offsets rather than one request each, at most :data:`READ_SPAN` records at a time."""
    wanted: dict[tuple[str, int], list[int]] = {}
    for topic, partition, offset in positions:
        wanted.setdefault((topic, partition), []).append(offset)
    found: dict[tuple[str, int, int], bytes] = {}
    for (topic, partition), offsets in wanted.items():
        pending = sorted(set(offsets))
        while pending:
            start = pending[0]
            span = min(READ_SPAN, pending[-1] - start + 1)
            records = event_log.read(topic, partition, start, span)
            for record in records:
                found[(topic, partition, record.offset)] = record.value
            covered = records[-1].offset if records else start
            pending = [o for o in pending if o > covered]
    return found


def timeline(warehouse: Warehouse, event_log: EventLog | None, record: str, *, patient: bool = False) -> dict[str, Any]:
    """The record's entries in order, each with ``check`` (None: adds up; else what is wrong),
    and ``first_broken`` (the first entry of the timeline that does not add up). ``patient``: also
    the entries of other records that name this patient ID. ``event_log`` None: stored chains only."""
    entries = history(warehouse, record)
    if patient:
        result = warehouse.query(
            f"SELECT {', '.join(COLUMNS)} FROM {TABLE} FINAL WHERE patient_id = {{r:String}}"
            f" AND aggregate_id != {{r:String}} ORDER BY occurred_at LIMIT {MAX_ENTRIES}",
            {"r": record},
        )
        for entry in result.dicts():
            for column in ("event_sha256", "prev_hash", "entry_hash"):
                entry[column] = as_hex(entry[column])
            entries.append(entry)
        entries.sort(key=lambda e: (e["occurred_at"], e["recorded_at"], e["topic"], e["partition"], e["offset"]))
    entries = entries[:MAX_ENTRIES]
    problems: dict[tuple[str, int, int], Broken] = {}
    for aggregate in sorted({str(e["aggregate_id"]) for e in entries}):
        problems.update(broken_links(stored_links(warehouse, aggregate)))
    if event_log is not None:
        stored = events_at(event_log, [(str(e["topic"]), int(e["partition"]), int(e["offset"])) for e in entries])
        for entry in entries:
            position = (str(entry["topic"]), int(entry["partition"]), int(entry["offset"]))
            broken = check_entry(entry, stored.get(position))
            if broken is not None and position not in problems:
                problems[position] = broken
    first: Broken | None = None
    for entry in entries:  # the first broken one as the timeline shows them (in time order)
        position = (str(entry["topic"]), int(entry["partition"]), int(entry["offset"]))
        broken = problems.get(position)
        entry["check"] = broken.to_dict() if broken else None
        entry["first_broken"] = broken is not None and first is None
        if broken is not None and first is None:
            first = broken
    return {
        "record": record,
        "entries": entries,
        "checked_against_log": event_log is not None,
        "broken": sum(1 for e in entries if e["check"] is not None),
        "first_broken": first.to_dict() if first else None,
    }
