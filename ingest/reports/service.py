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

from ingest.reports.fold import ReportStoreProjection, ReportStoreSink, fact
from ingest.reports.rules import Author, ReportState, amend, draft, edit, existing, sign
from ingest.reports.store import ReportStore
from schemas.events import Event
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
    ) -> None:
        self.store = store
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
    ) -> ReportState:
        report_id = str(uuid.uuid4())
        with self._report_lock(report_id):
            event = draft(
                report_id,
                study_instance_uid,
                protocol_text,
                conclusion_text,
                author,
                accession_number=accession_number,
                source_node=self.source_node,
            )
            return self._commit(event)

    def edit(
        self,
        report_id: str,
        protocol_text: str,
        conclusion_text: str,
        author: Author,
        *,
        expected_revision: int | None = None,
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
            )
            return self._commit(event)

    def sign(self, report_id: str, author: Author, *, expected_revision: int | None = None) -> ReportState:
        with self._report_lock(report_id):
            self.refresh()
            event = sign(
                self.store.get(report_id),
                author,
                self.clock(),
                expected_revision=expected_revision,
                source_node=self.source_node,
            )
            return self._commit(event)

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
