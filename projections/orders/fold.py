"""The orders read model: imaging orders from the MIS, their cancellations and the modalities'
performed procedure steps, as rows (pure: event in, rows out).

``orders``
    The order as last placed (OrderPlaced; an HL7 XO places it again, changed), one row per
    (placer application, placer order number): ReplacingMergeTree on the log offset (one order's
    events share its key, so its partition, so the offset orders them); every row carries its
    log position (topic, partition, offset).
``order_cancellations``
    The order's latest cancellation, same key. An order is cancelled when its cancellation comes
    later in the log than its placement (a cancelled order placed again is scheduled again).
``procedure_steps``
    One row per ProcedureStepChanged (MPPS N-CREATE, N-SET), keyed by the MPPS instance and
    the log position: an N-SET may carry only what changed, so the step's state is read by
    taking each attribute's latest non-empty value (:mod:`projections.orders.queries`).

What the order became -- images, reports -- is read from the archive index and the query model
by accession number and Study Instance UID, never copied here.
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import ORDERS as ORDERS_TOPIC

ORDERS = "orders"
CANCELLATIONS = "order_cancellations"
STEPS = "procedure_steps"

#: the columns of ``orders``, in order
ORDER_COLUMNS = (
    "placer_application", "placer_order_number", "accession_number", "study_uid", "requested_procedure_id",
    "scheduled_step_id", "patient_id", "issuer", "patient_name", "birth_date", "sex", "procedure_code",
    "procedure_scheme", "procedure_meaning", "step_description", "modality", "station_ae_title", "scheduled_start",
    "referring_name", "referring_code", "referring_organisation", "priority", "organisation", "placed_at", "topic",
    "partition", "offset",
)  # fmt: skip

DDL = (
    f"""
CREATE TABLE IF NOT EXISTS {ORDERS} (
    placer_application String,
    placer_order_number String,
    accession_number String,
    study_uid String,
    requested_procedure_id String,
    scheduled_step_id String,
    patient_id String,
    issuer Nullable(String),
    patient_name Nullable(String),
    birth_date Nullable(String),
    sex Nullable(String),
    procedure_code Nullable(String),
    procedure_scheme Nullable(String),
    procedure_meaning Nullable(String),
    step_description Nullable(String),
    modality Nullable(String),
    station_ae_title Nullable(String),
    scheduled_start Nullable(DateTime64(6, 'UTC')),
    referring_name Nullable(String),
    referring_code Nullable(String),
    referring_organisation Nullable(String),
    priority LowCardinality(String),
    organisation Nullable(String),
    placed_at DateTime64(6, 'UTC'),
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64
) ENGINE = ReplacingMergeTree(offset)
ORDER BY (placer_application, placer_order_number)
""",
    f"""
CREATE TABLE IF NOT EXISTS {CANCELLATIONS} (
    placer_application String,
    placer_order_number String,
    accession_number Nullable(String),
    reason Nullable(String),
    cancelled_at DateTime64(6, 'UTC'),
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64
) ENGINE = ReplacingMergeTree(offset)
ORDER BY (placer_application, placer_order_number)
""",
    f"""
CREATE TABLE IF NOT EXISTS {STEPS} (
    step_uid String,
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    status LowCardinality(String),
    study_uid Nullable(String),
    accession_number Nullable(String),
    patient_id Nullable(String),
    modality Nullable(String),
    station_ae_title Nullable(String),
    started Nullable(DateTime64(6, 'UTC')),
    ended Nullable(DateTime64(6, 'UTC')),
    series UInt32,
    instances UInt32,
    discontinuation_reason Nullable(String),
    changed_at DateTime64(6, 'UTC')
) ENGINE = ReplacingMergeTree
ORDER BY (step_uid, partition, offset)
""",
)


def _placer_application(event: Event) -> str:
    """The MIS an order belongs to; events written before the field existed name it as actor."""
    named = event.payload.get("placer_application")
    return str(named) if named else event.envelope.actor.user.removeprefix("hl7:")


def order_row(event: Event, source: Source) -> Row:
    p = event.payload
    return Row(
        ORDERS,
        {
            "placer_application": _placer_application(event),
            "placer_order_number": p["placer_order_number"],
            "accession_number": p.get("AccessionNumber") or "",
            "study_uid": p.get("StudyInstanceUID") or "",
            "requested_procedure_id": p.get("RequestedProcedureID") or "",
            "scheduled_step_id": p.get("ScheduledProcedureStepID") or "",
            "patient_id": p["PatientID"],
            "issuer": p.get("IssuerOfPatientID"),
            "patient_name": p.get("PatientName"),
            "birth_date": p.get("PatientBirthDate"),
            "sex": p.get("PatientSex"),
            "procedure_code": p.get("ProcedureCodeValue"),
            "procedure_scheme": p.get("ProcedureCodingScheme"),
            "procedure_meaning": p.get("ProcedureCodeMeaning"),
            "step_description": p.get("ScheduledProcedureStepDescription"),
            "modality": p.get("Modality"),
            "station_ae_title": p.get("ScheduledStationAETitle"),
            "scheduled_start": p.get("ScheduledProcedureStepStartDateTime"),
            "referring_name": p.get("ReferringPhysicianName"),
            "referring_code": p.get("ReferringPhysicianCode"),
            "referring_organisation": p.get("referring_organisation"),
            "priority": p.get("priority") or "ROUTINE",
            "organisation": event.envelope.organisation,
            "placed_at": event.envelope.recorded_at,
            **source.columns(),
        },
    )


def cancellation_row(event: Event, source: Source) -> Row:
    p = event.payload
    return Row(
        CANCELLATIONS,
        {
            "placer_application": _placer_application(event),
            "placer_order_number": p["placer_order_number"],
            "accession_number": p.get("AccessionNumber"),
            "reason": p.get("reason"),
            "cancelled_at": event.envelope.recorded_at,
            **source.columns(),
        },
    )


def step_row(event: Event, source: Source) -> Row:
    p = event.payload
    return Row(
        STEPS,
        {
            "step_uid": p["AffectedSOPInstanceUID"],
            **source.columns(),
            "status": p["PerformedProcedureStepStatus"],
            "study_uid": p.get("StudyInstanceUID"),
            "accession_number": p.get("AccessionNumber"),
            "patient_id": p.get("PatientID"),
            "modality": p.get("Modality"),
            "station_ae_title": p.get("PerformedStationAETitle"),
            "started": p.get("PerformedProcedureStepStartDateTime"),
            "ended": p.get("PerformedProcedureStepEndDateTime"),
            "series": p.get("number_of_series") or 0,
            "instances": p.get("number_of_instances") or 0,
            "discontinuation_reason": p.get("discontinuation_reason"),
            "changed_at": event.envelope.recorded_at,
        },
    )


_FOLDS = {"OrderPlaced": order_row, "OrderCancelled": cancellation_row, "ProcedureStepChanged": step_row}


class Orders:
    name = "orders"
    topics: Sequence[str] = (ORDERS_TOPIC,)
    ddl = DDL
    tables = (ORDERS, CANCELLATIONS, STEPS)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        fold = _FOLDS.get(event.type)
        return [fold(event, source)] if fold is not None else []
