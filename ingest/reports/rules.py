"""The report lifecycle rules (GOST R 52636): who may do what to a report in which state, and
what each recorded event does to it. Pure functions; no I/O.

    draft --edit*--> draft --sign--> signed (immutable) --amend*--> signed (amended)

* Decisions (``draft``, ``edit``, ``sign``, ``amend``) are pure functions of the current state:
  they check the rules and return the event to publish, or raise a :class:`ReportError`.
  The signing and amendment times are the archive's clock, passed in, never the client's.
* :func:`evolve` folds one event into the state; it is total (a log is never refused) and is
  the only way state changes, on the live path and on a rebuild alike.

**A draft is its author's.** Only the radiologist who drafted a report edits and signs it (403
otherwise): the signature attests the signer's own reading, so a colleague who disagrees writes
and signs a report of their own. An administrator signs nothing. A draft that arrived as a DICOM
document has no author among the archive's users: any radiologist may edit and sign it.
Who may read a draft's texts is the readers' policy (:mod:`api.access`); :meth:`ReportState.view`
leaves them out on request.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any

from schemas.events import Actor, Event, new_event
from schemas.policy import Action, may, roles_that
from schemas.uids import is_uid

log = logging.getLogger("cami.reports")

DRAFT = "draft"
SIGNED = "signed"


MAX_TEXT = 200_000


# -- errors (routes map them to HTTP statuses) ---------------------------------------------------
class ReportError(Exception):
    status = 400
    code = "report-error"


class ReportNotFound(ReportError):
    status = 404
    code = "report-not-found"


class ReportConflict(ReportError):
    """The report's state does not allow the step (edit after signing, signing twice...)."""

    status = 409
    code = "report-conflict"


class ReportForbidden(ReportError):
    status = 403
    code = "forbidden"


class ReportInvalid(ReportError):
    status = 422
    code = "report-invalid"


# -- state -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ReportState:
    report_id: str
    study_instance_uid: str
    status: str
    protocol_text: str
    conclusion_text: str
    revision: int
    author: dict[str, str | None]
    source: str
    created_at: str
    updated_at: str
    organisation: str | None = None
    accession_number: str | None = None
    patient_id: str | None = None
    sop_instance_uid: str | None = None
    document: dict[str, Any] | None = None
    text_extracted: bool = True
    signer: dict[str, str | None] | None = None
    signed_at: str | None = None
    content_sha256: str | None = None
    declared_verification_datetime: str | None = None
    amendments: tuple[dict[str, Any], ...] = ()
    #: the archive user who drafted it (None: it arrived as a DICOM document)
    author_user: str | None = None
    #: what reading it is (None: a primary report; double-reading, second-opinion, arbitration)
    reading: str | None = None
    #: the second-opinion request or arbitration task it answers
    request_id: str | None = None
    #: the reading's overall finding (a short code compared between double readings)
    assessment: str | None = None
    #: ids of the events folded in (guards against applying one twice)
    events: tuple[str, ...] = field(default=(), repr=False)

    @property
    def signed(self) -> bool:
        return self.status == SIGNED

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> ReportState:
        data = json.loads(raw)
        data["amendments"] = tuple(data.get("amendments", ()))
        data["events"] = tuple(data.get("events", ()))
        return cls(**data)

    def drafted_by(self, user: str) -> bool:
        """Whether ``user`` (an archive user name) wrote this report's draft."""
        return self.author_user is not None and self.author_user == user

    def view(self, *, draft_text: bool = True) -> dict[str, Any]:
        """What the API shows (everything but the bookkeeping). ``draft_text=False``: a draft's
        texts are left out (the reader sees that a draft exists, not what it says)."""
        data = asdict(self)
        data.pop("events")
        data.pop("author_user")
        data["amendments"] = list(self.amendments)
        if not self.text_extracted:
            data["note"] = "the texts were not extracted from the document; open the document itself"
        if self.status == DRAFT and not draft_text:
            data["protocol_text"] = data["conclusion_text"] = None
            data["text_hidden"] = True
        return data


def content_sha256(protocol_text: str, conclusion_text: str) -> str:
    return hashlib.sha256((protocol_text + "\x00" + conclusion_text).encode("utf-8")).hexdigest()


# -- pure decisions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Author:
    """Who acts: the signed-in user as an event actor, and as a doctor (regional code and name)."""

    actor: Actor
    clinician: dict[str, str | None]
    organisation: str | None = None


MAX_ASSESSMENT = 16


def _assessment(value: str | None) -> str | None:
    """A reading's assessment as recorded: a short code, trimmed (None: none given)."""
    if value is None or not value.strip():
        return None
    code = value.strip()
    if len(code) > MAX_ASSESSMENT or any(ord(c) < 0x20 or ord(c) == 0x7F for c in code):
        raise ReportInvalid(f"assessment must be 1-{MAX_ASSESSMENT} characters, none a control character")
    return code


def _check_texts(protocol_text: str, conclusion_text: str) -> None:
    for what, value in (("protocol_text", protocol_text), ("conclusion_text", conclusion_text)):
        if len(value) > MAX_TEXT:
            raise ReportInvalid(f"{what} is longer than {MAX_TEXT} characters")
        if "\x00" in value:
            raise ReportInvalid(f"{what} contains a NUL character")


