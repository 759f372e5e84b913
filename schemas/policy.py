"""The region's access policy: every role, and what each may do -- one table, read by every check.

A user (``users.toml``), a Query/Retrieve caller (``[[qr_caller]]`` in the senders file) and an
event's :class:`~schemas.events.Actor` carry one of :data:`ROLES`; the HTTP routes, the DICOM
Q/R handlers and the report rules ask :func:`may` (or :func:`roles_that` for a route's
dependency), never a role set of their own. It lives in ``schemas/`` because the write side
(report rules, senders) and the read side (routes, Q/R) both decide by it.
"""

from __future__ import annotations

from enum import StrEnum
from types import MappingProxyType
from typing import Final


class Action(StrEnum):
    """What a role may be allowed to do."""

    #: search and read patient data: QIDO-RS, C-FIND, the search page, reports, study metadata
    READ_PATIENT_DATA = "read-patient-data"
    #: open images: WADO-RS/URI, rendered frames, the study page, C-MOVE and C-GET
    READ_IMAGES = "read-images"
    #: send objects over STOW-RS
    STORE = "store"
    #: write reports: create, edit and sign drafts (one's own)
    WRITE_REPORTS = "write-reports"
    #: amend a signed report
    AMEND_REPORTS = "amend-reports"
    #: read the text of other authors' draft reports
    READ_DRAFTS = "read-drafts"
    #: the monitoring pages and API: transfers, agents, freshness, dead letters
    MONITOR = "monitor"
    #: the audit trail: who read or changed what, and its verification
    AUDIT = "audit"
    #: a hospital's transfer agent: post its transfer events, read its organisation's full-import
    #: requests, verify what CAMI holds against its hashes
    REPORT_TRANSFERS = "report-transfers"
    #: ask a hospital's agent for a patient's or a study's full set (a full-import request)
    REQUEST_TRANSFERS = "request-transfers"
    #: rebuild read models from the event log while the archive keeps serving
    REBUILD = "rebuild"
    #: place and cancel imaging orders (HL7 ORM/OMI from the MIS)
    PLACE_ORDERS = "place-orders"
    #: register, update and merge patients (HL7 ADT from the MIS)
    UPDATE_PATIENTS = "update-patients"
    #: read the modality worklist (the scheduled steps of orders: patient names, procedures)
    READ_WORKLIST = "read-worklist"


#: role -> what it may do. An analyst works in ClickHouse on pseudonymised tables and may do
#: nothing here; a modality sends and reads its worklist; a hospital's transfer agent sends and reports its transfers;
#: the MIS (over HL7) places orders, keeps patients' records and sends results.
POLICY: Final = MappingProxyType(
    {
        "radiologist": frozenset(
            {
                Action.READ_PATIENT_DATA,
                Action.READ_IMAGES,
                Action.STORE,
                Action.WRITE_REPORTS,
                Action.AMEND_REPORTS,
                Action.READ_DRAFTS,
                Action.READ_WORKLIST,
            }
        ),
        "referring-doctor": frozenset({Action.READ_PATIENT_DATA, Action.READ_IMAGES}),
        "regional-it": frozenset({Action.MONITOR}),
        "auditor": frozenset({Action.READ_PATIENT_DATA, Action.AUDIT}),
        "analyst": frozenset[Action](),
        "administrator": frozenset(
            {
                Action.READ_PATIENT_DATA,
                Action.READ_IMAGES,
                Action.STORE,
                Action.AMEND_REPORTS,
                Action.MONITOR,
                Action.AUDIT,
                Action.REQUEST_TRANSFERS,
                Action.REBUILD,
                Action.READ_WORKLIST,
            }
        ),
        "modality": frozenset({Action.STORE, Action.READ_WORKLIST}),
        "agent": frozenset({Action.STORE, Action.REPORT_TRANSFERS}),
        # the hospital's medical information system over HL7 v2: its results become reports
        "mis": frozenset({Action.PLACE_ORDERS, Action.UPDATE_PATIENTS, Action.WRITE_REPORTS, Action.AMEND_REPORTS}),
    }
)

#: every role, in the order the README and ``cami users`` list them
ROLES: Final = tuple(POLICY)


def may(role: str, action: Action) -> bool:
    """Whether ``role`` may do ``action`` (an unknown role may do nothing)."""
    return action in POLICY.get(role, frozenset())


def roles_that(action: Action) -> frozenset[str]:
    """The roles that may do ``action``."""
    return frozenset(role for role, actions in POLICY.items() if action in actions)
