"""Who may read what, and the record-accessed event every read of patient data leaves (152-FZ).

One policy for every read channel (DICOMweb, WADO-URI, the study page, DICOM Q/R): the role
decides the kind of data a user may see, the organisation scope which studies.

===================  ====================================================================
role                 may read
===================  ====================================================================
radiologist          patient data and images of every study in the region
referring-doctor     patient data and images of every study in the region (the MIS link)
administrator        everything
auditor              patient data (to investigate an access), not images
regional-it          monitoring only: no patient data, no images
analyst              de-identified analytics only: no patient identity, no images
modality             nothing (it sends; STOW-RS only)
agent                nothing (a hospital's transfer agent: STOW-RS, its transfer events,
                     its organisation's full-import requests, hash checks of what it sent)
===================  ====================================================================

**Draft reports** are their author's work in progress: their texts are shown only to their
author and to radiologists (:func:`may_read_draft_text`); every other reader (referring doctor,
auditor, administrator) sees that a draft exists, not what it says, on the study page and in the
reports API alike. Signed reports are read by every patient-data role. Only a draft's author
signs it (see :mod:`ingest.reports`).

A user with an ``organisation`` in the users file is still a *regional* reader: the archive's
purpose is that a doctor anywhere in the region opens any patient's studies. The organisation is
recorded in each access event, so an auditor sees which organisation's staff read what.

**Every read is recorded before the data leaves.** :meth:`AccessRecorder.record` appends one
RecordAccessed event and returns only once it is durable; if the event log cannot take it, the
read fails (503) instead of handing out patient data that no one could trace. A refused read
(403, unknown AE title) is recorded too, with ``outcome = "denied"`` and no result count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from schemas.events import Actor, Event, new_event
from schemas.policy import Action, may
from streams.log import EventLog, EventLogUnavailable, Position
from streams.publisher import publish, publish_async
from streams.topics import topic_for

#: how long a read waits for its access event to become durable before it fails (as EventLog.append)
APPEND_TIMEOUT = 30.0

#: what ``action`` and ``channel`` say in a RecordAccessed event
#: (``report``: a transfer agent posting its events, recorded when its token is refused;
#: ``request``: any other state-changing call a role was refused; channel ``web``: a page other
#: than the study page and the auditor's pages; ``mwl``: the modality worklist, a C-FIND of its own model)
ACTIONS = ("query", "view", "retrieve", "download", "move", "get", "report", "request")
CHANNELS = (
    "qido-rs",
    "wado-rs",
    "wado-uri",
    "study-page",
    "c-find",
    "c-move",
    "c-get",
    "mwl",
    "api",
    "web",
    "stow-rs",
    "audit-page",
)


class AccessDenied(Exception):
    """The caller's role may not read this kind of data (HTTP 403, DICOM refused)."""


def may_read_draft_text(role: str, is_author: bool) -> bool:
    """Whether a reader sees a draft report's texts (everyone with patient data sees it exists)."""
    return is_author or may(role, Action.READ_DRAFTS)


@dataclass(frozen=True)
class Reader:
    """Who is reading, as the access event records it."""

    actor: Actor
    organisation: str | None = None
    remote_address: str | None = None

    @property
    def role(self) -> str:
        return self.actor.role


def aggregate_for(study_uid: str | None, patient_id: str | None, reader: Reader) -> str:
    """The record an access belongs to (the log key, and the audit trail's record): the study when
    one is named, else the patient, else the reader's own query history."""
    return study_uid or patient_id or f"reader:{reader.actor.user}"


def query_text(parameters: Mapping[str, Any]) -> str:
    """The query as asked, stable (sorted keys) so equal queries read the same in the audit trail."""
    return json.dumps({k: parameters[k] for k in sorted(parameters)}, ensure_ascii=False, default=str)


def access_channel(method: str, path: str) -> str:
    """The channel a RecordAccessed event names for an HTTP request (``method`` to ``path``)."""
    if path.startswith("/dicomweb/"):
        if method not in ("GET", "HEAD"):
            return "stow-rs"
        return "qido-rs" if path.rstrip("/").rsplit("/", 1)[-1] in ("studies", "series", "instances") else "wado-rs"
    if path == "/wado":
        return "wado-uri"
    if path == "/study":
        return "study-page"
    return "api" if path.startswith("/api/") else "web"