def _require_role(author: Author, action: Action, what: str) -> None:
    if not may(author.actor.role, action):
        allowed = ", ".join(sorted(roles_that(action)))
        raise ReportForbidden(f"role {author.actor.role} may not {what} (allowed: {allowed})")


def _require_draft_author(state: ReportState, author: Author, what: str) -> None:
    """A draft written in the archive is its author's to change and sign (see the module doc)."""
    if state.author_user is not None and not state.drafted_by(author.actor.user):
        raise ReportForbidden(f"only the author of this draft may {what} it")


def draft(
    report_id: str,
    study_instance_uid: str,
    protocol_text: str,
    conclusion_text: str,
    author: Author,
    *,
    accession_number: str | None = None,
    patient_id: str | None = None,
    source_node: str = "http",
    source: str = "http",
    reading: str | None = None,
    request_id: str | None = None,
    assessment: str | None = None,
) -> Event:
    _require_role(author, Action.WRITE_REPORTS, "create reports")
    if not is_uid(study_instance_uid):
        raise ReportInvalid("study_instance_uid is not a valid DICOM UID")
    _check_texts(protocol_text, conclusion_text)
    return new_event(
        "ReportDrafted",
        {
            "report_id": report_id,
            "StudyInstanceUID": study_instance_uid,
            "AccessionNumber": accession_number,
            "PatientID": patient_id,
            "protocol_text": protocol_text,
            "conclusion_text": conclusion_text,
            "author": author.clinician,
            "revision": 1,
            "source": source,
            "reading": reading,
            "request_id": request_id,
            "assessment": _assessment(assessment),
        },
        aggregate_id=study_instance_uid,
        source_node=source_node,
        organisation=author.organisation,
        actor=author.actor,
    )


def edit(
    state: ReportState | None,
    protocol_text: str,
    conclusion_text: str,
    author: Author,
    *,
    expected_revision: int | None = None,
    source_node: str = "http",
    assessment: str | None = None,
) -> Event:
    _require_role(author, Action.WRITE_REPORTS, "edit reports")
    state = existing(state)
    if state.signed:
        raise ReportConflict("the report is signed and immutable; a correction is an amendment")
    _require_draft_author(state, author, "edit")
    if expected_revision is not None and expected_revision != state.revision:
        raise ReportConflict(f"the report is at revision {state.revision}, not {expected_revision}")
    _check_texts(protocol_text, conclusion_text)
    return new_event(
        "ReportEdited",
        {
            **_identity(state),
            "protocol_text": protocol_text,
            "conclusion_text": conclusion_text,
            "editor": author.clinician,
            "revision": state.revision + 1,
            "assessment": _assessment(assessment) if assessment is not None else state.assessment,
        },
        aggregate_id=state.study_instance_uid,
        source_node=source_node,
        organisation=author.organisation or state.organisation,
        actor=author.actor,
    )


def sign(
    state: ReportState | None,
    author: Author,
    now: datetime,
    *,
    expected_revision: int | None = None,
    source_node: str = "http",
    source: str | None = None,
) -> Event:
    """``now`` is the archive's clock: the signing time never comes from the client. ``source``
    says how the signature came (http unless given: hl7 for an MIS's final result)."""
    _require_role(author, Action.WRITE_REPORTS, "sign reports")
    state = existing(state)
    if state.signed:
        raise ReportConflict("the report is already signed")
    _require_draft_author(state, author, "sign")
    if expected_revision is not None and expected_revision != state.revision:
        raise ReportConflict(f"the report is at revision {state.revision}, not {expected_revision}")
    if not state.conclusion_text.strip() and state.text_extracted:
        raise ReportInvalid("a report without a conclusion cannot be signed")
    return new_event(
        "ReportSigned",
        {
            **_identity(state),
            "protocol_text": state.protocol_text,
            "conclusion_text": state.conclusion_text,
            "signer": author.clinician,
            "revision": state.revision,
            "signed_at": now,
            "content_sha256": content_sha256(state.protocol_text, state.conclusion_text),
            "SOPInstanceUID": state.sop_instance_uid,
            "source": source or "http",
            "document": state.document,
            "reading": state.reading,
            "assessment": state.assessment,
        },
        aggregate_id=state.study_instance_uid,
        source_node=source_node,
        organisation=author.organisation or state.organisation,
        actor=author.actor,
        occurred_at=now,
    )


