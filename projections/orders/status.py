"""An order's status as the referring doctor follows it (pure: the facts in, the status out).

The stages, in order, each with when it was reached (None: not yet):

============  =====================================================================================
referral      the MIS placed the order (OrderPlaced)
scheduled     it is on the modality's worklist (at placement: CAMI is the order filler); the
              scheduled start and station are in ``detail``
in-progress   the modality began the step (MPPS IN PROGRESS)
images        the study's first image reached the archive (``detail``: how many are held)
draft         a report draft exists
signed        a report is signed
available     signed, with images, in the central archive: any doctor of the region may open it
============  =====================================================================================

``status`` is the last stage reached, or ``cancelled`` (the MIS cancelled it) or
``discontinued`` (the modality stopped the step, MPPS DISCONTINUED), which end it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

STAGES = ("referral", "scheduled", "in-progress", "images", "draft", "signed", "available")


def _earliest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def order_status(
    order: Mapping[str, Any],
    steps: Sequence[Mapping[str, Any]],
    studies: Sequence[Mapping[str, Any]],
    reports: Mapping[str, datetime],
) -> dict[str, Any]:
    """``order``: a row of :func:`projections.orders.queries.order`; ``steps``: its performed
    steps; ``studies``: the query model's studies of its accession number or study UID;
    ``reports``: when their reports first reached each stage (draft, signed, amended)."""
    started = _earliest(*(s.get("started") or s.get("created_at") for s in steps))
    images = sum(int(s["instance_count"]) for s in studies)
    first_image = _earliest(*(s.get("first_received") for s in studies))
    drafted = _earliest(reports.get("draft"), reports.get("signed"))
    signed = _earliest(reports.get("signed"), reports.get("amendment"))
    available = max(signed, first_image) if signed is not None and first_image is not None else None
    reached: dict[str, datetime | None] = {
        "referral": order["placed_at"],
        "scheduled": order["placed_at"],
        "in-progress": started or (first_image if images else None),
        "images": first_image if images else None,
        "draft": drafted,
        "signed": signed,
        "available": available,
    }
    details: dict[str, dict[str, Any]] = {
        "scheduled": {
            "start": order.get("scheduled_start"),
            "station_ae_title": order.get("station_ae_title"),
            "modality": order.get("modality"),
        },
        "in-progress": {"steps": [dict(s) for s in steps]},
        "images": {"instances": images, "studies": [s["study_uid"] for s in studies]},
    }
    stages = [{"stage": name, "at": reached[name], **({"detail": details[name]} if name in details else {})}
              for name in STAGES]  # fmt: skip
    status = next((name for name in reversed(STAGES) if reached[name] is not None), "referral")
    if any(s.get("status") == "DISCONTINUED" for s in steps) and not images:
        status = "discontinued"
    if order.get("cancelled"):
        status = "cancelled"
    return {
        "accession_number": order["accession_number"],
        "placer_order_number": order["placer_order_number"],
        "placer_application": order["placer_application"],
        "status": status,
        "cancelled_at": order.get("cancelled_at") if order.get("cancelled") else None,
        "cancel_reason": order.get("cancel_reason") if order.get("cancelled") else None,
        "patient": {
            "id": order["patient_id"],
            "name": order.get("patient_name"),
            "birth_date": order.get("birth_date"),
            "sex": order.get("sex"),
        },
        "procedure": {
            "code": order.get("procedure_code"),
            "scheme": order.get("procedure_scheme"),
            "meaning": order.get("procedure_meaning"),
            "modality": order.get("modality"),
        },
        "referring": {
            "name": order.get("referring_name"),
            "code": order.get("referring_code"),
            "organisation": order.get("referring_organisation"),
        },
        "priority": order.get("priority"),
        "study_uid": order.get("study_uid"),
        "stages": stages,
    }
