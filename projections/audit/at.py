"""A study as the archive knew it at a moment T, folded from the event log (never from today's rows).

What it holds at T: the study's instances (the newest version of each) and every version, the
patient as the images and the demographics updates said, the merges of that patient, and the
reports with their texts. Each comes from the same pure fold the warehouse is fed with
(:class:`~projections.archive_index.fold.ArchiveIndex`), kept here in memory with the tables' own
rule for duplicates (``ReplacingMergeTree(log_version)``: per natural key the row with the highest
``log_version`` wins, a redelivered event replaces itself), and read with the same views'
rules (the newest version of an instance, :func:`~projections.archive_index.views.fold_report`
for a report's stages). So "at T" and "now" are the one fold over two prefixes of the log.

**What "at T" means.** An event counts when the archive had recorded it by T
(``envelope.recorded_at <= T``): what the archive *knew*, not when the modality says it happened.

**What is read.** The log is read through :class:`~streams.log.EventLog` (both backends), in
pages, and only what the study needs is kept: its ``cami.dicom`` and ``cami.reports`` events
live in the one partition its key hashes to (:func:`~streams.partitioning.partition_for`), so only
that partition of each is read. Patient merges are keyed by the *surviving* ID, which the study
does not name, so ``cami.patients`` is read whole, twice: first keeping only the merge edges
(two IDs each), then folding only the events of the patient IDs linked to the study's. Memory is
the study's own events plus the region's merge edges.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from projections.archive_index.fold import INSTANCES, MERGES, PATIENTS_TABLE, REPORTS_TABLE, ArchiveIndex
from projections.archive_index.views import MAX_MERGE_HOPS, fold_report
from schemas.codec import CodecError, decode
from schemas.events import Event
from streams.log import EventLog, Record
from streams.partitioning import partition_for
from streams.processing import Source
from streams.topics import DICOM, PATIENTS, REPORTS

#: records read from the log per request
PAGE = 1_000


class UnknownRecord(LookupError):
    """The log holds no event of this study."""


# -- the fold (pure) -----------------------------------------------------------------------------
#: each table's natural key (its ORDER BY), as the in-memory stand-in deduplicates by it
_KEYS: Mapping[str, tuple[str, ...]] = {
    INSTANCES: ("study_uid", "series_uid", "sop_uid", "version"),
    REPORTS_TABLE: ("study_uid", "report_id", "stage", "seq"),
    PATIENTS_TABLE: ("patient_id", "attribute"),
    MERGES: ("prior_patient_id",),
}


@dataclass
class Known:
    """What the archive index would hold after the events folded so far (one study's share)."""

    tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = field(
        default_factory=lambda: {table: {} for table in _KEYS}
    )
    events: int = 0
    last_recorded_at: datetime | None = None
    _index: ArchiveIndex = field(default_factory=ArchiveIndex, repr=False)

    def apply(self, event: Event, source: Source) -> None:
        self.events += 1
        recorded = event.envelope.recorded_at
        if self.last_recorded_at is None or recorded > self.last_recorded_at:
            self.last_recorded_at = recorded
        for row in self._index.apply(event, source):
            table = self.tables.get(row.table)
            if table is None:
                continue
            key = tuple(row.values[k] for k in _KEYS[row.table])
            held = table.get(key)
            if held is None or int(row.values["log_version"]) >= int(held["log_version"]):
                table[key] = dict(row.values)

    def view(self, study_uid: str) -> dict[str, Any]:
        """The study as these events tell it (the shape :func:`diff` compares)."""
        rows = [r for r in self.tables[INSTANCES].values() if r["study_uid"] == study_uid]
        versions = sorted(rows, key=lambda r: (r["series_uid"], r["sop_uid"], r["version"]))
        newest: dict[str, dict[str, Any]] = {}
        for row in rows:  # the views' rule: highest version, then later arrival, then later position
            rank = (row["version"], row["received_at"], row["log_version"])
            held = newest.get(row["sop_uid"])
            if held is None or rank > (held["version"], held["received_at"], held["log_version"]):
                newest[row["sop_uid"]] = row
        latest = max(newest.values(), key=lambda r: (r["received_at"], r["log_version"]), default=None)
        image_patient = latest["patient_id"] if latest else None
        merges = self.tables[MERGES]
        current = _follow(image_patient, {prior: str(m["patient_id"]) for prior, m in _by_prior(merges).items()})
        demographics = {
            attribute: row["value"]
            for (patient, attribute), row in self.tables[PATIENTS_TABLE].items()
            if patient == current
        }
        stages: dict[str, dict[str, Any]] = {}
        for key in sorted(k for k in self.tables[REPORTS_TABLE] if k[0] == study_uid):
            row = self.tables[REPORTS_TABLE][key]
            report = stages.setdefault(
                row["report_id"], {"report_id": row["report_id"], "drafts": [], "signed": None, "amendments": []}
            )
            if row["stage"] == "draft":
                report["drafts"].append(row)
            elif row["stage"] == "signed":
                report["signed"] = row
            else:
                report["amendments"].append(row)
        reports = [fold_report(stages[r]) for r in sorted(stages)]
        linked = _linked(image_patient, merges) if image_patient else set()
        return {
            "study_uid": study_uid,
            "known": bool(rows) or bool(reports),
            "events": self.events,
            "last_recorded_at": self.last_recorded_at,
            "instances": [_instance(newest[sop]) for sop in sorted(newest, key=lambda s: _order(newest[s]))],
            "versions": [_instance(r) for r in versions],
            "patient": {
                "patient_id": current,
                "patient_id_on_images": image_patient,
                "issuer_of_patient_id": demographics.get(
                    "IssuerOfPatientID", latest and latest["issuer_of_patient_id"]
                ),
                "patient_name": demographics.get("PatientName", latest and latest["patient_name"]),
                "patient_birth_date": demographics.get("PatientBirthDate", latest and latest["patient_birth_date"]),
                "patient_sex": demographics.get("PatientSex", latest and latest["patient_sex"]),
            },
            "merges": [
                {
                    "prior_patient_id": m["prior_patient_id"],
                    "patient_id": m["patient_id"],
                    "source": m["source"],
                    "merged_at": m["merged_at"],
                }
                for m in sorted(merges.values(), key=lambda m: m["merged_at"])
                if m["prior_patient_id"] in linked or m["patient_id"] in linked
            ],
            "reports": reports,
        }


def _order(row: Mapping[str, Any]) -> tuple[str, int, str]:
    return (row["series_uid"], row["instance_number"] or 0, row["sop_uid"])


def _instance(row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "series_uid": row["series_uid"],
        "sop_uid": row["sop_uid"],
        "version": row["version"],
        "modality": row["modality"],
        "instance_number": row["instance_number"],
        "blob_sha256": row["blob_sha256"],
        "blob_size": row["blob_size"],
        "organisation": row["organisation"],
        "channel": row["channel"],
        "received_at": row["received_at"],
    }


def _by_prior(merges: Mapping[tuple[Any, ...], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {str(key[0]): row for key, row in merges.items()}


def _follow(patient_id: str | None, edges: Mapping[str, str]) -> str | None:
    """The surviving ID at the end of ``patient_id``'s merge chain (cycles stop where they close)."""
    seen: set[str] = set()
    current = patient_id
    while current is not None and current in edges and current not in seen and len(seen) < MAX_MERGE_HOPS:
        seen.add(current)
        current = edges[current]
    return current


def _linked(patient_id: str, merges: Mapping[tuple[Any, ...], dict[str, Any]]) -> set[str]:
    """Every ID joined to ``patient_id`` by merges, either way."""
    edges = [(str(k[0]), str(row["patient_id"])) for k, row in merges.items()]
    return linked_ids({patient_id}, edges)


def linked_ids(start: Iterable[str], edges: Sequence[tuple[str, str]]) -> set[str]:
    group = set(start)
    for _ in range(MAX_MERGE_HOPS):
        grown = group | {b for a, b in edges if a in group} | {a for a, b in edges if b in group}
        if grown == group:
            break
        group = grown
    return group


def fold(events: Iterable[tuple[Event, Source]], study_uid: str, at: datetime) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pure: (the study at ``at``, the study after every event given). ``events`` in log order per
    partition; an event counts at ``at`` when the archive had recorded it by then."""
    then, now = Known(), Known()
    for event, source in events:
        now.apply(event, source)
        if event.envelope.recorded_at <= at:
            then.apply(event, source)
    return then.view(study_uid), now.view(study_uid)


def diff(then: Mapping[str, Any], now: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from ``then`` to ``now``: instances and versions added, patient fields, report
    texts and statuses, merges."""

    def keyed(items: Iterable[Mapping[str, Any]]) -> dict[tuple[str, int], Mapping[str, Any]]:
        return {(i["sop_uid"], i["version"]): i for i in items}

    old_versions, new_versions = keyed(then["versions"]), keyed(now["versions"])
    old_newest = {i["sop_uid"]: i["version"] for i in then["instances"]}
    new_newest = {i["sop_uid"]: i["version"] for i in now["instances"]}
    patient = {k: {"then": then["patient"][k], "now": v} for k, v in now["patient"].items() if then["patient"][k] != v}
    old_reports = {r["report_id"]: r for r in then["reports"]}
    reports = []
    for report in now["reports"]:
        before = old_reports.get(report["report_id"])
        changed = {
            k: {"then": before[k] if before else None, "now": report[k]}
            for k in ("status", "protocol_text", "conclusion_text")
            if (before[k] if before else None) != report[k]
        }
        if changed:
            reports.append({"report_id": report["report_id"], **changed})
    merges_then = {(m["prior_patient_id"], m["patient_id"]) for m in then["merges"]}
    return {
        "instances_added": sorted(set(new_newest) - set(old_newest)),
        "instances_replaced": sorted(s for s in set(new_newest) & set(old_newest) if new_newest[s] != old_newest[s]),
        "versions_added": [new_versions[k] for k in sorted(set(new_versions) - set(old_versions))],
        "patient": patient,
        "reports": reports,
        "merges_added": [m for m in now["merges"] if (m["prior_patient_id"], m["patient_id"]) not in merges_then],
        "events_after": now["events"] - then["events"],
    }


def parse_moment(text: str, *, end_of_day: bool = False) -> datetime:
    """An ISO 8601 moment (``2026-03-01T12:00:00+03:00``, ``...Z``; without a zone: UTC; a date
    alone: its start, or its last microsecond with ``end_of_day``). ValueError says what is wrong."""
    value = text.strip()
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return day.replace(hour=23, minute=59, second=59, microsecond=999_999) if end_of_day else day
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r} (e.g. 2026-03-01T12:00:00+03:00)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# -- reading the log -----------------------------------------------------------------------------
def _partition(event_log: EventLog, topic: str, partition: int, end: int) -> Iterator[Record]:
    offset = 0
    while offset < end:
        records = [r for r in event_log.read(topic, partition, offset, min(PAGE, end - offset)) if r.offset < end]
        if not records:
            return
        yield from records
        offset = records[-1].offset + 1


def _decoded(records: Iterable[Record]) -> Iterator[tuple[Event, Source]]:
    for record in records:
        try:
            event = decode(record.value)
        except CodecError:  # the audit check reports it; a state cannot use it
            continue
        yield event, Source(record.topic, record.partition, record.offset, record.value)


def study_events(event_log: EventLog, study_uid: str) -> Iterator[tuple[Event, Source]]:
    """The study's events and those of its patient's IDs (merges and demographics), in log order
    per partition, reading no more of the log than the module doc says."""
    key = study_uid.encode()
    ends = {t: event_log.end_offsets(t) for t in (DICOM, REPORTS, PATIENTS)}
    patient_ids: set[str] = set()
    for topic in (DICOM, REPORTS):
        partition = partition_for(key, len(ends[topic])) if ends[topic] else None
        if partition is None or partition not in ends[topic]:
            continue
        for event, source in _decoded(
            r for r in _partition(event_log, topic, partition, ends[topic][partition]) if r.key == key
        ):
            if event.payload.get("PatientID"):
                patient_ids.add(str(event.payload["PatientID"]))
            yield event, source
    if not patient_ids:
        return
    edges: list[tuple[str, str]] = []
    for partition, end in sorted(ends[PATIENTS].items()):
        for event, _ in _decoded(_partition(event_log, PATIENTS, partition, end)):
            if event.type == "PatientsMerged":
                edges.append((str(event.payload["PriorPatientID"]), str(event.payload["PatientID"])))
    linked = linked_ids(patient_ids, edges)
    for partition, end in sorted(ends[PATIENTS].items()):
        for event, source in _decoded(_partition(event_log, PATIENTS, partition, end)):
            ids = {event.payload.get("PatientID"), event.payload.get("PriorPatientID")}
            if ids & linked:
                yield event, source


def state_at(event_log: EventLog, study_uid: str, at: datetime) -> dict[str, Any]:
    """The study at ``at`` and now, and what changed between (raises :class:`UnknownRecord` when
    the log holds no event of the study)."""
    if at.tzinfo is None:
        raise ValueError("the moment must carry its time zone (parse it with parse_moment)")
    then, now = fold(study_events(event_log, study_uid), study_uid, at)
    if not now["known"]:
        raise UnknownRecord(f"the event log holds no instance or report of study {study_uid}")
    return {"record": study_uid, "at": at.astimezone(UTC), "then": then, "now": now, "diff": diff(then, now)}
