"""Rebuilding read models while the archive keeps serving (an administrator's, ``Action.REBUILD``).

- ``POST /api/rebuilds`` with ``{"projections": ["archive-index", "query-model"]}`` (empty or
  absent: every projection) starts a rebuild into shadow tables that are swapped in at the end
  (:mod:`projections.rebuild_online`); 202 with its progress. One at a time: 409 while one runs.
- ``GET /api/rebuilds/current``: the progress of the running or last rebuild (phase, events done
  of those known, events/s, ETA, the result or the error); 404 when none ran since the start.

It runs in this process because this process owns the warehouse and the query store (the embedded
ClickHouse directory opens in one process only). ``cami replay --online`` is its client.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema

from api.http.deps import require
from api.http.errors import ApiError, responses
from projections.rebuild_online import OnlineRebuilds, RebuildRunning
from projections.registry import PROJECTIONS
from schemas.policy import Action


def _known(name: str) -> str:
    if name != "all" and name not in PROJECTIONS:
        raise ValueError(f"unknown projection {name!r}; known: {', '.join(PROJECTIONS)}")
    return name


#: a projection's name as the request names it (``all``: every projection)
ProjectionName = Annotated[
    str, AfterValidator(_known), WithJsonSchema({"type": "string", "enum": [*PROJECTIONS, "all"]})
]


class RebuildRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    projections: list[ProjectionName] = Field(
        default_factory=list, description="projection names; empty or 'all': every projection"
    )
    batch_size: int = Field(default=5_000, ge=1, le=100_000, description="events read and written per step")


def router(rebuilds: OnlineRebuilds) -> APIRouter:
    api = APIRouter(prefix="/api/rebuilds", tags=["rebuilds"])
    administrator = Depends(require(Action.REBUILD, session=False))

    @api.post("", status_code=202, dependencies=[administrator], responses=responses(400, 401, 403, 409))
    def start(request: RebuildRequest) -> JSONResponse:
        names = [] if "all" in request.projections else list(dict.fromkeys(request.projections))
        try:
            progress = rebuilds.start(names, batch_size=request.batch_size)
        except RebuildRunning as exc:
            raise ApiError(409, "rebuild-running", str(exc)) from exc
        return JSONResponse(progress.to_dict(), status_code=202)

    @api.get("/current", dependencies=[administrator], responses=responses(401, 403, 404))
    def current() -> dict[str, Any]:
        progress = rebuilds.current()
        if progress is None:
            raise ApiError(404, "not-found", "no rebuild has run since the archive started")
        return progress.to_dict()

    return api
