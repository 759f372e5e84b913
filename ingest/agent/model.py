"""What the agent's parts hand each other: held instances, queued studies, outbox events, and the
narrow face of the queue that the sources use (:class:`Intake`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol


class StudyState(StrEnum):
    #: held at the hospital, not eligible (no pathology mark, no request)
    LOCAL = "local"
    #: eligible; waits for its window or its turn
    QUEUED = "queued"
    SENDING = "sending"
    #: every instance committed by CAMI
    DELIVERED = "delivered"
    #: an attempt failed; goes again at ``next_attempt_at``
    RETRY = "retry"
    #: fails a regional hard rule: stays until ``cami agent requeue``
    HELD = "held"


class Priority(StrEnum):
    SCHEDULED = "scheduled"
    EMERGENCY = "emergency"


@dataclass(frozen=True)
class HeldInstance:
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    path: Path
    size: int
    sha256: str
    #: CAMI answered its C-STORE / STOW part with success (the resume point)
    sent: bool = False
    #: CAMI committed it (storage commitment or the hash check)
    committed: bool = False


@dataclass(frozen=True)
class StudyEntry:
    study_instance_uid: str
    patient_id: str | None
    accession: str | None
    state: StudyState
    priority: Priority
    pathology: bool = False
    full_import: bool = False
    request_id: str | None = None
    transfer_id: str | None = None
    attempt: int = 0
    next_attempt_at: datetime | None = None
    held_reason: str | None = None
    last_error: str | None = None
    instances: int = 0
    bytes: int = 0
    queued_at: datetime | None = None
    delivered_at: datetime | None = None


@dataclass(frozen=True)
class OutboxEvent:
    """A transfer event waiting to be posted to CAMI (oldest first, by ``seq``)."""

    seq: int
    event_id: str
    type: str
    occurred_at: datetime
    payload: dict[str, Any] = field(default_factory=dict)


class Intake(Protocol):
    """What a source needs of the queue (:class:`ingest.agent.queue.TransferQueue` is one)."""

    def accept(
        self,
        part10: bytes | Path,
        *,
        source: str,
        calling_ae_title: str | None = None,
        emergency: bool = False,
    ) -> HeldInstance:
        """Spool and queue one Part-10 object durably; raises ValueError (with a reason) for bytes that are
        not a DICOM object the agent can hold."""
        ...

    def mark_pathology(
        self,
        *,
        study_uid: str | None = None,
        accession: str | None = None,
        patient_id: str | None = None,
        source: str,
    ) -> list[str]:
        """Mark matching studies as pathology (now, and those arriving later); the studies now eligible."""
        ...

    def seen(self, study_uid: str) -> str | None:
        """The fingerprint the poller remembered for a study of the polled PACS, if any."""
        ...

    def remember_seen(self, study_uid: str, fingerprint: str) -> None: ...
