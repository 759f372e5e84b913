"""``GET /api/status``: what each backend of this node holds (:mod:`api.state`), for regional IT
and administrators. ``cami status`` asks it when the running server holds the embedded warehouse."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api.auth import User
from api.bootstrap import Archive
from api.http.deps import require
from api.state import archive_state
from schemas.policy import Action


def router(archive: Archive) -> APIRouter:
    routes = APIRouter()
    monitor = Depends(require(Action.MONITOR))

    @routes.get(
        "/api/status",
        tags=["monitoring"],
        summary=(
            "how each backend is doing and what it holds: events per topic, read-model rows,"
            " projection lag, dead letters"
        ),
    )
    async def status(user: User = monitor) -> JSONResponse:
        state: dict[str, Any] = await run_in_threadpool(archive_state, archive)
        return JSONResponse(jsonable_encoder(state))

    return routes
