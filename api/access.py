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

**A series viewed is one event, not one per frame.** A viewer scrolling a 500-slice series,
prefetching ahead and refining the slice it stops on, asks for many rendered frames; one event per
frame would bury the audit trail. :class:`SeriesViews` records the first rendered frame a viewer
(one browser session, or one bearer token) asks of a series as one RecordAccessed event (action
``view``, the series UID, ``results`` = the frames of the series the view covers), durable before
that first frame leaves; further frames of the same series for the same viewer within
:data:`SERIES_VIEW_SECONDS` are served under it and only counted (:meth:`SeriesViews.served`).
Each node keeps its own groups, so a viewer balanced over two nodes leaves at most one event per
node.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from schemas.events import Actor, Event, new_event
from schemas.policy import Action, may
from streams.log import EventLog, EventLogUnavailable, Position
from streams.publisher import publish, publish_async
from streams.topics import topic_for

#: how long a read waits for its access event to become durable before it fails (as EventLog.append)
APPEND_TIMEOUT = 30.0
#: how long one series-view event covers a viewer's further frames of that series (a session's lifetime)
SERIES_VIEW_SECONDS = 12 * 3600
#: at most this many series views are remembered per node (the oldest are forgotten first; a
#: forgotten view that is opened again is simply recorded again)
SERIES_VIEW_LIMIT = 100_000

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
        self._confirmed = False

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
        if self._confirmed:  # several reads may wait on one event (a series view): measure it once
            return
        self._confirmed = True
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


@dataclass
class _SeriesView:
    opened: float
    #: set by the thread that writes the event, once ``access`` is handed to the log (or failed)
    ready: threading.Event = field(default_factory=threading.Event)
    access: PendingAccess | None = None
    served: int = 1


@dataclass(frozen=True)
class SeriesScope:
    """What a series-view event names: the patient, and the frames and instances the view covers."""

    patient_id: str | None
    frames: int
    instances: int


class SeriesViews:
    """One RecordAccessed event per (viewer, study, series) instead of one per rendered frame (see
    the module's text). Thread-safe: the rendered-frame routes run in a thread pool, and the first
    frames of a series arrive together when a viewer prefetches."""

    def __init__(
        self,
        recorder: AccessRecorder,
        *,
        seconds: float = SERIES_VIEW_SECONDS,
        limit: int = SERIES_VIEW_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._recorder = recorder
        self._seconds = seconds
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        self._views: OrderedDict[tuple[str, str, str], _SeriesView] = OrderedDict()

    def record(
        self,
        reader: Reader,
        viewer: str,
        study_uid: str,
        series_uid: str,
        scope: Callable[[], SeriesScope],
        *,
        channel: str = "wado-rs",
    ) -> None:
        """Returns once the series view of ``viewer`` is durably recorded (at once when it already
        is); raises as :meth:`PendingAccess.wait` does, and then the next frame tries again.
        ``scope`` is asked only when a new event is written; frames asked together wait for that
        one event rather than writing their own."""
        key = (viewer, study_uid, series_uid)
        now = self._clock()
        with self._lock:
            view = self._views.get(key)
            opens = view is None or now - view.opened >= self._seconds
            if opens:
                view = self._views[key] = _SeriesView(now)
                while len(self._views) > self._limit:
                    self._views.popitem(last=False)
            else:
                assert view is not None
                view.served += 1
            self._views.move_to_end(key)
        assert view is not None
        try:
            if opens:
                try:
                    covered = scope()
                    view.access = self._recorder.begin(
                        reader,
                        action="view",
                        channel=channel,
                        study_uid=study_uid,
                        series_uid=series_uid,
                        patient_id=covered.patient_id,
                        query={"grouped": "series", "frames": covered.frames, "instances": covered.instances},
                        results=covered.frames,
                    )
                finally:
                    view.ready.set()
            elif not view.ready.wait(APPEND_TIMEOUT) or view.access is None:
                raise EventLogUnavailable("the series view's access event was not written")
            assert view.access is not None
            view.access.wait()
        except Exception:
            with self._lock:
                if self._views.get(key) is view:
                    del self._views[key]
            raise

    def served(self, viewer: str, study_uid: str, series_uid: str) -> int:
        """How many frames the viewer's current view of the series has been served (0: none open)."""
        with self._lock:
            view = self._views.get((viewer, study_uid, series_uid))
            return view.served if view is not None else 0
