"""Archive index: what the archive holds, at instance level, plus the study and patient facts that
instances cannot tell (reports, demographics updates, merges). Pure: event in, rows out.

Tables (DDL below) and why they look the way they do:

``archive_instances``
    One row per (StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID, version): every attribute a
    DICOM query needs (patient, study, series, instance), the blob location, who sent it and the
    package marks. Nothing is deleted: a second version of an SOP instance is a second row, and
    the query layer reads the newest. ``ORDER BY (study_uid, series_uid, sop_uid, version)``
    because the hot reads are "the series of a study" and "the instances of a series" (range scans
    on a key prefix) and a study's rows sit together for the study-level GROUP BY; look-ups by
    patient, accession or SOP UID use bloom-filter skipping indexes.

``archive_reports``
    One row per report stage: ``draft`` (ReportDrafted/ReportEdited, seq = revision), ``signed``
    (seq = revision) and ``amendment`` (seq = amendment number). A stage row is complete in
    itself (texts, clinician, time), so the report's state is the fold of its stage rows, done by
    the query layer: status amended > signed > draft, current texts = latest amendment's "after",
    else the signed texts, else the latest draft. Ordered by study first: reports are read per
    study.

``archive_patients``
    Latest demographics from PatientUpdated, one row per (patient, attribute). PatientUpdated
    says "null = unchanged", so an event only carries the attributes it changes; keying by
    attribute lets each one be replaced independently without reading the table.

``archive_patient_merges``
    PatientsMerged: prior ID -> surviving ID, one row per prior ID (its latest merge wins).

Deduplication under at-least-once delivery: every table is a ``ReplacingMergeTree(log_version)``
keyed by the *natural* key, not by the event id, so a redelivered event (same log position) and
a producer retry that appended the same fact twice (two positions) both collapse to one row under
``FINAL``. ``log_version`` decides which duplicate survives and is a pure function of the event and
its log position, so a rebuild from offset 0 keeps exactly the same row:

* instances and reports: the log offset. Their topics are keyed by StudyInstanceUID, so every
  event of one key lives in one partition where offsets are the log's order.
* demographics: the log offset (``cami.patients`` is keyed by PatientID, one partition per patient).
* merges: the archive's ``recorded_at`` clock in microseconds. Merge events are keyed by the
  *surviving* ID, so two merges of one prior ID may sit in different partitions whose offsets
  cannot be compared; the archive clock can.

InstanceRejected events are not indexed (nothing was stored); other event types on these topics
yield no rows.

Study and series views (counts, modalities in study, size, sending organisations, completeness)
are *not* stored: the read side (:mod:`projections.archive_index.views`) computes them with a GROUP BY over
``FINAL`` of the newest instance versions. A stored study row would need the previous state (a
count, a union of modalities) that a pure one-event fold does not have, and a summing
materialised view double-counts redelivered rows before the merge deduplicates them. The
GROUP BY is exact, is always consistent with the instance rows, and reads one study's rows by the
primary key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM, PATIENTS, REPORTS

INSTANCES = "archive_instances"
REPORTS_TABLE = "archive_reports"
PATIENTS_TABLE = "archive_patients"
MERGES = "archive_patient_merges"

#: what a study lacks while it has no signed report (joins the instances' ``missing``)
REPORT_MISSING = "Report"

#: demographic attributes a PatientUpdated may change (null = unchanged)
DEMOGRAPHICS = ("IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex")

INSTANCES_DDL = f"""
CREATE TABLE IF NOT EXISTS {INSTANCES} (
    study_uid String,
    series_uid String,
    sop_uid String,
    version UInt32,
    patient_id String,
    issuer_of_patient_id Nullable(String),
    patient_name Nullable(String),
    patient_birth_date Nullable(String),
    patient_sex Nullable(String),
    study_date Nullable(Date32),
    study_date_text Nullable(String),
    study_time Nullable(String),
    study_id Nullable(String),
    study_description Nullable(String),
    accession_number Nullable(String),
    referring_physician Nullable(String),
    institution_name Nullable(String),
    performing_physician_code Nullable(String),
    performing_physician_name Nullable(String),
    procedure_code Nullable(String),
    procedure_scheme Nullable(String),
    procedure_meaning Nullable(String),
    series_number Nullable(Int32),
    series_description Nullable(String),
    modality LowCardinality(String),
    body_part LowCardinality(String),
    instance_number Nullable(Int32),
    sop_class_uid LowCardinality(String),
    transfer_syntax_uid LowCardinality(String),
    rows Nullable(Int32),
    columns Nullable(Int32),
    frames Nullable(Int32),
    blob_sha256 String,
    blob_size UInt64,
    blob_store LowCardinality(String),
    organisation LowCardinality(String),
    calling_ae_title Nullable(String),
    channel LowCardinality(String),
    pathology Bool,
    emergency Bool,
    missing Array(String),
    received_at DateTime64(6, 'UTC'),
    event_id UUID,
    topic LowCardinality(String),
    partition UInt16,
    log_version UInt64,
    INDEX patient_idx patient_id TYPE bloom_filter GRANULARITY 4,
    INDEX sop_idx sop_uid TYPE bloom_filter GRANULARITY 4,
    INDEX accession_idx accession_number TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree(log_version)
ORDER BY (study_uid, series_uid, sop_uid, version)
"""

#: tables created before ``study_date`` was a checked Date32 with its text beside it: brought up
#: to date in place when the sink starts (both statements are no-ops once applied)
INSTANCES_UPGRADE = (
    f"ALTER TABLE {INSTANCES} ADD COLUMN IF NOT EXISTS study_date_text Nullable(String) AFTER study_date",
    f"ALTER TABLE {INSTANCES} MODIFY COLUMN study_date Nullable(Date32)",
)

REPORTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {REPORTS_TABLE} (
    study_uid String,
    report_id String,
    stage LowCardinality(String),
    seq UInt32,
    accession_number Nullable(String),
    patient_id Nullable(String),
    protocol_text String,
    conclusion_text String,
    protocol_before Nullable(String),
    conclusion_before Nullable(String),
    reason Nullable(String),
    clinician_code Nullable(String),
    clinician_name Nullable(String),
    at DateTime64(6, 'UTC'),
    content_sha256 Nullable(String),
    source Nullable(String),
    organisation LowCardinality(String),
    event_type LowCardinality(String),
    event_id UUID,
    recorded_at DateTime64(6, 'UTC'),
    topic LowCardinality(String),
    partition UInt16,
    log_version UInt64
) ENGINE = ReplacingMergeTree(log_version)
ORDER BY (study_uid, report_id, stage, seq)
"""

PATIENTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {PATIENTS_TABLE} (
    patient_id String,
    attribute LowCardinality(String),
    value String,
    source LowCardinality(String),
    updated_at DateTime64(6, 'UTC'),
    event_id UUID,
    topic LowCardinality(String),
    partition UInt16,
    log_version UInt64
) ENGINE = ReplacingMergeTree(log_version)
ORDER BY (patient_id, attribute)
"""

MERGES_DDL = f"""
CREATE TABLE IF NOT EXISTS {MERGES} (
    prior_patient_id String,
    prior_issuer Nullable(String),
    patient_id String,
    issuer Nullable(String),
    source LowCardinality(String),
    merged_at DateTime64(6, 'UTC'),
    event_id UUID,
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    log_version UInt64,
    INDEX surviving_idx patient_id TYPE bloom_filter GRANULARITY 4
) ENGINE = ReplacingMergeTree(log_version)
ORDER BY prior_patient_id
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def dicom_date(value: str | None) -> date | None:
    """DICOM DA (``YYYYMMDD``, also the old ``YYYY.MM.DD``) -> date; anything else -> None."""
    if not value:
        return None
    text = value.strip().replace(".", "")
    if len(text) != 8 or not text.isdigit():
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


#: the range of ClickHouse's ``Date32`` (``Date`` is only 1970..2149, which would lose studies of
#: digitised film archives); outside it a value is undefined, so it is refused here
DATE32_MIN = date(1900, 1, 1)
DATE32_MAX = date(2299, 12, 31)


def column_date(value: str | None) -> date | None:
    """A DICOM DA for a ``Nullable(Date32)`` column: the date if it parses and fits, else None.

    Values from the wire are whatever the sender wrote (``18991231``, ``00000000``, ``2024-1-5``);
    none of them may make an insert fail and drop the instance from the index. Tables keep the
    text as received beside the date (``study_date_text``): a NULL date with a text is the flag
    "present but not a usable date"; queries by date simply do not match it."""
    parsed = dicom_date(value)
    if parsed is None or not DATE32_MIN <= parsed <= DATE32_MAX:
        return None
    return parsed


def _instance(event: Event, source: Source) -> list[Row]:
    p = event.payload
    env = event.envelope
    doctor: Mapping[str, Any] = p.get("PerformingPhysician") or {}
    blob: Mapping[str, Any] = p["blob"]
    values = {
        "study_uid": p["StudyInstanceUID"],
        "series_uid": p["SeriesInstanceUID"],
        "sop_uid": p["SOPInstanceUID"],
        "version": int(p.get("version") or 1),
        "patient_id": p["PatientID"],
        "issuer_of_patient_id": p.get("IssuerOfPatientID"),
        "patient_name": p.get("PatientName"),
        "patient_birth_date": p.get("PatientBirthDate"),
        "patient_sex": p.get("PatientSex"),
        "study_date": column_date(p.get("StudyDate")),
        "study_date_text": p.get("StudyDate"),
        "study_time": p.get("StudyTime"),
        "study_id": p.get("StudyID"),
        "study_description": p.get("StudyDescription"),
        "accession_number": p.get("AccessionNumber"),
        "referring_physician": p.get("ReferringPhysicianName"),
        "institution_name": p.get("InstitutionName"),
        "performing_physician_code": doctor.get("code"),
        "performing_physician_name": doctor.get("name"),
        "procedure_code": p.get("ProcedureCodeValue"),
        "procedure_scheme": p.get("ProcedureCodingScheme"),
        "procedure_meaning": p.get("ProcedureCodeMeaning"),
        "series_number": p.get("SeriesNumber"),
        "series_description": p.get("SeriesDescription"),
        "modality": p.get("Modality") or "",
        "body_part": p.get("BodyPartExamined") or "",
        "instance_number": p.get("InstanceNumber"),
        "sop_class_uid": p["SOPClassUID"],
        "transfer_syntax_uid": p["TransferSyntaxUID"],
        "rows": p.get("Rows"),
        "columns": p.get("Columns"),
        "frames": p.get("NumberOfFrames"),
        "blob_sha256": blob["sha256"],
        "blob_size": int(blob["size"]),
        "blob_store": blob["store"],
        "organisation": env.organisation or "",
        "calling_ae_title": p.get("calling_ae_title"),
        "channel": p.get("channel") or "",
        "pathology": bool(p.get("pathology")),
        "emergency": bool(p.get("emergency")),
        "missing": sorted(set(p.get("missing") or ())),
        "received_at": env.recorded_at,
        "event_id": env.event_id,
        **source.columns(offset=False),
        "log_version": source.offset,
    }
    return [Row(INSTANCES, values)]


def _report(
    stage: str, seq: int, texts: tuple[str, str], clinician_field: str, at_field: str | None
) -> Callable[[Event, Source], list[Row]]:
    def rows(event: Event, source: Source) -> list[Row]:
        p = event.payload
        env = event.envelope
        clinician: Mapping[str, Any] = p.get(clinician_field) or {}
        at = p[at_field] if at_field else env.occurred_at
        amendment = stage == "amendment"
        values = {
            "study_uid": p["StudyInstanceUID"],
            "report_id": p["report_id"],
            "stage": stage,
            "seq": int(p["amendment_number"] if amendment else p.get("revision") or seq),
            "accession_number": p.get("AccessionNumber"),
            "patient_id": p.get("PatientID"),
            "protocol_text": p[texts[0]],
            "conclusion_text": p[texts[1]],
            "protocol_before": p["protocol_before"] if amendment else None,
            "conclusion_before": p["conclusion_before"] if amendment else None,
            "reason": p["reason"] if amendment else None,
            "clinician_code": clinician.get("code"),
            "clinician_name": clinician.get("name"),
            "at": at,
            "content_sha256": p.get("content_sha256"),
            "source": p.get("source"),
            "organisation": env.organisation or "",
            "event_type": env.event_type,
            "event_id": env.event_id,
            "recorded_at": env.recorded_at,
            **source.columns(offset=False),
            "log_version": source.offset,
        }
        return [Row(REPORTS_TABLE, values)]

    return rows


def _patient_updated(event: Event, source: Source) -> list[Row]:
    p = event.payload
    env = event.envelope
    return [
        Row(
            PATIENTS_TABLE,
            {
                "patient_id": p["PatientID"],
                "attribute": attribute,
                "value": p[attribute],
                "source": p.get("source") or "",
                "updated_at": env.recorded_at,
                "event_id": env.event_id,
                **source.columns(offset=False),
                "log_version": source.offset,
            },
        )
        for attribute in DEMOGRAPHICS
        if p.get(attribute) is not None
    ]


def _patients_merged(event: Event, source: Source) -> list[Row]:
    p = event.payload
    env = event.envelope
    if p["PriorPatientID"] == p["PatientID"]:
        return []  # a merge of a record into itself changes nothing (and would make a cycle)
    return [
        Row(
            MERGES,
            {
                "prior_patient_id": p["PriorPatientID"],
                "prior_issuer": p.get("PriorIssuerOfPatientID"),
                "patient_id": p["PatientID"],
                "issuer": p.get("IssuerOfPatientID"),
                "source": p.get("source") or "",
                "merged_at": env.recorded_at,
                "event_id": env.event_id,
                **source.columns(),
                "log_version": _micros(env.recorded_at),
            },
        )
    ]


_HANDLERS: Mapping[str, Callable[[Event, Source], list[Row]]] = {
    "InstanceReceived": _instance,
    "ReportDrafted": _report("draft", 1, ("protocol_text", "conclusion_text"), "author", None),
    "ReportEdited": _report("draft", 1, ("protocol_text", "conclusion_text"), "editor", None),
    "ReportSigned": _report("signed", 1, ("protocol_text", "conclusion_text"), "signer", "signed_at"),
    "ReportAmended": _report("amendment", 1, ("protocol_after", "conclusion_after"), "amended_by", "amended_at"),
    "PatientUpdated": _patient_updated,
    "PatientsMerged": _patients_merged,
}


class ArchiveIndex:
    """The archive index projection (``archive-index``)."""

    name = "archive-index"
    topics: Sequence[str] = (DICOM, REPORTS, PATIENTS)
    ddl = (INSTANCES_DDL, *INSTANCES_UPGRADE, REPORTS_DDL, PATIENTS_DDL, MERGES_DDL)
    tables = (INSTANCES, REPORTS_TABLE, PATIENTS_TABLE, MERGES)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        handler = _HANDLERS.get(event.type)
        return handler(event, source) if handler is not None else []
