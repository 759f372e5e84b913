"""The reports API: create, edit, sign and amend reports, and read them (``/api/reports``,
``/api/studies/{study_uid}/reports``). Routes authenticate, parse and call the report service;
its errors map to statuses through :mod:`api.http.errors`.

The caller is authenticated before a body is read: without a token the answer is 401 whatever
the body holds, so the API says nothing about what it would accept to someone not signed in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from api.access import AccessRecorder, Reader, may_read_draft_text
from api.auth import User
from api.http.deps import require
from api.http.errors import ApiError, responses
from ingest.reports import (
    Author,
    ReportNotFound,
    ReportService,
    ReportState,
)
from ingest.reports.rules import MAX_TEXT
from schemas.policy import Action, may
from schemas.uids import is_uid

Body = TypeVar("Body", bound=BaseModel)
#: an assessment is a short code: anything but control characters (ingest/reports/rules.py)
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


class CreateReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    study_instance_uid: str = Field(min_length=1, max_length=64)
    protocol_text: str = ""
    conclusion_text: str = ""
    accession_number: str | None = Field(default=None, max_length=16)
    #: primary (default), double-reading (set by the archive on a double-read study),
    #: second-opinion or arbitration (with the request's or task's id as request_id)
    reading: Literal["primary", "double-reading", "second-opinion", "arbitration"] | None = None
    request_id: str | None = Field(default=None, max_length=64)
    #: the reading's overall finding (required to sign a double reading): normal, abnormal, BI-RADS...
    assessment: str | None = Field(default=None, max_length=16, pattern=NO_CONTROL_CHARACTERS)


class SecondOpinionRequest(BaseModel):
    """Whom a second opinion is asked of: one organisation (its regional code) or any radiologist
    of one specialty."""

    model_config = ConfigDict(extra="ignore")
    to_kind: Literal["organisation", "specialty"]
    to: str = Field(min_length=1, max_length=64, pattern=r"\S")
    reason: str = Field(min_length=1, max_length=4000, pattern=r"\S")


class EditReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    protocol_text: str
    conclusion_text: str
    #: optimistic concurrency: refuse (409) unless the report is still at this revision
    revision: int | None = None
    assessment: str | None = Field(default=None, max_length=16, pattern=NO_CONTROL_CHARACTERS)


class AmendReport(BaseModel):
    model_config = ConfigDict(extra="ignore")
    reason: str = Field(min_length=1, max_length=4000)
    protocol_text: str | None = None
    conclusion_text: str | None = None


def json_body(model: type[Body], caller: Callable[..., Awaitable[User]]) -> Callable[..., Awaitable[Body]]:
    """Dependency: the JSON body as ``model``, read only once ``caller`` (the route's own user
    dependency, run once) has let the request through: FastAPI parses its body parameters before
    any dependency runs, which would answer 400 before 401."""

    signed_in = Depends(caller)

    async def dependency(request: Request, user: User = signed_in) -> Body:
        raw = await request.body()
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise RequestValidationError([{"loc": ("body",), "msg": f"JSON decode error: {exc}"}]) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            errors = [{"loc": ("body", *e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            raise RequestValidationError(errors) from None

    return dependency


def _documented_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    # what the report service refuses with 422, said in the schema: a study that is not a UID,
    # texts with NUL characters or longer than MAX_TEXT
    for name, field in schema["properties"].items():
        if name == "study_instance_uid":
            field["pattern"] = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
        elif name.endswith("_text"):
            for option in field.get("anyOf", [field]):
                if option.get("type") == "string":
                    option.update(pattern="^[^\x00]*$", maxLength=MAX_TEXT)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _author(user: User) -> Author:
    return Author(user.actor, user.clinician(), user.organisation)


def _report(state: ReportState, status: int = 200, location: str | None = None) -> JSONResponse:
    headers = {"Location": location} if location else None
    return JSONResponse(state.view(), status_code=status, headers=headers)


def router(service: ReportService, recorder: AccessRecorder) -> APIRouter:
    """The report routes over ``service``; reads recorded through ``recorder``."""
    routes = APIRouter(tags=["reports"])
    signed_in = Depends(require())
    author_check = require(Action.WRITE_REPORTS, session=False)
    amender_check = require(Action.AMEND_REPORTS, session=False)
    author, amender = Depends(author_check), Depends(amender_check)
    new_report = Depends(json_body(CreateReport, author_check))
    edited_report = Depends(json_body(EditReport, author_check))
    amendment = Depends(json_body(AmendReport, amender_check))
    author_or_session = Depends(require(Action.WRITE_REPORTS))
    asker_check = require(Action.READ_IMAGES, session=False)
    asker = Depends(asker_check)
    second_opinion = Depends(json_body(SecondOpinionRequest, asker_check))
    write_errors = responses(400, 401, 403, 404, 409, 422, 503)

    @routes.post(
        "/api/reports",
        status_code=201,
        summary="create a draft report (409: a reading the study cannot take; 404: no such task)",
        responses=responses(400, 401, 403, 404, 409, 422, 503),
        openapi_extra=_documented_body(CreateReport),
    )
    def create_report(user: User = author, body: CreateReport = new_report) -> JSONResponse:
        state = service.create(
            body.study_instance_uid,
            body.protocol_text,
            body.conclusion_text,
            _author(user),
            accession_number=body.accession_number,
            reading=body.reading,
            request_id=body.request_id or None,
            assessment=body.assessment,
        )
        return _report(state, 201, f"/api/reports/{state.report_id}")

    @routes.put(
        "/api/reports/{report_id}",
        summary="edit a draft (409 once signed)",
        responses=write_errors,
        openapi_extra=_documented_body(EditReport),
    )
    def edit_report(report_id: str, user: User = author, body: EditReport = edited_report) -> JSONResponse:
        state = service.edit(
            report_id,
            body.protocol_text,
            body.conclusion_text,
            _author(user),
            expected_revision=body.revision,
            assessment=body.assessment,
        )
        return _report(state)

    @routes.post(
        "/api/reports/{report_id}/sign",
        summary="sign a draft; the signing time is the archive's clock (anything in the body is ignored)",
        responses=write_errors,
    )
    def sign_report(report_id: str, user: User = author) -> JSONResponse:
        return _report(service.sign(report_id, _author(user)))

    @routes.post(
        "/api/reports/{report_id}/amendments",
        status_code=201,
        summary="amend a signed report (radiologist or administrator; keeps before and after)",
        responses=write_errors,
        openapi_extra=_documented_body(AmendReport),
    )
    def amend_report(report_id: str, user: User = amender, body: AmendReport = amendment) -> JSONResponse:
        state = service.amend(report_id, body.protocol_text, body.conclusion_text, body.reason, _author(user))
        return _report(state, 201)

    # report reads are reads of patient data: one RecordAccessed each, durable before the answer
    # (a refused one as denied); a draft's texts only for those api.access lets read them
    def report_reader(request: Request, user: User) -> Reader:
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        if not may(user.role, Action.READ_PATIENT_DATA):
            recorder.record(reader, action="view", channel="api", query=dict(request.path_params), outcome="denied")
            raise ApiError(403, "forbidden", f"role {user.role} may not read reports")
        return reader

    def shown(state: ReportState, user: User) -> dict[str, Any]:
        return state.view(draft_text=may_read_draft_text(user.role, state.drafted_by(user.name)))

    @routes.get(
        "/api/reports/{report_id}", summary="a report with its amendments", responses=responses(401, 403, 404, 503)
    )
    def get_report(request: Request, report_id: str, user: User = signed_in) -> JSONResponse:
        reader = report_reader(request, user)
        try:
            state = service.get(report_id)
        except ReportNotFound:
            recorder.record(reader, action="view", channel="api", query={"report_id": report_id}, results=0)
            raise
        blinded = report_id in service.hidden(service.for_study(state.study_instance_uid), user.name, user.role)
        recorder.record(
            reader,
            action="view",
            channel="api",
            study_uid=state.study_instance_uid,
            patient_id=state.patient_id,
            query={"report_id": report_id},
            results=0 if blinded else 1,
            outcome="denied" if blinded else "ok",
        )
        if blinded:
            raise ApiError(403, "reading-blinded", "a double-read study: sign your own reading before reading others")
        return JSONResponse(shown(state, user))

    @routes.get(
        "/api/studies/{study_uid}/reports", summary="the reports of a study", responses=responses(400, 401, 403, 503)
    )
    def study_reports(request: Request, study_uid: str, user: User = signed_in) -> JSONResponse:
        reader = report_reader(request, user)
        if not is_uid(study_uid):
            raise ApiError(400, "invalid-study-uid", "the study in the URL is not a valid DICOM UID")
        states = service.for_study(study_uid)
        patients = {s.patient_id for s in states if s.patient_id}
        recorder.record(
            reader,
            action="view",
            channel="api",
            study_uid=study_uid,
            patient_id=patients.pop() if len(patients) == 1 else None,
            query={"StudyInstanceUID": study_uid, "reports": True},
            results=len(states),
        )
        hidden = service.hidden(states, user.name, user.role)
        return JSONResponse(
            {
                "study_instance_uid": study_uid,
                "reports": [blinded(s) if s.report_id in hidden else shown(s, user) for s in states],
            }
        )

    @routes.post(
        "/api/studies/{study_uid}/second-opinions",
        status_code=201,
        summary="ask for a second opinion: of an organisation or of any radiologist of a specialty",
        responses=responses(400, 401, 403, 422, 503),
        openapi_extra=_documented_body(SecondOpinionRequest),
    )
    def ask_second_opinion(
        study_uid: str, user: User = asker, body: SecondOpinionRequest = second_opinion
    ) -> JSONResponse:
        if not is_uid(study_uid):
            raise ApiError(400, "invalid-study-uid", "the study in the URL is not a valid DICOM UID")
        task = service.request_second_opinion(
            study_uid,
            _author(user),
            to_organisation=body.to.strip() if body.to_kind == "organisation" else None,
            to_specialty=body.to.strip() if body.to_kind == "specialty" else None,
            reason=body.reason,
        )
        return JSONResponse(task, status_code=201)

    @routes.post(
        "/api/second-opinions/{request_id}/accept",
        summary="take a second-opinion request on (a radiologist of the organisation or specialty asked)",
        responses=write_errors,
    )
    def accept_second_opinion(request_id: str, user: User = author) -> JSONResponse:
        return JSONResponse(service.accept_second_opinion(request_id, _author(user), user.specialty))

    @routes.get(
        "/api/reading-tasks",
        summary="the second opinions and arbitrations this radiologist may take (or took and has not answered)",
        responses=responses(401, 403, 503),
    )
    def my_reading_tasks(request: Request, user: User = author_or_session) -> JSONResponse:
        tasks = service.open_tasks_for(_author(user), user.specialty)
        reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        recorder.record(reader, action="query", channel="api", query={"reading_tasks": "open"}, results=len(tasks))
        return JSONResponse({"tasks": tasks})

    @routes.get(
        "/api/studies/{study_uid}/reading-tasks",
        summary="a study's second-opinion requests and arbitration tasks",
        responses=responses(400, 401, 403, 503),
    )
    def reading_tasks(request: Request, study_uid: str, user: User = signed_in) -> JSONResponse:
        reader = report_reader(request, user)
        if not is_uid(study_uid):
            raise ApiError(400, "invalid-study-uid", "the study in the URL is not a valid DICOM UID")
        tasks = service.tasks(study_uid)
        recorder.record(
            reader, action="view", channel="api", study_uid=study_uid, query={"reading_tasks": True}, results=len(tasks)
        )
        return JSONResponse({"study_instance_uid": study_uid, "tasks": tasks})

    return routes


def blinded(state: ReportState) -> dict[str, Any]:
    """What a double reader sees of another's reading before signing their own: that it exists."""
    return {
        "report_id": state.report_id,
        "study_instance_uid": state.study_instance_uid,
        "status": state.status,
        "reading": state.reading,
        "blinded": True,
    }
