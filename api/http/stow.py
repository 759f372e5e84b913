"""STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]`` with ``multipart/related;
type="application/dicom"``.

The route only parses and maps: the body is spooled to a temporary file as it arrives (small
bodies stay in memory, larger ones go under ``$CAMI_HOME/spool``), the parts are located in it by
:mod:`ingest.multipart`, and :mod:`ingest.stow` stores them one at a time and builds the DICOM
JSON answer. Status: 200 all stored, 202 some failed (or stored with warnings), 409 all failed,
503 nothing stored because storage was unavailable, 400 malformed multipart body, 415 a media
type other than multipart/related with application/dicom parts, 413 a body over
``CAMI_HTTP_MAX_BODY`` bytes (default 1 GiB), counted as it arrives.

The request header ``CAMI-Priority: emergency`` (a hospital's transfer agent sends it for its
emergency lane) stores the instances as emergencies, as the emergency AE title does on DICOM;
``scheduled`` is the default, any other value a 400.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from api.auth import User
from api.http.base_url import base_url
from api.http.deps import require
from api.http.errors import ApiError, responses
from ingest.multipart import STOW_MEDIA, MultipartError, is_multipart_related, parse_multipart_related
from ingest.pipeline import Arrival, Ingestor
from ingest.stow import store_parts, stow_response
from schemas.policy import Action
from schemas.uids import is_uid

DICOM_JSON = "application/dicom+json"
#: bodies up to this size are spooled in memory, larger ones in a file under $CAMI_HOME/spool
SPOOL_IN_MEMORY = 8 << 20
PRIORITY_HEADER = "CAMI-Priority"
PRIORITIES = ("scheduled", "emergency")


async def spool_body(request: Request, limit: int, spool: Path) -> tuple[IO[bytes], int]:
    """The request body in a temporary file (memory up to ``SPOOL_IN_MEMORY``) and its size; 413
    as soon as it passes ``limit``. The caller closes the file, which deletes it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise ApiError(413, "payload-too-large", f"the body exceeds the archive's limit of {limit} bytes")
        except ValueError:
            raise ApiError(400, "bad-request", "Content-Length is not a number") from None
    spool.mkdir(parents=True, exist_ok=True)
    body = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b", dir=str(spool))  # noqa: SIM115
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, "payload-too-large", f"the body exceeds the archive's limit of {limit} bytes")
            body.write(chunk)
    except ClientDisconnect:
        # the sender's link broke mid-body (an agent on a slow line): nothing was stored, nobody is
        # left to answer; a 400 ends the request quietly instead of an unhandled-exception trace
        body.close()
        raise ApiError(400, "client-disconnected", "the body ended early: the client went away") from None
    except BaseException:
        body.close()
        raise
    return body, size


def _dicom_json_answer(description: str) -> dict[str, Any]:
    return {"description": description, "content": {DICOM_JSON: {"schema": {"type": "object"}}}}


#: what the OpenAPI document says of a STOW-RS operation
_DOCUMENTED: dict[str, Any] = {
    "responses": {
        200: _dicom_json_answer("every instance stored (ReferencedSOPSequence)"),
        202: _dicom_json_answer("some instances stored, some failed or stored with warnings"),
        409: _dicom_json_answer("every instance failed (FailedSOPSequence with FailureReason and ErrorComment)"),
        **responses(400, 401, 403, 405, 413, 415),
        503: {
            **_dicom_json_answer("nothing stored: storage or the event log unavailable (or the error body)"),
            "headers": {"Retry-After": {"schema": {"type": "string"}}},
        },
    },
    "openapi_extra": {
        "parameters": [
            {
                "name": PRIORITY_HEADER,
                "in": "header",
                "required": False,
                "description": "emergency: the instances are stored as emergencies (the transfer agent's lane)",
                "schema": {"type": "string", "enum": list(PRIORITIES)},
            }
        ],
        "requestBody": {
            "required": True,
            "description": 'DICOM Part-10 objects, one per part (multipart/related; type="application/dicom")',
            "content": {
                "multipart/related": {
                    "schema": {"type": "string", "format": "binary"},
                    "encoding": {"file": {"contentType": "application/dicom"}},
                }
            },
        },
    },
}


def router(ingestor: Ingestor, spool: Path, limit: int) -> APIRouter:
    """The STOW-RS routes, storing through ``ingestor``; bodies spooled under ``spool`` up to
    ``limit`` bytes."""
    routes = APIRouter(tags=["DICOMweb"])
    stow_user = Depends(require(Action.STORE, session=False))

    async def stow(request: Request, user: User, study: str | None) -> JSONResponse:
        if study is not None and not is_uid(study):
            raise ApiError(400, "invalid-study-uid", "the study in the URL is not a valid DICOM UID")
        priority = request.headers.get(PRIORITY_HEADER, "scheduled")
        if priority not in PRIORITIES:
            raise ApiError(400, "invalid-header", {"parameter": PRIORITY_HEADER, "problem": "scheduled or emergency"})
        content_type = request.headers.get("content-type")
        if not content_type or not is_multipart_related(content_type):
            raise ApiError(415, "unsupported-media-type", STOW_MEDIA)
        body, size = await spool_body(request, limit, spool)
        try:
            return await _stow_spooled(request, user, study, content_type, body, size, priority == "emergency")
        finally:
            body.close()

    async def _stow_spooled(
        request: Request,
        user: User,
        study: str | None,
        content_type: str,
        body: IO[bytes],
        size: int,
        emergency: bool,
    ) -> JSONResponse:
        try:
            parts = await run_in_threadpool(parse_multipart_related, content_type, body, size)
        except MultipartError as exc:
            raise ApiError(exc.status, exc.code, exc.detail) from None
        peer = request.client.host if request.client else None
        arrival = Arrival(
            channel="stow-rs",
            source_node=f"stow-rs:{peer or 'unknown'}",
            organisation=user.organisation,
            peer_address=peer,
            actor=user.actor,
            emergency=emergency,
            correlation_id=str(uuid.uuid4()),
        )
        results = await run_in_threadpool(store_parts, ingestor, body, parts, arrival, study)
        status, payload = stow_response(results, base_url(request), study)
        headers = {"Retry-After": "30"} if status == 503 else None
        return JSONResponse(payload, status_code=status, media_type=DICOM_JSON, headers=headers)

    @routes.post("/dicomweb/studies", summary="STOW-RS: store instances", **_DOCUMENTED)
    async def stow_any(request: Request, user: User = stow_user) -> JSONResponse:
        return await stow(request, user, None)

    @routes.post("/dicomweb/studies/{study}", summary="STOW-RS: store instances of one study", **_DOCUMENTED)
    async def stow_study(request: Request, study: str, user: User = stow_user) -> JSONResponse:
        return await stow(request, user, study)

    return routes
