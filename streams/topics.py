"""The archive's topics and which event goes where (declared once, used by every backend)."""

from __future__ import annotations

from streams.log import TopicSpec

DEFAULT_PARTITIONS = 6

DICOM = "cami.dicom"
REPORTS = "cami.reports"
ORDERS = "cami.orders"
TRANSFERS = "cami.transfers"
PATIENTS = "cami.patients"
ACCESS = "cami.access"

SOURCE_OF_TRUTH = (DICOM, REPORTS, ORDERS, TRANSFERS, PATIENTS, ACCESS)

#: event type -> topic. The event's aggregate id is the key: StudyInstanceUID for the study's
#: events (so they stay in order), the organisation for transfers, the PatientID for patients,
#: the placer order number for orders, the sending MIS for its refused messages.
TOPIC_OF_EVENT = {
    "InstanceReceived": DICOM,
    "InstanceRejected": DICOM,
    "AssociationRejected": DICOM,
    "ReportDrafted": REPORTS,
    "ReportEdited": REPORTS,
    "ReportSigned": REPORTS,
    "ReportAmended": REPORTS,
    "SecondOpinionRequested": REPORTS,
    "SecondOpinionAccepted": REPORTS,
    "ArbitrationRequested": REPORTS,
    "OrderPlaced": ORDERS,
    "OrderCancelled": ORDERS,
    "ProcedureStepChanged": ORDERS,
    "MessageRejected": ORDERS,
    "TransferQueued": TRANSFERS,
    "TransferStarted": TRANSFERS,
    "TransferCompleted": TRANSFERS,
    "TransferFailed": TRANSFERS,
    "AgentHeartbeat": TRANSFERS,
    "TransferRequested": TRANSFERS,
    "PatientUpdated": PATIENTS,
    "PatientsMerged": PATIENTS,
    "RecordAccessed": ACCESS,
}


def archive_topics(partitions: int = DEFAULT_PARTITIONS) -> list[TopicSpec]:
    """Source-of-truth topics: kept forever (retention -1), never compacted."""
    return [
        TopicSpec(name, partitions, retention_ms=-1, config={"retention.bytes": "-1", "cleanup.policy": "delete"})
        for name in SOURCE_OF_TRUTH
    ]


def topic_for(event_type: str) -> str:
    try:
        return TOPIC_OF_EVENT[event_type]
    except KeyError:
        raise KeyError(f"no topic for event type {event_type!r}") from None
