"""The archive's topics and which event goes where (declared once, used by every backend).

The code names topics and consumer groups ``cami.<name>`` (``cami.dicom``, ``cami.archive-index``,
``cami-processors``). On Kafka, where several archives (or a demo beside an archive) may share a
cluster, the log puts them under a prefix of its own: :class:`TopicNames` maps the name the code
uses to the name on the broker and back (``CAMI_TOPIC_PREFIX``, the ``topic_prefix`` option of a
``kafka://`` URL; ``cami`` by default, which changes nothing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streams.log import TopicSpec

DEFAULT_PARTITIONS = 6
#: the first part of every topic and consumer group name the code uses
ARCHIVE_PREFIX = "cami"
#: what a prefix may hold: Kafka's topic name characters, short enough for ``.transfers`` after it
_PREFIX = re.compile(r"^[A-Za-z0-9._-]{1,200}$")

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


def check_topic_prefix(prefix: str) -> str:
    """``prefix`` when Kafka can name topics with it (letters, digits, ``.``, ``_``, ``-``; 1-200
    characters), else ValueError saying what is allowed."""
    if not _PREFIX.match(prefix) or prefix in (".", ".."):
        raise ValueError(f"{prefix!r} is not a topic prefix: 1-200 letters, digits, '.', '_' or '-' (e.g. cami-demo)")
    return prefix


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The archive's names (``cami.dicom``, ``cami.<projection>``, ``cami-processors``) on a log
    whose own names start with ``prefix`` instead (``cami-demo.dicom``...). Names that are not the
    archive's (no ``cami`` followed by ``.`` or ``-``) are left as they are."""

    prefix: str = ARCHIVE_PREFIX

    def __post_init__(self) -> None:
        check_topic_prefix(self.prefix)

    @property
    def identity(self) -> bool:
        return self.prefix == ARCHIVE_PREFIX

    def physical(self, name: str) -> str:
        """The name on the log of what the code calls ``name``."""
        return name if self.identity else _swap(name, ARCHIVE_PREFIX, self.prefix)

    def logical(self, name: str) -> str:
        """What the code calls the log's ``name`` (the inverse of :meth:`physical`)."""
        return name if self.identity else _swap(name, self.prefix, ARCHIVE_PREFIX)


def _swap(name: str, old: str, new: str) -> str:
    if name.startswith(old) and name[len(old) : len(old) + 1] in (".", "-"):
        return new + name[len(old) :]
    return name