def amend(
    state: ReportState | None,
    protocol_text: str | None,
    conclusion_text: str | None,
    reason: str,
    author: Author,
    now: datetime,
    *,
    source_node: str = "http",
) -> Event:
    _require_role(author, Action.AMEND_REPORTS, "amend signed reports")
    state = existing(state)
    if not state.signed:
        raise ReportConflict("only a signed report is amended; edit the draft instead")
    if not reason.strip():
        raise ReportInvalid("an amendment needs a reason")
    after_protocol = state.protocol_text if protocol_text is None else protocol_text
    after_conclusion = state.conclusion_text if conclusion_text is None else conclusion_text
    _check_texts(after_protocol, after_conclusion)
    _check_texts(reason, "")
    if (after_protocol, after_conclusion) == (state.protocol_text, state.conclusion_text):
        raise ReportInvalid("the amendment changes nothing")
    return new_event(
        "ReportAmended",
        {
            **_identity(state),
            "amendment_number": len(state.amendments) + 1,
            "reason": reason.strip(),
            "amended_by": author.clinician,
            "amended_at": now,
            "protocol_before": state.protocol_text,
            "conclusion_before": state.conclusion_text,
            "protocol_after": after_protocol,
            "conclusion_after": after_conclusion,
        },
        aggregate_id=state.study_instance_uid,
        source_node=source_node,
        organisation=author.organisation or state.organisation,
        actor=author.actor,
        occurred_at=now,
    )


def existing(state: ReportState | None) -> ReportState:
    """The report's state, or :class:`ReportNotFound` when there is none."""
    if state is None:
        raise ReportNotFound("no such report")
    return state


def _identity(state: ReportState) -> dict[str, Any]:
    return {
        "report_id": state.report_id,
        "StudyInstanceUID": state.study_instance_uid,
        "AccessionNumber": state.accession_number,
        "PatientID": state.patient_id,
    }


# -- what each recorded event does to the state ---------------------------------------------
def _drafting_user(f: Mapping[str, Any]) -> str | None:
    """The archive user behind a ReportDrafted: its actor when that is a report author (a DICOM
    document's actor is the sending modality, no user of the archive)."""
    actor = f.get("actor") or {}
    return str(actor["user"]) if may(str(actor.get("role")), Action.WRITE_REPORTS) and actor.get("user") else None


def evolve(state: ReportState | None, f: Mapping[str, Any]) -> ReportState | None:
    """Fold one report event into the state. Total: a fact the rules would not have produced
    (which only a foreign writer could log) is logged and ignored, never raised."""
    kind, p, at = f["event_type"], f["payload"], f["recorded_at"]
    if state is not None and f["event_id"] in state.events:
        return state  # redelivered
    seen = (*(state.events if state else ()), f["event_id"])
    if kind == "ReportDrafted":
        if state is not None:
            log.warning("ignoring a second ReportDrafted for report %s", p["report_id"])
            return state
        return ReportState(
            report_id=p["report_id"],
            study_instance_uid=p["StudyInstanceUID"],
            status=DRAFT,
            protocol_text=p["protocol_text"],
            conclusion_text=p["conclusion_text"],
            revision=p.get("revision") or 1,
            author=dict(p["author"]),
            source=p.get("source") or "http",
            created_at=at,
            updated_at=at,
            organisation=f.get("organisation"),
            accession_number=p.get("AccessionNumber"),
            patient_id=p.get("PatientID"),
            sop_instance_uid=p.get("SOPInstanceUID"),
            document=dict(p["document"]) if p.get("document") else None,
            text_extracted=p.get("text_extracted", True),
            author_user=_drafting_user(f),
            reading=p.get("reading"),
            request_id=p.get("request_id"),
            assessment=p.get("assessment"),
            events=seen,
        )
    if state is None:
        log.warning("ignoring %s for unknown report %s", kind, p.get("report_id"))
        return None
    if kind == "ReportEdited":
        if state.signed:
            log.warning("ignoring ReportEdited on signed report %s", state.report_id)
            return state
        return replace(
            state,
            protocol_text=p["protocol_text"],
            conclusion_text=p["conclusion_text"],
            revision=p["revision"],
            assessment=p.get("assessment", state.assessment),
            updated_at=at,
            events=seen,
        )
    if kind == "ReportSigned":
        if state.signed:
            log.warning("ignoring a second ReportSigned for report %s", state.report_id)
            return state
        return replace(
            state,
            status=SIGNED,
            protocol_text=p["protocol_text"],
            conclusion_text=p["conclusion_text"],
            revision=p["revision"],
            signer=dict(p["signer"]),
            signed_at=p["signed_at"],
            content_sha256=p["content_sha256"],
            document=dict(p["document"]) if p.get("document") else state.document,
            declared_verification_datetime=p.get("declared_verification_datetime"),
            assessment=p.get("assessment", state.assessment),
            updated_at=at,
            events=seen,
        )
    if kind == "ReportAmended":
        if not state.signed:
            log.warning("ignoring ReportAmended on unsigned report %s", state.report_id)
            return state
        amendment = {
            "amendment_number": p["amendment_number"],
            "reason": p["reason"],
            "amended_by": dict(p["amended_by"]),
            "amended_at": p["amended_at"],
            "before": {"protocol_text": p["protocol_before"], "conclusion_text": p["conclusion_before"]},
            "after": {"protocol_text": p["protocol_after"], "conclusion_text": p["conclusion_after"]},
        }
        return replace(
            state,
            protocol_text=p["protocol_after"],
            conclusion_text=p["conclusion_after"],
            amendments=(*state.amendments, amendment),
            updated_at=at,
            events=seen,
        )
    return state
