"""Reads of the orders read model (:mod:`projections.orders.fold`): the modality worklist, one
order by accession number, and its status with what it became (images, reports). Exact at query
time over ``FINAL`` rows; every value travels as a ``{name:Type}`` parameter.

An order is **cancelled** when its latest cancellation comes after its latest placement in the
log; its procedure step's **state** is the latest MPPS status of the steps naming its accession
number (else its Study Instance UID), each attribute of a step its latest non-empty value.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from projections.archive_index.views import report_milestones
from projections.orders.fold import CANCELLATIONS, ORDER_COLUMNS, ORDERS, STEPS
from projections.orders.status import order_status
from projections.query_model.find import search_studies
from projections.query_model.store import QueryStore
from projections.warehouse.base import Warehouse

#: the worklist answers at most this many scheduled steps
MAX_WORKLIST = 1000

_ORDER_STATE = f"""
SELECT {", ".join(f"o.{c} AS {c}" for c in ORDER_COLUMNS)},
       c.cancels > 0 AND c.cancel_offset > o.offset AS cancelled,
       if(c.cancels > 0, c.reason, NULL) AS cancel_reason,
       if(c.cancels > 0, c.cancelled_at, NULL) AS cancelled_at,
       if(sa.a_status != '', sa.a_status, su.u_status) AS step_status
FROM {ORDERS} AS o FINAL
LEFT JOIN (
    SELECT placer_application, placer_order_number, count() AS cancels, max(offset) AS cancel_offset,
           argMax(reason, offset) AS reason, argMax(cancelled_at, offset) AS cancelled_at
    FROM {CANCELLATIONS} GROUP BY placer_application, placer_order_number
) AS c ON c.placer_application = o.placer_application AND c.placer_order_number = o.placer_order_number
LEFT JOIN (
    SELECT assumeNotNull(accession_number) AS a, argMax(status, offset) AS a_status
    FROM {STEPS} WHERE accession_number IS NOT NULL AND accession_number != '' GROUP BY a
) AS sa ON sa.a = o.accession_number
LEFT JOIN (
    SELECT assumeNotNull(study_uid) AS u, argMax(status, offset) AS u_status
    FROM {STEPS} WHERE study_uid IS NOT NULL AND study_uid != '' GROUP BY u
) AS su ON su.u = o.study_uid
"""


def worklist(
    warehouse: Warehouse,
    *,
    station_ae_title: str | None = None,
    modality: str | None = None,
    start_from: datetime | None = None,
    start_to: datetime | None = None,
    patient_id: str | None = None,
    accession_number: str | None = None,
    limit: int = MAX_WORKLIST,
) -> list[dict[str, Any]]:
    """Scheduled steps a modality may perform: orders not cancelled whose step is neither
    completed nor discontinued, filtered by what is given, earliest start first."""
    where = ["NOT cancelled", "step_status NOT IN ('COMPLETED', 'DISCONTINUED')"]
    params: dict[str, Any] = {"limit": min(limit, MAX_WORKLIST)}
    filters = (
        ("station", station_ae_title, "station_ae_title = {station:String}"),
        ("modality", modality, "modality = {modality:String}"),
        ("start_from", start_from, "scheduled_start >= {start_from:DateTime64(6, 'UTC')}"),
        ("start_to", start_to, "scheduled_start <= {start_to:DateTime64(6, 'UTC')}"),
        ("patient", patient_id, "patient_id = {patient:String}"),
        ("accession", accession_number, "accession_number = {accession:String}"),
    )
    for name, value, condition in filters:
        if value is not None:
            where.append(condition)
            params[name] = value
    sql = (
        f"SELECT * FROM ({_ORDER_STATE}) WHERE {' AND '.join(where)}"
        " ORDER BY scheduled_start, accession_number LIMIT {limit:UInt32}"
    )
    return warehouse.query(sql, params).dicts()


def order(warehouse: Warehouse, accession_number: str) -> dict[str, Any] | None:
    """The order with this accession number and its state (the latest placed, if several)."""
    sql = (
        f"SELECT * FROM ({_ORDER_STATE}) WHERE accession_number = {{accession:String}} ORDER BY placed_at DESC LIMIT 1"
    )
    rows = warehouse.query(sql, {"accession": accession_number}).dicts()
    return rows[0] if rows else None


def orders_by_accession(warehouse: Warehouse, accession_numbers: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The latest placed order of each accession number (cancelled or not)."""
    if not accession_numbers:
        return {}
    sql = f"SELECT * FROM ({_ORDER_STATE}) WHERE accession_number IN {{accessions:Array(String)}} ORDER BY placed_at"
    rows = warehouse.query(sql, {"accessions": list(accession_numbers)}).dicts()
    return {row["accession_number"]: row for row in rows}


def steps(warehouse: Warehouse, accession_number: str, study_uid: str) -> list[dict[str, Any]]:
    """The performed procedure steps naming the accession number or the study, each attribute
    its latest non-empty value, in the order they began."""
    sql = f"""
SELECT step_uid,
       argMax(status, offset) AS status,
       argMaxIf(study_uid, offset, study_uid IS NOT NULL) AS study_uid,
       argMaxIf(accession_number, offset, accession_number IS NOT NULL) AS accession_number,
       argMaxIf(modality, offset, modality IS NOT NULL) AS modality,
       argMaxIf(station_ae_title, offset, station_ae_title IS NOT NULL) AS station_ae_title,
       argMaxIf(started, offset, started IS NOT NULL) AS started,
       argMaxIf(ended, offset, ended IS NOT NULL) AS ended,
       max(series) AS series, max(instances) AS instances,
       argMaxIf(discontinuation_reason, offset, discontinuation_reason IS NOT NULL) AS discontinuation_reason,
       min(changed_at) AS created_at, max(changed_at) AS changed_at
FROM {STEPS} FINAL
WHERE step_uid IN (
    SELECT step_uid FROM {STEPS}
    WHERE accession_number = {{accession:String}} OR study_uid = {{study:String}}
)
GROUP BY step_uid ORDER BY created_at
SETTINGS prefer_column_name_to_alias = 1
"""
    return warehouse.query(sql, {"accession": accession_number, "study": study_uid}).dicts()


def status_of(warehouse: Warehouse, store: QueryStore, accession_number: str) -> dict[str, Any] | None:
    """The order's status (:func:`projections.orders.status.order_status`): the order, its steps,
    the studies of its accession number or study UID (the query model), their reports' stages
    (the archive index). None when no order has this accession number."""
    placed = order(warehouse, accession_number)
    if placed is None:
        return None
    studies = {s["study_uid"]: s for s in search_studies(store, accession=accession_number)}
    if placed["study_uid"] and placed["study_uid"] not in studies:
        studies |= {s["study_uid"]: s for s in search_studies(store, study_uid=placed["study_uid"])}
    performed = steps(warehouse, accession_number, placed["study_uid"])
    reports = report_milestones(warehouse, sorted(studies))
    return order_status(placed, performed, list(studies.values()), reports)
