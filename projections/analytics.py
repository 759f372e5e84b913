"""Analytics: de-identified fact tables for the regional health authority's SQL (152-FZ).

The patient appears only as a keyed pseudonym, ``HMAC-SHA256(key, PatientID)`` in hex, with the key
from configuration (:class:`projections.registry.ProjectionConfig`): the same patient gets the same
pseudonym in every table and every organisation (so "patients examined at several organisations"
can be counted), and without the key the pseudonym cannot be computed back or confirmed from a known
ID. What never enters these tables: patient name, patient ID, birth date (an age band in years at
the study date instead), the names of any doctor (staff *codes* from the regional directory stay:
they identify staff, not patients), accession numbers and free text (report texts, error messages,
descriptions), which may carry anything. Study, instance, report and transfer identifiers are keyed
the same way (``HMAC(key, kind NUL id)``): the facts join with one another but not with the archive
index, which holds the patients' names.

**Idempotent under at-least-once delivery.** Each table holds one row per event, keyed by the
event's log position ``(topic, partition, offset)`` in a ReplacingMergeTree; a redelivered event
rewrites the identical row under the identical key. Queries read ``FINAL`` and aggregate, so counts
and sums are exact before and after background merges (a SummingMergeTree would double-count a
redelivered batch). The ORDER BY leads with what the authority groups by (organisation, then modality
or study), and ends with the log position, which makes the key unique; monthly partitions (an event
always lands in the same one) prune the usual month-range queries.

``analytics_studies`` is a view: one row per study, aggregated from the instance facts at query time,
so it is exactly as idempotent as they are.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from projections.archive_index.fold import column_date, dicom_date
from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM, PATIENTS, REPORTS, TRANSFERS

INSTANCES = "analytics_instances"
STUDIES = "analytics_studies"
REPORTS_TABLE = "analytics_reports"
TRANSFERS_TABLE = "analytics_transfers"
REJECTIONS = "analytics_rejections"
PATIENT_MERGES = "analytics_patient_merges"

_POSITION = """
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,"""

INSTANCES_DDL = f"""
CREATE TABLE IF NOT EXISTS {INSTANCES} ({_POSITION}
    organisation String,
    received_at DateTime64(6, 'UTC'),
    study_key FixedString(64),
    series_key FixedString(64),
    instance_key FixedString(64),
    version UInt16,
    patient_pseudonym FixedString(64),
    patient_sex LowCardinality(String),
    age_band LowCardinality(String),
    study_date Nullable(Date32),
    modality LowCardinality(String),
    sop_class_uid LowCardinality(String),
    transfer_syntax LowCardinality(String),
    bytes UInt64,
    body_part LowCardinality(String),
    procedure_code LowCardinality(String),
    procedure_meaning String,
    doctor_code String,
    pathology UInt8,
    emergency UInt8,
    missing Array(String),
    channel LowCardinality(String),
    calling_ae_title String,
    called_ae_title String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (organisation, modality, received_at, topic, partition, offset)
"""

#: tables made when study_date was a Date (1970..2149): widened in place when the sink starts
INSTANCES_UPGRADE = f"ALTER TABLE {INSTANCES} MODIFY COLUMN study_date Nullable(Date32)"

#: one row per study; its attributes, ``missing`` and ``incomplete`` describe its most recent object
#: (a re-sent object that carries the attributes completes the package and supplies them); its
#: events are in one log partition (the study UID is their key), so the offset orders them and the
#: choice is the same on every read (``any`` would pick whichever part the engine reads first).
#: ``OR REPLACE``: the sink runs the DDL at start, so a changed definition reaches existing warehouses.
STUDIES_DDL = f"""
CREATE OR REPLACE VIEW {STUDIES} AS
SELECT
    study_key,
    argMax(organisation, (received_at, offset)) AS organisation,
    argMax(patient_pseudonym, (received_at, offset)) AS patient_pseudonym,
    argMax(patient_sex, (received_at, offset)) AS patient_sex,
    argMax(age_band, (received_at, offset)) AS age_band,
    argMax(modality, (received_at, offset)) AS modality,
    argMax(body_part, (received_at, offset)) AS body_part,
    argMax(procedure_code, (received_at, offset)) AS procedure_code,
    argMax(procedure_meaning, (received_at, offset)) AS procedure_meaning,
    argMax(doctor_code, (received_at, offset)) AS doctor_code,
    argMax(study_date, (received_at, offset)) AS study_date,
    argMax(calling_ae_title, (received_at, offset)) AS calling_ae_title,
    min(received_at) AS first_received_at,
    max(received_at) AS last_received_at,
    uniqExact(series_key) AS series,
    uniqExact(instance_key) AS instances,
    sum(bytes) AS bytes,
    max(pathology) AS pathology,
    max(emergency) AS emergency,
    argMax(missing, (received_at, offset)) AS missing,
    notEmpty(missing) AS incomplete  -- the alias above: the study's latest object
FROM {INSTANCES} FINAL
GROUP BY study_key
"""

#: stage: drafted, edited, signed, amended; ``at`` is the signing time for signed (the archive's
#: clock), the amendment time for amended, else when the event occurred.
REPORTS_DDL = f"""
CREATE TABLE IF NOT EXISTS {REPORTS_TABLE} ({_POSITION}
    organisation String,
    at DateTime64(6, 'UTC'),
    study_key FixedString(64),
    report_key FixedString(64),
    patient_pseudonym Nullable(FixedString(64)),
    stage LowCardinality(String),
    revision UInt32,
    amendment_number UInt32,
    clinician_code String,
    source LowCardinality(String),
    reading LowCardinality(String),
    assessment LowCardinality(String)
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (organisation, study_key, topic, partition, offset)
"""
#: warehouses made before double reading: its two columns (empty on the rows already there)
REPORTS_UPGRADE = (
    f"ALTER TABLE {REPORTS_TABLE} ADD COLUMN IF NOT EXISTS reading LowCardinality(String),"
    " ADD COLUMN IF NOT EXISTS assessment LowCardinality(String)"
)

#: stage: queued, started, completed, failed (one row per event of the transfer).
TRANSFERS_DDL = f"""
CREATE TABLE IF NOT EXISTS {TRANSFERS_TABLE} ({_POSITION}
    organisation String,
    at DateTime64(6, 'UTC'),
    transfer_key FixedString(64),
    study_key Nullable(FixedString(64)),
    stage LowCardinality(String),
    attempt UInt32,
    instances UInt32,
    bytes UInt64,
    duration_ms UInt64,
    priority LowCardinality(String),
    pathology UInt8,
    full_import UInt8,
    will_retry UInt8,
    source_ae_title String,
    destination String
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (organisation, transfer_key, topic, partition, offset)
"""

#: kind: instance (an object refused) or association (a caller refused before sending anything).
REJECTIONS_DDL = f"""
CREATE TABLE IF NOT EXISTS {REJECTIONS} ({_POSITION}
    organisation String,
    at DateTime64(6, 'UTC'),
    kind LowCardinality(String),
    reason LowCardinality(String),
    status UInt32,
    channel LowCardinality(String),
    calling_ae_title String,
    received_bytes UInt64
) ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(at)
ORDER BY (organisation, reason, topic, partition, offset)
"""

#: a PatientsMerged event: facts under ``prior_pseudonym`` belong to the patient ``pseudonym``.
MERGES_DDL = f"""
CREATE TABLE IF NOT EXISTS {PATIENT_MERGES} ({_POSITION}
    at DateTime64(6, 'UTC'),
    prior_pseudonym FixedString(64),
    pseudonym FixedString(64)
) ENGINE = ReplacingMergeTree
ORDER BY (prior_pseudonym, topic, partition, offset)
"""

AGE_BAND_YEARS = 5
UNKNOWN = "unknown"


def pseudonym(key: bytes, patient_id: str) -> str:
    """The patient's pseudonym: HMAC-SHA256(key, PatientID), hex."""
    return hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()


def keyed(key: bytes, kind: str, identifier: str) -> str:
    """A keyed stand-in for a study/series/instance/report/transfer id (separate domain per kind)."""
    return hmac.new(key, f"{kind}\x00{identifier}".encode(), hashlib.sha256).hexdigest()


def age_band(birth_date: str | None, on: date) -> str:
    """``"40-44"`` (5-year bands, zero-padded so they sort: ``"05-09"``), ``"90+"``, or ``"unknown"``."""
    born = dicom_date(birth_date)
    if born is None or born > on:
        return UNKNOWN
    years = on.year - born.year - ((on.month, on.day) < (born.month, born.day))
    if years >= 90:
        return "90+"
    low = years - years % AGE_BAND_YEARS
    return f"{low:02d}-{low + AGE_BAND_YEARS - 1:02d}"


class Analytics:
    name = "analytics"
    topics: Sequence[str] = (DICOM, REPORTS, TRANSFERS, PATIENTS)
    ddl = (
        INSTANCES_DDL,
        INSTANCES_UPGRADE,
        STUDIES_DDL,
        REPORTS_DDL,
        REPORTS_UPGRADE,
        TRANSFERS_DDL,
        REJECTIONS_DDL,
        MERGES_DDL,
    )
    #: the tables a rebuild drops and refills (the studies view reads them and needs no rebuild)
    tables = (INSTANCES, REPORTS_TABLE, TRANSFERS_TABLE, REJECTIONS, PATIENT_MERGES)

    def __init__(self, pseudonym_key: bytes) -> None:
        if not pseudonym_key:
            raise ValueError("analytics needs a non-empty pseudonym key")
        self._key = pseudonym_key

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        t = event.type
        if t == "InstanceReceived":
            return [self._instance(event, source)]
        if t in ("ReportDrafted", "ReportEdited", "ReportSigned", "ReportAmended"):
            return [self._report(event, source)]
        if t in ("TransferQueued", "TransferStarted", "TransferCompleted", "TransferFailed"):
            # a TransferRequested is a request, not a transfer: no row (it names a patient)
            return [self._transfer(event, source)]
        if t in ("InstanceRejected", "AssociationRejected"):
            return [self._rejection(event, source)]
        if t == "PatientsMerged":
            p = event.payload
            return [
                Row(
                    PATIENT_MERGES,
                    {
                        **source.columns(),
                        "at": event.envelope.occurred_at,
                        "prior_pseudonym": pseudonym(self._key, p["PriorPatientID"]),
                        "pseudonym": pseudonym(self._key, p["PatientID"]),
                    },
                )
            ]
        return []  # orders, procedure steps, patient updates, accesses: not analytics facts

    def _instance(self, event: Event, source: Source) -> Row:
        p, env = event.payload, event.envelope
        received: datetime = env.occurred_at
        # a StudyDate that is no usable date (18991231, 00000000...) is NULL here, never a refused row
        study_date = column_date(p.get("StudyDate"))
        doctor = p.get("PerformingPhysician") or {}
        return Row(
            INSTANCES,
            {
                **source.columns(),
                "organisation": env.organisation or "",
                "received_at": received,
                "study_key": keyed(self._key, "study", p["StudyInstanceUID"]),
                "series_key": keyed(self._key, "series", p["SeriesInstanceUID"]),
                "instance_key": keyed(self._key, "instance", p["SOPInstanceUID"]),
                "version": p.get("version") or 1,
                "patient_pseudonym": pseudonym(self._key, p["PatientID"]),
                "patient_sex": p.get("PatientSex") or UNKNOWN,
                "age_band": age_band(p.get("PatientBirthDate"), study_date or received.astimezone(UTC).date()),
                "study_date": study_date,
                "modality": p.get("Modality") or "",
                "sop_class_uid": p["SOPClassUID"],
                "transfer_syntax": p["TransferSyntaxUID"],
                "bytes": p["blob"]["size"],
                "body_part": p.get("BodyPartExamined") or "",
                "procedure_code": p.get("ProcedureCodeValue") or "",
                "procedure_meaning": p.get("ProcedureCodeMeaning") or "",
                "doctor_code": doctor.get("code") or "",
                "pathology": int(bool(p.get("pathology"))),
                "emergency": int(bool(p.get("emergency"))),
                "missing": list(p.get("missing") or []),
                "channel": p.get("channel") or "",
                "calling_ae_title": p.get("calling_ae_title") or "",
                "called_ae_title": p.get("called_ae_title") or "",
            },
        )

    def _report(self, event: Event, source: Source) -> Row:
        p, env = event.payload, event.envelope
        t = event.type
        at: datetime = env.occurred_at
        clinician: dict[str, Any] = {}
        if t == "ReportDrafted":
            clinician = p.get("author") or {}
        elif t == "ReportEdited":
            clinician = p.get("editor") or {}
        elif t == "ReportSigned":
            clinician, at = p.get("signer") or {}, p["signed_at"]
        else:
            clinician, at = p.get("amended_by") or {}, p["amended_at"]
        patient_id = p.get("PatientID")
        return Row(
            REPORTS_TABLE,
            {
                **source.columns(),
                "organisation": env.organisation or "",
                "at": at,
                "study_key": keyed(self._key, "study", p["StudyInstanceUID"]),
                "report_key": keyed(self._key, "report", p["report_id"]),
                "patient_pseudonym": pseudonym(self._key, patient_id) if patient_id else None,
                "stage": t.removeprefix("Report").lower(),
                "revision": p.get("revision") or 0,
                "amendment_number": p.get("amendment_number") or 0,
                "clinician_code": clinician.get("code") or "",
                "source": p.get("source") or ("http" if t in ("ReportDrafted", "ReportSigned") else ""),
                # what reading it is and its finding's code (double reading's concordance); no text
                "reading": p.get("reading") or "",
                "assessment": (p.get("assessment") or "").casefold(),
            },
        )

    def _transfer(self, event: Event, source: Source) -> Row:
        p, env = event.payload, event.envelope
        t = event.type
        study = p.get("StudyInstanceUID")
        return Row(
            TRANSFERS_TABLE,
            {
                **source.columns(),
                "organisation": env.organisation or "",
                "at": env.occurred_at,
                "transfer_key": keyed(self._key, "transfer", p["transfer_id"]),
                "study_key": keyed(self._key, "study", study) if study else None,
                "stage": t.removeprefix("Transfer").lower(),
                "attempt": p.get("attempt") or 0,
                "instances": p.get("instances") or p.get("instances_sent") or 0,
                "bytes": p.get("bytes") or p.get("bytes_sent") or 0,
                "duration_ms": p.get("duration_ms") or 0,
                "priority": p.get("priority") or "",
                "pathology": int(bool(p.get("pathology"))),
                "full_import": int(bool(p.get("full_import"))),
                "will_retry": int(bool(p.get("will_retry"))),
                "source_ae_title": p.get("source_ae_title") or "",
                "destination": p.get("destination") or "",
            },
        )

    def _rejection(self, event: Event, source: Source) -> Row:
        p, env = event.payload, event.envelope
        instance = event.type == "InstanceRejected"
        return Row(
            REJECTIONS,
            {
                **source.columns(),
                "organisation": env.organisation or "",
                "at": env.occurred_at,
                "kind": "instance" if instance else "association",
                "reason": p["reason"],
                "status": p["status"] if instance else 0,
                "channel": p["channel"] if instance else "dicom",
                "calling_ae_title": p.get("calling_ae_title") or "",
                "received_bytes": p.get("received_bytes") or 0,
            },
        )
