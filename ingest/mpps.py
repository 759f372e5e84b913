"""Modality Performed Procedure Step SCP (PS3.4 F.7): what a modality reports it performed.

N-CREATE (status IN PROGRESS) and N-SET (changes while IN PROGRESS; COMPLETED; DISCONTINUED)
each become one ``ProcedureStepChanged`` event, durable before the response, keyed by the MPPS
instance so one step's events stay in order. Every event is complete: an N-SET's changes are
laid over what the step already said, so a reader never has to merge partial facts.

Only a ``[[sender]]`` of the senders file may report steps (a modality; the organisation is
its own). The steps are kept in ``mpps.db`` (written after the event is durable) so that an
N-SET is checked against the step's state after a restart too. With several ingest nodes a
modality's N-SET may reach another node than its N-CREATE: the file is also folded from the log
(:class:`StepProjection`), and before a step's state is read the node catches up with the log
(the event of an N-CREATE answered elsewhere is there: its answer waited for it), so the N-SET
finds the step, in its latest state, whichever node took the earlier messages.

Statuses (PS3.4 F.7.2, PS3.7 C): 0x0000 success; 0x0111 an N-CREATE of an instance that exists;
0x0106 an N-CREATE whose status is not IN PROGRESS, or a status that is not one of the three;
0x0112 an N-SET of an unknown instance; 0xC310 an N-SET of a step already COMPLETED or
DISCONTINUED (it may no longer be updated); 0x0124 a caller that is not a sender; 0xA700 the
event log cannot take the event (nothing recorded; the modality retries).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from ingest.ae_titles import ae_title
from ingest.dicom import first_item, text
from ingest.senders import Senders
from schemas.events import Actor, Event, new_event
from schemas.uids import is_uid
from streams.log import EventLog
from streams.processing import Row, Source
from streams.publisher import publish
from streams.topics import ORDERS

log = logging.getLogger("cami.mpps")

MPPS_SOP_CLASS = "1.2.840.10008.3.1.2.3.3"

SUCCESS = 0x0000
NOT_AUTHORISED = 0x0124
INVALID_ATTRIBUTE_VALUE = 0x0106
DUPLICATE_INSTANCE = 0x0111
NO_SUCH_INSTANCE = 0x0112
MAY_NO_LONGER_BE_UPDATED = 0xC310
OUT_OF_RESOURCES = 0xA700

IN_PROGRESS, COMPLETED, DISCONTINUED = "IN PROGRESS", "COMPLETED", "DISCONTINUED"
_STATUSES = {IN_PROGRESS, COMPLETED, DISCONTINUED}


STEPS = "steps"


class StepStore:
    """The MPPS instances recorded (here or, folded from the log, by other nodes): uid -> the
    step's payload (JSON). Like the SOP index it can be rebuilt from the log at any time: the file
    draws a *generation* when created, which the folding projection's group carries."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"CREATE TABLE IF NOT EXISTS {STEPS} (uid TEXT PRIMARY KEY, payload TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS steps_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        self._db.execute("INSERT OR IGNORE INTO steps_meta VALUES ('generation', ?)", (uuid.uuid4().hex[:12],))
        self.generation = str(self._db.execute("SELECT value FROM steps_meta WHERE key = 'generation'").fetchone()[0])
        self._lock = threading.Lock()

    def projection_name(self, node: str) -> str:
        """The name (and so the consumer group) of the projection that folds the log into this file."""
        return f"{node}.{self.generation}"

    def get(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT payload FROM steps WHERE uid = ?", (uid,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, uid: str, payload: dict[str, Any]) -> None:
        def encode(value: Any) -> Any:
            return value.isoformat() if isinstance(value, datetime) else value

        with self._lock:
            self._db.execute(
                "INSERT INTO steps (uid, payload) VALUES (?, ?)"
                " ON CONFLICT (uid) DO UPDATE SET payload = excluded.payload",
                (uid, json.dumps({k: encode(v) for k, v in payload.items()})),
            )

    def close(self) -> None:
        self._db.close()


class StepProjection:
    """Pure: ProcedureStepChanged -> the step's latest payload (each event is complete, and one
    step's events are in order: they are keyed by the MPPS instance)."""

    topics: Sequence[str] = (ORDERS,)

    def __init__(self, node: str = "local") -> None:
        self.name = f"mpps-steps.{node}"

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        if event.type != "ProcedureStepChanged":
            return []
        return [Row(STEPS, {"uid": event.envelope.aggregate_id, "payload": dict(event.payload)})]


class StepStoreSink:
    def __init__(self, store: StepStore) -> None:
        self.store = store

    def write(self, rows: Sequence[Row]) -> None:
        for row in rows:
            if row.table == STEPS:
                self.store.put(str(row.values["uid"]), dict(row.values["payload"]))


class ProcedureSteps:
    """What the N-CREATE and N-SET handlers share: the log, the senders, the step store, the
    region's time zone (DICOM dates and times are local) and one lock per step."""

    def __init__(
        self,
        event_log: EventLog,
        senders: Senders,
        store: StepStore,
        zone: tzinfo = UTC,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        refresh: Callable[[], object] | None = None,
    ) -> None:
        self.event_log = event_log
        self.senders = senders
        self.store = store
        #: folds what other nodes recorded into the store (None: this node is alone)
        self.refresh = refresh
        self.zone = zone
        self.clock = clock
        #: one step changes at a time: its state is read, checked and written as one
        self.lock = threading.Lock()

    def _moment(self, ds: Dataset, date_keyword: str, time_keyword: str) -> datetime | None:
        day = (text(ds, date_keyword) or "").strip()
        if len(day) != 8 or not day.isdigit():
            return None
        clock = (text(ds, time_keyword) or "").strip().split(".")[0].ljust(6, "0")[:6]
        try:
            moment = datetime.strptime(day + (clock if clock.isdigit() else "000000"), "%Y%m%d%H%M%S")
        except ValueError:
            return None
        return moment.replace(tzinfo=self.zone)

    def attributes(self, ds: Dataset) -> dict[str, Any]:
        """The event's fields this data set sets (absent ones are left to the step's state)."""
        found: dict[str, Any] = {}
        if "PerformedProcedureStepStatus" in ds:
            found["PerformedProcedureStepStatus"] = (text(ds, "PerformedProcedureStepStatus") or "").strip().upper()
        scheduled = first_item(ds, "ScheduledStepAttributesSequence")
        if scheduled is not None:
            for keyword in ("StudyInstanceUID", "AccessionNumber"):
                if text(scheduled, keyword):
                    found[keyword] = text(scheduled, keyword)
        for keyword in ("PatientID", "Modality", "PerformedStationAETitle"):
            if text(ds, keyword):
                found[keyword] = text(ds, keyword)
        started = self._moment(ds, "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime")
        if started is not None:
            found["PerformedProcedureStepStartDateTime"] = started
        ended = self._moment(ds, "PerformedProcedureStepEndDate", "PerformedProcedureStepEndTime")
        if ended is not None:
            found["PerformedProcedureStepEndDateTime"] = ended
        if "PerformedSeriesSequence" in ds:
            series = list(ds.PerformedSeriesSequence or [])
            found["number_of_series"] = len(series)
            found["number_of_instances"] = sum(
                len(getattr(item, "ReferencedImageSequence", None) or [])
                + len(getattr(item, "ReferencedNonImageCompositeSOPInstanceSequence", None) or [])
                for item in series
            )
        reason = first_item(ds, "PerformedProcedureStepDiscontinuationReasonCodeSequence")
        if reason is not None:
            found["discontinuation_reason"] = text(reason, "CodeMeaning") or text(reason, "CodeValue")
        return found

    def current(self, uid: str) -> dict[str, Any] | None:
        """The step's latest state, after catching up with the log (another node may have taken
        its N-CREATE or an N-SET); raises when the log cannot be read (the modality retries)."""
        if self.refresh is not None:
            self.refresh()
        return self.store.get(uid)

    def record(self, uid: str, payload: dict[str, Any], caller: str, organisation: str) -> int:
        """Append the step's event (durable) and keep its state: SUCCESS, or OUT_OF_RESOURCES
        when the log cannot take it (nothing recorded; the modality retries)."""
        try:
            self._append(uid, payload, caller, organisation)
        except Exception:
            log.exception("MPPS %s not recorded", uid)
            return OUT_OF_RESOURCES
        return SUCCESS

    def _append(self, uid: str, payload: dict[str, Any], caller: str, organisation: str) -> None:
        event = new_event(
            "ProcedureStepChanged",
            payload,
            aggregate_id=uid,
            source_node=caller,
            organisation=organisation,
            actor=Actor(caller, "modality"),
        )
        publish(self.event_log, event)  # durable before the response says so
        self.store.put(uid, dict(event.payload))


_EMPTY_STEP: dict[str, Any] = {
    "StudyInstanceUID": None,
    "AccessionNumber": None,
    "PatientID": None,
    "Modality": None,
    "PerformedStationAETitle": None,
    "PerformedProcedureStepStartDateTime": None,
    "PerformedProcedureStepEndDateTime": None,
    "number_of_series": 0,
    "number_of_instances": 0,
    "discontinuation_reason": None,
}


def _caller(event: Any, steps: ProcedureSteps) -> tuple[str, str] | None:
    calling = ae_title(event.assoc.requestor.ae_title)
    sender = steps.senders.lookup(calling)
    return (calling, sender.organisation) if sender is not None else None


def _stored(step: dict[str, Any]) -> dict[str, Any]:
    out = dict(step)
    for key in ("PerformedProcedureStepStartDateTime", "PerformedProcedureStepEndDateTime"):
        if isinstance(out.get(key), str):
            out[key] = datetime.fromisoformat(out[key])
    return out


def handle_n_create(event: Any, steps: ProcedureSteps) -> tuple[int, Dataset | None]:
    """EVT_N_CREATE: a modality begins a procedure step."""
    if str(event.request.AffectedSOPClassUID) != MPPS_SOP_CLASS:
        return NO_SUCH_INSTANCE, None
    caller = _caller(event, steps)
    if caller is None:
        return NOT_AUTHORISED, None
    try:
        ds = event.attribute_list
        attributes = steps.attributes(ds)
    except Exception:
        log.warning("MPPS N-CREATE from %s: the attribute list does not decode", caller[0])
        return INVALID_ATTRIBUTE_VALUE, None
    uid = str(event.request.AffectedSOPInstanceUID or "") or generate_uid()
    if not is_uid(uid):
        return INVALID_ATTRIBUTE_VALUE, None
    if attributes.get("PerformedProcedureStepStatus") != IN_PROGRESS:
        return INVALID_ATTRIBUTE_VALUE, None
    if attributes.get("StudyInstanceUID") and not is_uid(str(attributes["StudyInstanceUID"])):
        return INVALID_ATTRIBUTE_VALUE, None
    with steps.lock:
        try:
            known = steps.current(uid)
        except Exception:
            log.exception("MPPS %s: the steps could not be read from the log", uid)
            return OUT_OF_RESOURCES, None
        if known is not None:
            return DUPLICATE_INSTANCE, None
        status = steps.record(uid, {**_EMPTY_STEP, **attributes, "AffectedSOPInstanceUID": uid}, *caller)
    if status != SUCCESS:
        return status, None
    log.info("MPPS %s IN PROGRESS from %s", uid, caller[0])
    if not event.request.AffectedSOPInstanceUID:
        event.request.AffectedSOPInstanceUID = uid  # PS3.7 10.1.5: the SCP names an instance left unnamed
    return SUCCESS, ds


def handle_n_set(event: Any, steps: ProcedureSteps) -> tuple[int, Dataset | None]:
    """EVT_N_SET: a modality changes, completes or discontinues a step."""
    if str(event.request.RequestedSOPClassUID) != MPPS_SOP_CLASS:
        return NO_SUCH_INSTANCE, None
    caller = _caller(event, steps)
    if caller is None:
        return NOT_AUTHORISED, None
    uid = str(event.request.RequestedSOPInstanceUID)
    try:
        ds = event.modification_list
        changes = steps.attributes(ds)
    except Exception:
        log.warning("MPPS N-SET from %s: the modification list does not decode", caller[0])
        return INVALID_ATTRIBUTE_VALUE, None
    if changes.get("PerformedProcedureStepStatus", IN_PROGRESS) not in _STATUSES:
        return INVALID_ATTRIBUTE_VALUE, None
    with steps.lock:
        try:
            current = steps.current(uid)
        except Exception:
            log.exception("MPPS %s: the steps could not be read from the log", uid)
            return OUT_OF_RESOURCES, None
        if current is None:
            return NO_SUCH_INSTANCE, None
        if current["PerformedProcedureStepStatus"] in {COMPLETED, DISCONTINUED}:
            return MAY_NO_LONGER_BE_UPDATED, None
        payload = {**_stored(current), **changes}
        status = steps.record(uid, payload, *caller)
    if status != SUCCESS:
        return status, None
    log.info("MPPS %s %s from %s", uid, payload["PerformedProcedureStepStatus"], caller[0])
    return SUCCESS, ds
