"""What regional IT and auditors read over HTTP: the monitoring dashboards' figures and the audit trail.

``/api/monitoring/...`` (``Action.MONITOR``: regional IT, administrators) answers from the monitoring
projection: per organisation, per minute, silent senders, transfer states, and the dead letters
of every projection (events it could not apply; see ``projections.dead_letters``). It holds no patient
data (organisations, AE titles, counts), so reading it is not a record access. Beside each
``organisation`` code stands its ``organisation_name`` from the regional directory
(:mod:`schemas.organisations`: the short name, or the code behind the unknown marker) and
``organisation_known``.

``/api/audit/...`` (``Action.AUDIT``: auditors, administrators) answers from the audit trail: the
history of one record and the hash-chain check. An entry names patient IDs and study UIDs, so
each history read is itself recorded (``view`` via ``api``), like every other read of patient data,
and so is each refusal of another role (``outcome = "denied"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api.access import AccessRecorder, Reader
from api.auth import User
from api.http.deps import require
from api.http.errors import ApiError
from projections import dead_letters
from projections.audit import queries as audit_queries
from projections.audit.verify import ChainReport, verify_chain
from projections.monitoring import queries as monitoring
from projections.warehouse.base import Warehouse
from schemas.organisations import OrganisationDirectory
from schemas.policy import Action, may

#: the longest window a dashboard may ask for at once (the tables hold everything; this bounds a scan)
MAX_WINDOW = timedelta(days=366)


def _since(minutes: int) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def _json(data: Any) -> JSONResponse:
    return JSONResponse(jsonable_encoder(data))


def named(rows: Iterable[dict[str, Any]], directory: OrganisationDirectory) -> list[dict[str, Any]]:
    """``rows`` with the organisation's name and whether the directory knows it right after the code
    (both None where a row names no organisation)."""
    named = []
    for row in rows:
        entry: dict[str, Any] = {}
        for key, value in row.items():
            entry[key] = value
            if key == "organisation":
                entry["organisation_name"] = directory.display(value) if value else None
                entry["organisation_known"] = directory.lookup(value) is not None if value else None
        named.append(entry)
    return named


def router(
    warehouse: Warehouse,
    recorder: AccessRecorder,
    names: OrganisationDirectory | None = None,
    verify_log: Callable[[str | None], ChainReport] | None = None,
) -> APIRouter:
    """The monitoring and audit routes over ``warehouse``; audit reads recorded through ``recorder``;
    organisations named from the directory ``names`` (none: every code shown as unknown);
    ``verify_log`` checks the audit trail against the event log (``?against_log=true``)."""
    routes = APIRouter()
    directory = names if names is not None else OrganisationDirectory()
    it_user = Depends(require(Action.MONITOR))
    signed_in = Depends(require())

    def audit_reader(request: Request, user: User = signed_in) -> User:
        """An auditor; any other role is refused (403) and the refusal recorded, as for patient data."""
        if not may(user.role, Action.AUDIT):
            reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
            asked = {"path": request.url.path, **dict(request.query_params)}
            recorder.record(reader, action="view", channel="api", query=asked, outcome="denied")
            raise ApiError(403, "forbidden", f"role {user.role} may not read the audit trail")
        return user

    auditor = Depends(audit_reader)
    window = Query(60, ge=1, le=int(MAX_WINDOW.total_seconds() // 60), description="minutes back from now")

    @routes.get("/api/monitoring/organisations", tags=["monitoring"], summary="per organisation, over a window")
    def organisations(minutes: int = window, user: User = it_user) -> JSONResponse:
        since = _since(minutes)
        rows = named(monitoring.organisation_summary(warehouse, since), directory)
        return _json({"since": since, "organisations": rows})

    @routes.get(
        "/api/monitoring/organisations/{organisation}/minutes",
        tags=["monitoring"],
        summary="one organisation, minute by minute",
    )
    def minutes_of(organisation: str, minutes: int = window, user: User = it_user) -> JSONResponse:
        if not organisation or len(organisation) > 64 or not organisation.replace(".", "").isdigit():
            raise ApiError(400, "invalid-parameter", {"parameter": "organisation", "problem": "not an OID"})
        rows = monitoring.per_minute(warehouse, organisation, _since(minutes))
        return _json({**named([{"organisation": organisation}], directory)[0], "minutes": rows})

    @routes.get("/api/monitoring/silent-senders", tags=["monitoring"], summary="AE titles silent for a while")
    def silent(
        minutes: int = Query(60, ge=1, le=int(MAX_WINDOW.total_seconds() // 60)), user: User = it_user
    ) -> JSONResponse:
        return _json({"senders": named(monitoring.stalled_senders(warehouse, timedelta(minutes=minutes)), directory)})

    @routes.get(
        "/api/monitoring/dead-letters",
        tags=["monitoring"],
        summary="events a projection could not apply, per projection",
    )
    def dead_letter_view(user: User = it_user) -> JSONResponse:
        # the error text may quote the event's values (patient data): regional IT gets its kind
        # only; the whole text is in `cami status --json` on the archive's own machine
        letters = [
            {**{k: v for k, v in d.items() if k != "error"}, "error_kind": str(d["error"]).split(":", 1)[0]}
            for d in dead_letters.open_letters(warehouse)
        ]
        return _json({"projections": dead_letters.counts(warehouse), "letters": letters})

    @routes.get("/api/monitoring/transfers", tags=["monitoring"], summary="transfer states and agents")
    def transfers(user: User = it_user) -> JSONResponse:
        return _json({"organisations": named(monitoring.transfer_states(warehouse), directory)})

    @routes.get("/api/audit/records/{record}", tags=["audit"], summary="every audit entry of one record, in order")
    async def history(record: str, request: Request, user: User = auditor) -> JSONResponse:
        if not record or len(record) > 128 or any(ord(ch) < 0x20 for ch in record):
            raise ApiError(400, "invalid-parameter", {"parameter": "record", "problem": "not a record id"})
        entries = await run_in_threadpool(audit_queries.history, warehouse, record)
        if not entries:
            raise ApiError(404, "not-found", "no audit entries for this record")
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        patients = {e["patient_id"] for e in entries if e["patient_id"]}
        studies = {e["study_instance_uid"] for e in entries if e["study_instance_uid"]}
        await run_in_threadpool(
            lambda: recorder.record(
                reader,
                action="view",
                channel="api",
                study_uid=record if record in studies else None,
                patient_id=next(iter(patients)) if len(patients) == 1 else None,
                query={"audit_record": record},
                results=len(entries),
            )
        )
        return _json({"record": record, "entries": entries})

    @routes.get(
        "/api/audit/verify",
        tags=["audit"],
        summary="recompute the hash chains from the stored entries (against_log: and re-hash the log's events)",
    )
    async def verify(record: str | None = None, against_log: bool = False, user: User = auditor) -> JSONResponse:
        if against_log and verify_log is not None:
            report = await run_in_threadpool(verify_log, record)
        else:
            report = await run_in_threadpool(verify_chain, warehouse, record)
        return _json(report.to_dict())

    return routes
