"""CAMI's side of the hospitals' transfer agents (``cami agent``), and the full-import requests
made of them.

An agent (role ``agent``, ``Action.REPORT_TRANSFERS``, a user with an ``organisation``: 403
without one) calls CAMI; CAMI never calls into a hospital:

- ``POST /api/agent/events``: its transfer events and heartbeats (at most :data:`MAX_EVENTS` a
  request). CAMI builds each envelope (organisation and actor the user's, source node
  ``agent:<user>``, aggregate the organisation, so one agent's events stay in order in one
  partition; the event id the agent's), validates the payload against its Avro schema (ISO-8601
  timestamps accepted) and appends the batch in order; 200 only once every event is durable.
  An event id appended before is a duplicate, answered and not appended again: the ids are kept in
  ``agent-events.db`` in the CAMI home, written once the events are durable (an agent re-sends a
  batch whose answer it lost). A bad event refuses the whole batch, naming its index.
- ``GET /api/agent/requests?cursor=``: its organisation's full-import requests after the cursor,
  from the monitoring read model (``projections.monitoring.queries.transfer_requests``).
- ``POST /api/agent/verify``: what the write side's SOP index holds for each SOPInstanceUID and
  SHA-256 the agent sent (the end-to-end check after storage commitment): ``match`` (the newest
  version has these bytes), ``mismatch`` (it has other bytes), ``absent``. Another organisation's
  instance with other bytes reads ``absent``: an agent learns nothing of what others hold.

A refused token on ``/api/agent/*`` (401) leaves a RecordAccessed event (outcome
``unauthenticated``, channel ``api``, the remote address; actor ``unauthenticated``), at most
:data:`REFUSALS_PER_MINUTE` per address a minute, so a flood cannot fill the log.

An administrator (``Action.REQUEST_TRANSFERS``) asks an organisation's agent for a study's or a
patient's full set with ``POST /api/transfers/requests`` (a ``TransferRequested`` event on
``cami.transfers`` keyed by the organisation); ``GET /api/transfers/requests`` (``Action.MONITOR``)
lists them, PatientIDs only to roles that read patient data (and that read is recorded).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from api.access import AccessRecorder, Reader
from api.auth import User
from api.http.deps import require
from api.http.errors import ApiError, ErrorBody, responses
from ingest.sop_index import SopIndex
from projections.monitoring import queries as monitoring
from projections.warehouse.base import Warehouse
from schemas.events import Actor, Event, new_event
from schemas.payload import InvalidEvent
from schemas.policy import Action, may
from schemas.registry import registry
from schemas.uids import is_uid
from streams.log import EventLog
from streams.publisher import publish, publish_async

log = logging.getLogger("cami.http")

#: what an agent may post (TransferRequested is CAMI's own, made by an administrator)
AGENT_EVENT_TYPES = ("TransferQueued", "TransferStarted", "TransferCompleted", "TransferFailed", "AgentHeartbeat")
MAX_EVENTS = 500
MAX_VERIFY = 1000
#: an events body larger than this is refused (413): 500 small events fit many times over
MAX_BODY = 4 << 20
#: requests answered per poll; the agent asks again with the cursor it got
REQUESTS_PAGE = 100
REFUSALS_PER_MINUTE = 10
#: an agent's clock may be wrong; an event dated outside this is refused rather than misfiled
EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
MAX_AHEAD = timedelta(days=1)
#: ids of accepted agent events are kept this long (an agent re-sends within minutes)
KEEP_IDS = timedelta(days=90)

UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
OID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
#: a PatientID as DICOM's LO: no control characters, no backslash, 1..64 characters
PATIENT_ID_PATTERN = r"^[^\x00-\x1f\x7f\\]{1,64}$"
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
CURSOR_PATTERN = r"^[0-9]{0,18}$"


# -- bodies ----------------------------------------------------------------------------------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class AgentEvent(_Strict):
    event_id: str = Field(pattern=UUID_PATTERN)
    type: str = Field(max_length=64)
    occurred_at: datetime
    payload: dict[str, Any]


class AgentEvents(_Strict):
    events: list[AgentEvent] = Field(min_length=1, max_length=MAX_EVENTS)


class HeldHash(_Strict):
    SOPInstanceUID: str = Field(pattern=UID_PATTERN, max_length=64)
    sha256: str = Field(pattern=SHA256_PATTERN)


class VerifyBody(_Strict):
    instances: list[HeldHash] = Field(min_length=1, max_length=MAX_VERIFY)


class TransferRequest(_Strict):
    organisation: str = Field(pattern=OID_PATTERN, max_length=64)
    # "" = not given (an explicit null is not a string, and refused like any other non-string)
    StudyInstanceUID: str = Field(default="", pattern=UID_PATTERN, max_length=64)
    PatientID: str = Field(default="", pattern=PATIENT_ID_PATTERN)
    urgent: StrictBool = False
    reason: str = Field(default="", pattern=r"^[^\x00]*$", max_length=1000)

    @model_validator(mode="after")
    def _names_something(self) -> TransferRequest:
        if not (self.StudyInstanceUID or self.PatientID):
            raise ValueError("name a StudyInstanceUID or a PatientID")
        return self


_STRING = {"type": "string"}
_UID = {"type": "string", "pattern": UID_PATTERN, "maxLength": 64}
_EVENTS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["events"],
    "properties": {
        "events": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_EVENTS,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["event_id", "type", "occurred_at", "payload"],
                "properties": {
                    "event_id": {"type": "string", "pattern": UUID_PATTERN, "description": "the agent's UUID"},
                    "type": {"type": "string", "enum": list(AGENT_EVENT_TYPES)},
                    "occurred_at": {"type": "string", "format": "date-time", "description": "with a UTC offset"},
                    "payload": {"type": "object", "description": "the event type's Avro payload (timestamps ISO-8601)"},
                },
            },
        }
    },
}
_VERIFY_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["instances"],
    "properties": {
        "instances": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_VERIFY,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["SOPInstanceUID", "sha256"],
                "properties": {"SOPInstanceUID": _UID, "sha256": {"type": "string", "pattern": SHA256_PATTERN}},
            },
        }
    },
}
_REQUEST_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["organisation"],
    "anyOf": [{"required": ["StudyInstanceUID"]}, {"required": ["PatientID"]}],
    "properties": {
        "organisation": {"type": "string", "pattern": OID_PATTERN, "maxLength": 64},
        "StudyInstanceUID": _UID,
        "PatientID": {"type": "string", "pattern": PATIENT_ID_PATTERN},
        "urgent": {"type": "boolean", "description": "send at once, as an emergency, whatever the window"},
        "reason": {"type": "string", "pattern": r"^[^\x00]*$", "maxLength": 1000},
    },
}
_REQUEST_ITEM = {
    "type": "object",
    "required": ["request_id", "StudyInstanceUID", "PatientID", "urgent", "requested_at", "requested_by"],
    "properties": {
        "request_id": _STRING,
        "organisation": _STRING,
        "StudyInstanceUID": {"type": ["string", "null"]},
        "PatientID": {"type": ["string", "null"], "description": "null when not given or not the caller's to see"},
        "urgent": {"type": "boolean"},
        "reason": {"type": ["string", "null"]},
        "requested_at": {"type": "string", "format": "date-time"},
        "requested_by": _STRING,
    },
}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": schema}},
        }
    }


def _ok(description: str, schema: dict[str, Any], status: int = 200) -> dict[int | str, dict[str, Any]]:
    return {status: {"description": description, "content": {"application/json": {"schema": schema}}}}


_UNFIT_ANSWER: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorBody, "description": "an event does not fit its schema or is not an agent's (index named)"}
}


# -- durable memory of accepted event ids ----------------------------------------------------------
class AgentEventIds:
    """The ids of agent events already appended (``agent-events.db`` in the CAMI home), so a
    batch re-sent after a lost answer is not appended twice. Written after the events are durable;
    entries older than :data:`KEEP_IDS` are dropped as new ones arrive."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS appended (event_id TEXT PRIMARY KEY, at INTEGER NOT NULL) WITHOUT ROWID"
        )
        #: one batch at a time: the check, the append and the remembering form one step
        self.batch = threading.Lock()

    def known(self, ids: Iterable[str]) -> set[str]:
        wanted = list(dict.fromkeys(ids))
        found: set[str] = set()
        with self._lock:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(f"SELECT event_id FROM appended WHERE event_id IN ({marks})", chunk)
                found.update(str(r[0]) for r in rows)
        return found

    def remember(self, ids: Sequence[str], now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany("INSERT OR IGNORE INTO appended VALUES (?, ?)", [(i, int(now)) for i in ids])
                self._conn.execute("DELETE FROM appended WHERE at < ?", (int(now - KEEP_IDS.total_seconds()),))
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# -- refused tokens ---------------------------------------------------------------------------------
class RefusalBudget:
    """At most ``per_window`` refusals recorded per address within ``window`` seconds; memory
    bounded to ``max_tracked`` addresses (the least recently refused go first)."""

    def __init__(self, per_window: int = REFUSALS_PER_MINUTE, window: float = 60.0, max_tracked: int = 10_000) -> None:
        self.per_window = per_window
        self.window = window
        self.max_tracked = max_tracked
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def allow(self, address: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            times = self._seen.setdefault(address, deque())
            while times and times[0] <= now - self.window:
                times.popleft()
            self._seen.move_to_end(address)
            allowed = len(times) < self.per_window
            if allowed:
                times.append(now)
            while len(self._seen) > self.max_tracked:
                self._seen.popitem(last=False)
            return allowed


UNAUTHENTICATED = Actor("unauthenticated", "anonymous")


# -- building events --------------------------------------------------------------------------------
class UnfitEvent(Exception):
    def __init__(self, index: int, event_id: str | None, problem: str) -> None:
        super().__init__(problem)
        self.detail = {"index": index, "event_id": event_id, "problem": problem}


def _timestamp_fields(event_type: str) -> frozenset[str]:
    fields = registry().schema(event_type).current.payload["fields"]

    def is_timestamp(kind: Any) -> bool:
        if isinstance(kind, list):
            return any(is_timestamp(k) for k in kind)
        return isinstance(kind, dict) and kind.get("logicalType") in ("timestamp-micros", "timestamp-millis")

    return frozenset(f["name"] for f in fields if is_timestamp(f["type"]))


def _aware(value: datetime, what: str) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"{what}: a timestamp needs a UTC offset")
    return value.astimezone(UTC)


def _payload(event_type: str, payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with ISO-8601 strings in timestamp fields as aware datetimes."""
    out = dict(payload)
    for name in _timestamp_fields(event_type):
        value = out.get(name)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise ValueError(f"payload.{name}: not an ISO-8601 timestamp") from None
            out[name] = _aware(parsed, f"payload.{name}")
    return out


def _check_values(event_type: str, payload: dict[str, Any]) -> None:
    study = payload.get("StudyInstanceUID")
    if study is not None and (not isinstance(study, str) or not is_uid(study)):
        raise ValueError("payload.StudyInstanceUID: not a DICOM UID")
    if event_type != "AgentHeartbeat":
        transfer = payload.get("transfer_id")
        if not isinstance(transfer, str) or not transfer or len(transfer) > 64:
            raise ValueError("payload.transfer_id: 1 to 64 characters")
    if event_type == "TransferQueued" and payload.get("priority") not in ("scheduled", "emergency"):
        raise ValueError("payload.priority: scheduled or emergency")


def agent_event(index: int, item: AgentEvent, user: User, now: datetime) -> Event:
    """The log's event for an agent's ``item`` (raises :class:`UnfitEvent` naming ``index``)."""
    organisation = user.organisation
    assert organisation is not None
    if item.type not in AGENT_EVENT_TYPES:
        raise UnfitEvent(index, item.event_id, f"type {item.type!r} is not one an agent reports")
    try:
        occurred = _aware(item.occurred_at, "occurred_at")
        if not EARLIEST <= occurred <= now + MAX_AHEAD:
            raise ValueError("occurred_at: outside 2000-01-01 .. tomorrow (the agent's clock?)")
        payload = _payload(item.type, item.payload)
        _check_values(item.type, payload)
        event = new_event(
            item.type,
            payload,
            aggregate_id=organisation,
            source_node=f"agent:{user.name}",
            organisation=organisation,
            actor=user.actor,
            occurred_at=occurred,
        )
    except (ValueError, InvalidEvent) as exc:
        raise UnfitEvent(index, item.event_id, str(exc)) from None
    # the agent's id: the same event re-sent is recognised by it
    return replace(event, envelope=replace(event.envelope, event_id=str(uuid.UUID(item.event_id))))


def _parse(model: type[Any], raw: bytes) -> Any:
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        detail = [{"loc": ["body", *e["loc"]], "msg": e["msg"]} for e in exc.errors()]
        raise ApiError(400, "invalid-request", detail) from None


async def _read_body(request: Request, limit: int = MAX_BODY) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload-too-large", f"the body exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload-too-large", f"the body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _cursor(value: str | None) -> int:
    if not value:
        return -1
    if not value.isdigit() or len(value) > 18:
        raise ApiError(400, "invalid-parameter", {"parameter": "cursor", "problem": "not a cursor this API gave"})
    return int(value)


# -- the routes -------------------------------------------------------------------------------------
def router(
    event_log: EventLog,
    sop_index: Callable[[], SopIndex],
    warehouse: Callable[[], Warehouse],
    recorder: AccessRecorder,
    event_ids: AgentEventIds,
    source_node: str,
) -> APIRouter:
    """The agent and full-import request routes: events appended to ``event_log`` (ids kept in
    ``event_ids``), hashes checked in the SOP index, requests read from the warehouse; reads of
    patient data and refused agent tokens recorded through ``recorder``."""
    routes = APIRouter()
    budget = RefusalBudget()

    def refused(request: Request) -> None:
        address = request.client.host if request.client else None
        if not budget.allow(address or "unknown"):
            return
        try:
            recorder.record(
                Reader(UNAUTHENTICATED, None, address),
                action="report" if request.method == "POST" and request.url.path.endswith("/events") else "query",
                channel="api",
                query={"path": request.url.path},
                outcome="unauthenticated",
            )
        except Exception as exc:  # the 401 stands whether or not the log took its record
            log.error("could not record a refused agent token: %s", exc)

    agent_check = Depends(require(Action.REPORT_TRANSFERS, session=False, on_unauthenticated=refused))
    cursor_query = Query(
        None, pattern=CURSOR_PATTERN, description="the cursor of the previous answer; absent: from the first"
    )
    organisation_query = Query(None, pattern=OID_PATTERN, max_length=64, description="only this organisation's")

    def agent_of_organisation(user: User = agent_check) -> User:
        if not user.organisation:
            raise ApiError(403, "forbidden", "an agent's user needs an organisation in the users file")
        return user

    agent = Depends(agent_of_organisation)
    requester = Depends(require(Action.REQUEST_TRANSFERS, session=False))
    monitor = Depends(require(Action.MONITOR))

    def record_read(user: User, request: Request, rows: list[dict[str, Any]], asked: dict[str, Any]) -> None:
        patients = {r["PatientID"] for r in rows if r["PatientID"]}
        if not patients:
            return  # nothing of a patient left the archive
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        recorder.record(
            reader,
            action="query",
            channel="api",
            patient_id=next(iter(patients)) if len(patients) == 1 else None,
            query=asked,
            results=len(rows),
        )

    @routes.post(
        "/api/agent/events",
        tags=["agents"],
        summary="a transfer agent's events, appended in order",
        responses={
            **_ok(
                "every event durable (duplicates: ids appended before, not appended again)",
                {
                    "type": "object",
                    "required": ["accepted", "duplicates"],
                    "properties": {"accepted": {"type": "integer"}, "duplicates": {"type": "integer"}},
                },
            ),
            **responses(400, 401, 403, 413, 503),
            **_UNFIT_ANSWER,
        },
        openapi_extra=_body(_EVENTS_SCHEMA, "the agent's events, oldest first"),
    )
    async def post_events(request: Request, user: User = agent) -> JSONResponse:
        body: AgentEvents = _parse(AgentEvents, await _read_body(request))
        now = datetime.now(UTC)
        try:
            built = [agent_event(i, item, user, now) for i, item in enumerate(body.events)]
        except UnfitEvent as exc:
            raise ApiError(422, "invalid-event", exc.detail) from None
        accepted, duplicates = await run_in_threadpool(_append, built)
        return JSONResponse({"accepted": accepted, "duplicates": duplicates})

    def _append(events: list[Event]) -> tuple[int, int]:
        with event_ids.batch:
            known = event_ids.known(e.envelope.event_id for e in events)
            fresh: list[Event] = []
            seen: set[str] = set()
            for event in events:
                if event.envelope.event_id in known or event.envelope.event_id in seen:
                    continue
                seen.add(event.envelope.event_id)
                fresh.append(event)
            futures = [publish_async(event_log, e) for e in fresh]
            durable: list[str] = []
            failure: BaseException | None = None
            for event, future in zip(fresh, futures, strict=True):
                try:
                    future.result(timeout=60)
                    durable.append(event.envelope.event_id)
                except Exception as exc:  # the others' outcomes are still remembered
                    failure = failure or exc
            if durable:
                event_ids.remember(durable)
            if failure is not None:
                raise failure
            return len(fresh), len(events) - len(fresh)

    @routes.get(
        "/api/agent/requests",
        tags=["agents"],
        summary="the caller's organisation's full-import requests after a cursor",
        responses={
            **_ok(
                "requests in the order they were made, and the cursor to ask with next",
                {
                    "type": "object",
                    "required": ["requests", "cursor"],
                    "properties": {"requests": {"type": "array", "items": _REQUEST_ITEM}, "cursor": _STRING},
                },
            ),
            **responses(400, 401, 403, 503),
        },
    )
    async def agent_requests(
        request: Request,
        cursor: str | None = cursor_query,
        user: User = agent,
    ) -> JSONResponse:
        after = _cursor(cursor)
        found = await run_in_threadpool(
            monitoring.transfer_requests, warehouse(), user.organisation, after, REQUESTS_PAGE
        )
        rows = [_request_view(r) for r in found]
        await run_in_threadpool(record_read, user, request, rows, {"agent_requests": user.organisation})
        next_cursor = str(found[-1]["offset"]) if found else (cursor or "")
        return JSONResponse(jsonable_encoder({"requests": rows, "cursor": next_cursor}))

    @routes.post(
        "/api/agent/verify",
        tags=["agents"],
        summary="compare the agent's SHA-256 of each instance with what CAMI holds",
        responses={
            **_ok(
                "per instance: match, mismatch or absent",
                {
                    "type": "object",
                    "required": ["instances"],
                    "properties": {
                        "instances": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["SOPInstanceUID", "result"],
                                "properties": {
                                    "SOPInstanceUID": _STRING,
                                    "result": {"type": "string", "enum": ["match", "mismatch", "absent"]},
                                },
                            },
                        }
                    },
                },
            ),
            **responses(400, 401, 403, 413, 503),
        },
        openapi_extra=_body(_VERIFY_SCHEMA, "SOPInstanceUID and SHA-256 (hex) of each instance the agent sent"),
    )
    async def verify(request: Request, user: User = agent) -> JSONResponse:
        body: VerifyBody = _parse(VerifyBody, await _read_body(request))
        results = await run_in_threadpool(_verify, sop_index(), body.instances, user.organisation)
        return JSONResponse({"instances": results})

    @routes.post(
        "/api/transfers/requests",
        status_code=202,
        tags=["agents"],
        summary="ask an organisation's agent for a study's or a patient's full set",
        responses={
            **_ok(
                "the request is recorded; the agent picks it up when it next asks",
                {"type": "object", "required": ["request_id"], "properties": {"request_id": _STRING}},
                202,
            ),
            **responses(400, 401, 403, 413, 503),
        },
        openapi_extra=_body(_REQUEST_SCHEMA, "whose agent, and a StudyInstanceUID or a PatientID (or both)"),
    )
    async def make_request(request: Request, user: User = requester) -> JSONResponse:
        asked: TransferRequest = _parse(TransferRequest, await _read_body(request, 64 << 10))
        event = transfer_requested(asked, user.actor, source_node)
        await run_in_threadpool(publish, event_log, event)
        return JSONResponse({"request_id": event.payload["request_id"]}, status_code=202)

    @routes.get(
        "/api/transfers/requests",
        tags=["agents"],
        summary="full-import requests, of one organisation or of all",
        responses={
            **_ok(
                "requests in the order they were made (PatientID only to roles that read patient data)",
                {"type": "object", "required": ["requests"], "properties": {"requests": {"type": "array"}}},
            ),
            **responses(400, 401, 403, 503),
        },
    )
    async def list_requests(
        request: Request,
        organisation: str | None = organisation_query,
        user: User = monitor,
    ) -> JSONResponse:
        found = await run_in_threadpool(monitoring.transfer_requests, warehouse(), organisation, -1, 10_000)
        sees_patients = may(user.role, Action.READ_PATIENT_DATA)
        rows = [{**_request_view(r), "organisation": r["organisation"]} for r in found]
        if not sees_patients:
            for row in rows:
                row["PatientID"] = None
        await run_in_threadpool(record_read, user, request, rows, {"transfer_requests": organisation or "*"})
        return JSONResponse(jsonable_encoder({"requests": rows}))

    return routes


def _request_view(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "request_id": row["request_id"],
        "StudyInstanceUID": row["StudyInstanceUID"],
        "PatientID": row["PatientID"],
        "urgent": row["urgent"],
        "reason": row["reason"],
        "requested_at": row["requested_at"],
        "requested_by": row["requested_by"],
    }


def _verify(index: SopIndex, instances: Sequence[HeldHash], organisation: str | None) -> list[dict[str, str]]:
    out = []
    for item in instances:
        versions = index.versions(item.SOPInstanceUID)
        digest = item.sha256.lower()
        if not versions:
            result = "absent"
        elif versions[-1].sha256 == digest:
            result = "match"
        elif versions[0].organisation != organisation:
            result = "absent"  # another organisation's instance: nothing to tell
        else:
            result = "mismatch"
        out.append({"SOPInstanceUID": item.SOPInstanceUID, "result": result})
    return out


def transfer_requested(asked: TransferRequest, actor: Actor, source_node: str) -> Event:
    """The TransferRequested event of a full-import request (also what ``cami transfers request`` appends)."""
    return new_event(
        "TransferRequested",
        {
            "request_id": str(uuid.uuid4()),
            "organisation": asked.organisation,
            "StudyInstanceUID": asked.StudyInstanceUID or None,
            "PatientID": asked.PatientID or None,
            "urgent": asked.urgent,
            "reason": asked.reason or None,
        },
        aggregate_id=asked.organisation,
        source_node=source_node,
        organisation=asked.organisation,
        actor=actor,
    )