class PendingAccess:
    """A RecordAccessed event handed to the log and not yet known to be durable: the read that
    made it may prepare its answer meanwhile, and sends it only once :meth:`confirmed` returned."""

    def __init__(self, log: EventLog, event: Event) -> None:
        self._log = log
        self._topic = topic_for(event.type)
        self._started = time.perf_counter()
        self._future: Future[Position] = publish_async(log, event)

    async def confirmed(self, timeout: float = APPEND_TIMEOUT) -> None:
        """Returns once the event is durable; raises (the read must fail) when the log cannot
        make it so, as :meth:`AccessRecorder.record` does."""
        try:
            await asyncio.wait_for(asyncio.wrap_future(self._future), timeout)
        except TimeoutError as exc:
            raise self._unavailable(timeout) from exc
        self._durable()

    def wait(self, timeout: float = APPEND_TIMEOUT) -> None:
        """:meth:`confirmed` for a thread of its own (the DICOM services)."""
        try:
            self._future.result(timeout)
        except TimeoutError as exc:
            raise self._unavailable(timeout) from exc
        self._durable()

    def _unavailable(self, timeout: float) -> EventLogUnavailable:
        return EventLogUnavailable(f"append to {self._topic!r} not confirmed within {timeout} s")

    def _durable(self) -> None:
        if self._log.on_append is not None:
            self._log.on_append(self._topic, time.perf_counter() - self._started)


class AccessRecorder:
    """Appends RecordAccessed events; one per read request, durable before the data is sent."""

    def __init__(self, event_log: EventLog, source_node: str) -> None:
        self._log = event_log
        self._node = source_node

    def record(
        self,
        reader: Reader,
        *,
        action: str,
        channel: str,
        study_uid: str | None = None,
        series_uid: str | None = None,
        sop_uid: str | None = None,
        patient_id: str | None = None,
        query: Mapping[str, Any] | None = None,
        results: int = 0,
        outcome: str = "ok",
    ) -> None:
        event = self._event(
            reader, action, channel, study_uid, series_uid, sop_uid, patient_id, query, results, outcome
        )
        publish(self._log, event)  # raises when the log cannot make it durable: the read must fail

    def begin(
        self,
        reader: Reader,
        *,
        action: str,
        channel: str,
        study_uid: str | None = None,
        series_uid: str | None = None,
        patient_id: str | None = None,
        query: Mapping[str, Any] | None = None,
        results: int = 0,
    ) -> PendingAccess:
        """:meth:`record` for a read that prepares its answer meanwhile: the event is built and
        handed to the log at once; the caller waits for :meth:`PendingAccess.confirmed` (or
        :meth:`PendingAccess.wait`) before any data leaves."""
        event = self._event(reader, action, channel, study_uid, series_uid, None, patient_id, query, results, "ok")
        return PendingAccess(self._log, event)

    def _event(
        self,
        reader: Reader,
        action: str,
        channel: str,
        study_uid: str | None,
        series_uid: str | None,
        sop_uid: str | None,
        patient_id: str | None,
        query: Mapping[str, Any] | None,
        results: int,
        outcome: str,
    ) -> Event:
        if action not in ACTIONS:
            raise ValueError(f"unknown access action {action!r}")
        if channel not in CHANNELS:
            raise ValueError(f"unknown access channel {channel!r}")
        payload = {
            "action": action,
            "channel": channel,
            "PatientID": patient_id,
            "StudyInstanceUID": study_uid,
            "SeriesInstanceUID": series_uid,
            "SOPInstanceUID": sop_uid,
            "query": query_text(query) if query is not None else None,
            "results": results,
            "remote_address": reader.remote_address,
            "outcome": outcome,
        }
        return new_event(
            "RecordAccessed",
            payload,
            aggregate_id=aggregate_for(study_uid, patient_id, reader),
            source_node=self._node,
            organisation=reader.organisation,
            actor=reader.actor,
        )
