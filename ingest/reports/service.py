"""Report commands -> events: :class:`ReportService` runs a command against the state the log holds,
publishes its event (durable), then records it in the store.

It reads the log first (:meth:`ReportService.refresh`), so reports recorded by other nodes or
arriving as DICOM are known before a rule is checked."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ingest.reports.fold import ReportStoreProjection, ReportStoreSink, fact
from ingest.reports.readings import (
    ARBITRATION,
    SECOND_OPINION,
    check_new_report,
    check_signing,
    discrepancy,
    hidden_from,
)
from ingest.reports.rules import (
    Author,
    ReportConflict,
    ReportForbidden,
    ReportInvalid,
    ReportNotFound,
    ReportState,
    amend,
    draft,
    edit,
    existing,
    sign,
)
from ingest.reports.store import ReportStore
from schemas.events import Event, new_event
from streams.log import Consumer, EventLog
from streams.processing import EmbeddedRunner, group_id
from streams.publisher import publish
from streams.topics import REPORTS


class ReportService:
    """Runs a command against the state the log holds, publishes its event (durable), then
    records it. Changes to one report are serialised by a per-report lock."""

    def __init__(
        self,
        store: ReportStore,
        event_log: EventLog,
        *,
        node: str = "local",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        source_node: str = "http",
        double_read: Callable[[str], bool] = lambda study_instance_uid: False,
    ) -> None:
        self.store = store
        #: whether a study is read twice (its modality is one the region screens)
        self.double_read = double_read
        self.event_log = event_log
        self.clock = clock
        self.source_node = source_node
        self.projection = ReportStoreProjection(node)
        self._sink = ReportStoreSink(store)
        self._runner = EmbeddedRunner(event_log, [(self.projection, self._sink)])
        self._consumer: Consumer | None = None
        self._refresh_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- reading the log -----------------------------------------------------------------------
    def refresh(self, timeout: float = 30.0) -> int:
        """Fold what the log holds beyond what this store has seen (other nodes, DICOM documents).
        Returns the number of records read; ends by offsets, not by an empty poll."""
        with self._refresh_lock:
            if self._consumer is None:
                self._consumer = self.event_log.consumer(group_id(self.projection), self.projection.topics)
            group = group_id(self.projection)
            targets = self.event_log.end_offsets(REPORTS)
            deadline = time.monotonic() + timeout
            total = 0
            while True:
                committed = self.event_log.committed(group, REPORTS)
                if all(committed.get(p, 0) >= end for p, end in targets.items()):
                    return total
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the report store did not catch up with the log within {timeout} s")
                total += self._runner.run_once(self.projection, self._sink, self._consumer, timeout=0.2)

    def get(self, report_id: str) -> ReportState:
        self.refresh()
        return existing(self.store.get(report_id))

    def for_study(self, study_instance_uid: str) -> list[ReportState]:
        self.refresh()
        return self.store.for_study(study_instance_uid)

    # -- commands ------------------------------------------------------------------------------
    @contextmanager
    def _study_lock(self, study_instance_uid: str) -> Iterator[None]:
        """Readings of one study are decided one at a time (which is the first, the second)."""
        with self._report_lock(f"study:{study_instance_uid}"):
            yield

    @contextmanager
    def _report_lock(self, report_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(report_id, threading.Lock())
        with lock:
            yield
        with self._locks_guard:
            if not lock.locked():
                self._locks.pop(report_id, None)

    def _commit(self, event: Event) -> ReportState:
        publish(self.event_log, event)  # durable, or it raises and nothing changed
        self.store.apply([fact(event)])
        return existing(self.store.get(event["report_id"]))

    def create(
        self,
        study_instance_uid: str,
        protocol_text: str,
        conclusion_text: str,
        author: Author,
        *,
        accession_number: str | None = None,
        reading: str | None = None,
        request_id: str | None = None,
        assessment: str | None = None,
    ) -> ReportState:
        """A new draft; on a double-read study it is one of the two readings (or the arbiter's),
        answering a second-opinion request or arbitration task when ``request_id`` names one."""
        report_id = str(uuid.uuid4())
        with self._study_lock(study_instance_uid), self._report_lock(report_id):
            self.refresh()
            readers: list[str] = []
            if reading in (SECOND_OPINION, ARBITRATION):
                readers = self._check_task(study_instance_uid, reading, request_id, author)
            elif request_id is not None:
                raise ReportConflict("request_id names the task a second-opinion or arbitration report answers")
            kind = check_new_report(
                self.store.for_study(study_instance_uid),
                author.actor.user,
                self.double_read(study_instance_uid),
                reading,
                arbitration_readers=readers,
            )
            event = draft(
                report_id,
                study_instance_uid,
                protocol_text,
                conclusion_text,
                author,
                accession_number=accession_number,
                source_node=self.source_node,
                reading=kind,
                request_id=request_id,
                assessment=assessment,
            )
            return self._commit(event)

    def _check_task(self, study: str, reading: str, request_id: str | None, author: Author) -> list[str]:
        task = self.store.task(request_id) if request_id else None
        if task is None:
            raise ReportNotFound(f"a {reading} report names its {reading} task (request_id): no such task")
        if task["kind"] != reading or task["StudyInstanceUID"] != study:
            raise ReportConflict(f"task {request_id} is not a {reading} task of this study")
        if reading == SECOND_OPINION and task.get("accepting_user") != author.actor.user:
            raise ReportForbidden("a second opinion is written by the radiologist who accepted the request")
        if any(s.request_id == request_id for s in self.store.for_study(study)):
            raise ReportConflict("this task has its report already")
        return list(task.get("readers") or [])

    def edit(
        self,
        report_id: str,
        protocol_text: str,
        conclusion_text: str,
        author: Author,
        *,
        expected_revision: int | None = None,
        assessment: str | None = None,
    ) -> ReportState:
        with self._report_lock(report_id):
            self.refresh()
            event = edit(
                self.store.get(report_id),
                protocol_text,
                conclusion_text,
                author,
                expected_revision=expected_revision,
                source_node=self.source_node,
                assessment=assessment,
            )
            return self._commit(event)

    def sign(self, report_id: str, author: Author, *, expected_revision: int | None = None) -> ReportState:
        """Sign a draft. On a double-read study the reading needs its assessment, and a second
        signed reading that disagrees with the first opens an arbitration task."""
        self.refresh()
        state = existing(self.store.get(report_id))
        study = state.study_instance_uid
        double = self.double_read(study)
        with self._study_lock(study), self._report_lock(report_id):
            self.refresh()
            current = self.store.get(report_id)
            if current is not None:
                check_signing(current, double)
            event = sign(
                current,
                author,
                self.clock(),
                expected_revision=expected_revision,
                source_node=self.source_node,
            )
            signed = self._commit(event)
            found = discrepancy(self.store.for_study(study), double)
            if found is not None and self.store.task(found.task_id) is None:
                task = new_event(
                    "ArbitrationRequested",
                    {
                        "task_id": found.task_id,
                        "StudyInstanceUID": study,
                        "PatientID": signed.patient_id,
                        "report_ids": list(found.report_ids),
                        "readers": list(found.readers),
                        "assessments": list(found.assessments),
                    },
                    aggregate_id=study,
                    source_node=self.source_node,
                    organisation=signed.organisation,
                )
                publish(self.event_log, task)
                self.store.apply_tasks([fact(task)])
            return signed

    # -- second opinions, double reading ---------------------------------------------------------
    def hidden(self, states: list[ReportState], user: str, role: str) -> set[str]:
        """The reports of these (one study's) ``user`` may not read yet (double reading)."""
        if not states:
            return set()
        return hidden_from(states, user, role, self.double_read(states[0].study_instance_uid))

    def request_second_opinion(
        self,
        study_instance_uid: str,
        author: Author,
        *,
        to_organisation: str | None,
        to_specialty: str | None,
        reason: str,
        accession_number: str | None = None,
        patient_id: str | None = None,
    ) -> dict[str, Any]:
        if bool(to_organisation) == bool(to_specialty):
            raise ReportInvalid("a second opinion is asked of one organisation or of one specialty")
        if not reason.strip():
            raise ReportInvalid("a second opinion needs a reason")
        request_id = str(uuid.uuid4())
        event = new_event(
            "SecondOpinionRequested",
            {
                "request_id": request_id,
                "StudyInstanceUID": study_instance_uid,
                "AccessionNumber": accession_number,
                "PatientID": patient_id,
                "requested_by": author.clinician,
                "requesting_user": author.actor.user,
                "to_organisation": to_organisation,
                "to_specialty": to_specialty,
                "reason": reason.strip(),
            },
            aggregate_id=study_instance_uid,
            source_node=self.source_node,
            organisation=author.organisation,
            actor=author.actor,
        )
        return self._commit_task(event, request_id)

    def accept_second_opinion(self, request_id: str, author: Author, specialty: str | None) -> dict[str, Any]:
        """A radiologist of the organisation (or specialty) asked takes the request on."""
        with self._report_lock(f"task:{request_id}"):
            self.refresh()
            task = existing_task(self.store.task(request_id))
            if task["kind"] != SECOND_OPINION:
                raise ReportNotFound("no such second-opinion request")
            if task.get("accepting_user"):
                raise ReportConflict("the request was accepted already")
            if task.get("requesting_user") == author.actor.user:
                raise ReportForbidden("a second opinion comes from another doctor")
            wanted_organisation, wanted_specialty = task.get("to_organisation"), task.get("to_specialty")
            if (wanted_organisation and author.organisation != wanted_organisation) or (
                wanted_specialty and (specialty or "").casefold() != wanted_specialty.casefold()
            ):
                raise ReportForbidden("the request is addressed to another organisation or specialty")
            event = new_event(
                "SecondOpinionAccepted",
                {
                    "request_id": request_id,
                    "StudyInstanceUID": task["StudyInstanceUID"],
                    "accepted_by": author.clinician,
                    "accepting_user": author.actor.user,
                },
                aggregate_id=task["StudyInstanceUID"],
                source_node=self.source_node,
                organisation=author.organisation,
                actor=author.actor,
            )
            return self._commit_task(event, request_id)

    def open_tasks_for(self, author: Author, specialty: str | None) -> list[dict[str, Any]]:
        """What this radiologist may take or has taken and not yet answered: second-opinion requests
        addressed to their organisation or specialty, arbitration tasks of readings not theirs."""
        user = author.actor.user
        mine = []
        for task in self.tasks():
            if task["done"]:
                continue
            if task["kind"] == SECOND_OPINION:
                taken = task.get("accepting_user")
                addressed = (task.get("to_organisation") and task["to_organisation"] == author.organisation) or (
                    task.get("to_specialty") and (specialty or "").casefold() == task["to_specialty"].casefold()
                )
                if taken == user or (not taken and addressed and task.get("requesting_user") != user):
                    mine.append(task)
            elif user not in (task.get("readers") or []):
                mine.append(task)
        return mine

    def _commit_task(self, event: Event, task_id: str) -> dict[str, Any]:
        publish(self.event_log, event)  # durable, or it raises and nothing changed
        self.store.apply_tasks([fact(event)])
        return existing_task(self.store.task(task_id))

    def tasks(self, study_instance_uid: str | None = None) -> list[dict[str, Any]]:
        """Second-opinion requests and arbitration tasks, each with the report answering it."""
        self.refresh()
        found = self.store.tasks(study_instance_uid)
        for task in found:
            answers = [s for s in self.store.for_study(task["StudyInstanceUID"]) if s.request_id == task["task_id"]]
            task["report_id"] = answers[0].report_id if answers else None
            task["done"] = bool(answers and answers[0].signed)
        return found

    def amend(
        self,
        report_id: str,
        protocol_text: str | None,
        conclusion_text: str | None,
        reason: str,
        author: Author,
    ) -> ReportState:
        with self._report_lock(report_id):
            self.refresh()
            event = amend(
                self.store.get(report_id),
                protocol_text,
                conclusion_text,
                reason,
                author,
                self.clock(),
                source_node=self.source_node,
            )
            return self._commit(event)

    def close(self) -> None:
        with self._refresh_lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


def existing_task(task: dict[str, Any] | None) -> dict[str, Any]:
    if task is None:
        raise ReportNotFound("no such request or task")
    return task
