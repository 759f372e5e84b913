"""The agent's small HTTP endpoint for the hospital's MIS (medical information system).

- ``POST /pathology`` JSON ``{"StudyInstanceUID"?, "AccessionNumber"?, "PatientID"?}`` (at least one):
  the MIS says a study (or a patient's studies) showed pathology; matching studies the agent holds
  become eligible now, and ones not yet received when they arrive
  (:meth:`ingest.agent.model.Intake.mark_pathology`). 200 ``{"eligible": [study UIDs now eligible]}``.
- ``POST /reports`` with a Part-10 DICOM SR or encapsulated PDF as the body (``application/dicom``):
  the study's report, accepted into the queue like any instance, so it travels with its study.
  202 ``{"SOPInstanceUID", "StudyInstanceUID", "sha256"}``.
- ``GET /health``: ``{"status": "ok"}``, without a token (for the hospital's monitoring).

Every other route needs ``Authorization: Bearer <token>`` (``[mis] token``). Errors are JSON
``{"error": code, "detail": ...}``: 401 (no or wrong token), 400 (a body that is not JSON, not
DICOM), 413 (a report over the size limit), 415 (not ``application/dicom``), 422 (valid JSON or
DICOM that is not what the route takes, or a report the queue refuses).
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from ingest.agent.config import MisEndpoint
from ingest.agent.model import Intake
from ingest.dicom import MalformedObject, read_header, split_part10, uid
from ingest.reports.documents import ENCAPSULATED_PDF, SR_CLASSES
from ingest.web_server import HttpServer

log = logging.getLogger("cami.agent.mis")

SOURCE = "mis"
#: a report larger than this is refused (413): reports are text or a PDF, not images
MAX_REPORT_BYTES = 64 * 1024 * 1024
REPORT_CLASSES = frozenset(SR_CLASSES) | {ENCAPSULATED_PDF}
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class PathologyFlag(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    StudyInstanceUID: str | None = Field(default=None, min_length=1, max_length=64, pattern=UID_PATTERN)
    AccessionNumber: str | None = Field(default=None, min_length=1, max_length=64)
    PatientID: str | None = Field(default=None, min_length=1, max_length=64)


def _error(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def _authorised(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


def mis_app(queue: Intake, token: str) -> FastAPI:
    """The endpoint's app; ``token`` must not be empty (an open endpoint would let anyone mark
    studies for transfer)."""
    if not token:
        raise ValueError("the MIS endpoint needs a token ([mis] token)")
    app = FastAPI(title="CAMI transfer agent: MIS endpoint", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # unknown routes and methods answer in the same JSON shape as the rest
        return _error(exc.status_code, "not-found" if exc.status_code == 404 else "http-error", exc.detail)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if request.url.path != "/health" and not _authorised(request, token):
            client = request.client.host if request.client else "?"
            log.warning("MIS request to %s from %s refused: no or wrong token", request.url.path, client)
            return _error(401, "unauthorised", "a valid bearer token is required", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/pathology")
    async def pathology(request: Request) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "invalid-json", "the body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "invalid-json", "the body must be a JSON object")
        try:
            flag = PathologyFlag.model_validate(body)
        except ValidationError as exc:
            detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
            return _error(422, "invalid-flag", detail)
        if flag.StudyInstanceUID is None and flag.AccessionNumber is None and flag.PatientID is None:
            return _error(422, "invalid-flag", "name the study: StudyInstanceUID, AccessionNumber or PatientID")
        eligible = await run_in_threadpool(
            lambda: queue.mark_pathology(
                study_uid=flag.StudyInstanceUID,
                accession=flag.AccessionNumber,
                patient_id=flag.PatientID,
                source=SOURCE,
            )
        )
        log.info("MIS pathology flag %s: %d studies now eligible", flag.model_dump(exclude_none=True), len(eligible))
        return JSONResponse({"eligible": eligible})

    @app.post("/reports")
    async def reports(request: Request) -> JSONResponse:
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != "application/dicom":
            return _error(415, "unsupported-media-type", "send the report as application/dicom (a Part-10 file)")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_REPORT_BYTES:
            return _error(413, "too-large", f"a report may be at most {MAX_REPORT_BYTES} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_REPORT_BYTES:
                return _error(413, "too-large", f"a report may be at most {MAX_REPORT_BYTES} bytes")
            chunks.append(chunk)
        data = b"".join(chunks)
        try:
            received = split_part10(data)
            header = read_header(data[received.dataset_offset :], received.transfer_syntax)
        except MalformedObject as exc:
            return _error(400, "invalid-dicom", str(exc))
        sop_class = uid(header, "SOPClassUID")
        if sop_class not in REPORT_CLASSES:
            return _error(
                422, "not-a-report", f"SOPClassUID {sop_class!r} is neither a DICOM SR nor an encapsulated PDF"
            )
        try:
            held = await run_in_threadpool(lambda: queue.accept(data, source=SOURCE))
        except ValueError as exc:
            return _error(422, "refused", str(exc) or "refused by the agent's queue")
        log.info("MIS report %s for study %s queued", held.sop_instance_uid, held.study_instance_uid)
        return JSONResponse(
            {
                "SOPInstanceUID": held.sop_instance_uid,
                "StudyInstanceUID": held.study_instance_uid,
                "sha256": held.sha256,
            },
            status_code=202,
        )

    return app


class MisServer(HttpServer):
    """The MIS endpoint in a thread: ``start()`` returns once it listens (``port`` 0 picks a free one
    and ``port`` is then the bound one), ``stop()`` ends it."""

    def __init__(self, endpoint: MisEndpoint, queue: Intake) -> None:
        super().__init__(
            mis_app(queue, endpoint.token), endpoint.host, endpoint.port, name="cami-agent-mis", lifespan="off"
        )
        self.endpoint = endpoint
