"""Orders from the MIS, as a doctor follows them: ``GET /api/orders/{accession}`` -- the order,
and its status through referral, scheduled, in progress, images received (how many), report
draft, signed and available in the region (:mod:`projections.orders.status`). Any role that may
read patient data; one RecordAccessed event per read (channel ``api``), durable before the answer."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from api.access import AccessRecorder, Reader
from api.auth import User
from api.http.deps import require
from api.http.errors import ApiError, responses
from projections.orders.queries import status_of
from projections.query_model.store import QueryStore
from projections.warehouse.base import Warehouse
from schemas.policy import Action


def router(warehouse: Warehouse, store: QueryStore, recorder: AccessRecorder) -> APIRouter:
    routes = APIRouter(tags=["orders"])
    reader = Depends(require(Action.READ_PATIENT_DATA))

    @routes.get(
        "/api/orders/{accession}",
        summary="an order and its status: referral, scheduled, in progress, images, draft, signed, available",
        responses=responses(401, 403, 404, 503),
    )
    def get_order(request: Request, accession: str, user: User = reader) -> JSONResponse:
        who = Reader(user.actor, user.organisation, request.client.host if request.client else None)
        if not accession.strip() or len(accession) > 64:
            raise ApiError(404, "order-not-found", "no order has this accession number")
        found = status_of(warehouse, store, accession)
        if found is None:
            recorder.record(who, action="view", channel="api", query={"accession_number": accession}, results=0)
            raise ApiError(404, "order-not-found", "no order has this accession number")
        recorder.record(
            who,
            action="view",
            channel="api",
            study_uid=found["study_uid"] or None,
            patient_id=found["patient"]["id"],
            query={"accession_number": accession},
            results=1,
        )
        return JSONResponse(jsonable_encoder(found))

    return routes
