"""Reports (the radiologist's protocol and conclusion) and their lifecycle (GOST R 52636).

    draft --edit*--> draft --sign--> signed (immutable) --amend*--> signed (amended)

* Decisions are pure functions of the current state (``draft``, ``edit``, ``sign``, ``amend``):
  they check the rules and return the event to publish, or raise a :class:`ReportError`.
  The signing and amendment times are the archive's clock, passed in, never the client's.
* :func:`evolve` folds one event into the state; it is total (a log is never refused) and is
  the only way state changes, on the live path and on a rebuild alike.
* :class:`ReportStore` is the write side's memory (SQLite in ``$CAMI_HOME``): the state of each
  report as the log says it is. :class:`ReportService` updates it once an event is durable and
  reads the log first (:meth:`ReportService.refresh`), so reports recorded by other nodes or
  arriving as DICOM are known before a rule is checked. :class:`ReportStoreProjection` rebuilds
  the same store from ``cami.reports``.
* :class:`DocumentReportHook` recognises DICOM SR and encapsulated-PDF documents on the ingest
  path and turns them into ReportDrafted (and ReportSigned for verified, complete SR) events.

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
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from ingest.dicom import first_item, is_uid, text
from schemas.events import Actor, Event, new_event
from streams.log import Consumer, EventLog
from streams.processing import EmbeddedRunner, Row, Source, group_id
from streams.publisher import publish
from streams.topics import REPORTS

if TYPE_CHECKING:
    from ingest.pipeline import Arrival, Outcome

log = logging.getLogger("cami.reports")

DRAFT = "draft"
SIGNED = "signed"

#: who may create, edit and sign reports
AUTHOR_ROLES = frozenset({"radiologist"})
#: who may amend a signed report (an authorised person: the regional rule for signed reports)
AMENDING_ROLES = frozenset({"radiologist", "administrator"})
#: who may read reports (they carry patient data)
READER_ROLES = frozenset({"radiologist", "referring-doctor", "administrator", "auditor"})

MAX_TEXT = 200_000
#: the report a DICOM document becomes is named by the document (same document, same report)
DOCUMENT_NAMESPACE = uuid.UUID("6f1f7a52-55a4-4c43-9d8e-1d1e0c1a7c01")


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


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    return str(value)


# -- pure decisions ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Author:
    """Who acts: the signed-in user as an event actor, and as a doctor (regional code and name)."""

    actor: Actor
    clinician: dict[str, str | None]
    organisation: str | None = None


def _check_texts(protocol_text: str, conclusion_text: str) -> None:
    for what, value in (("protocol_text", protocol_text), ("conclusion_text", conclusion_text)):
        if len(value) > MAX_TEXT:
            raise ReportInvalid(f"{what} is longer than {MAX_TEXT} characters")
        if "\x00" in value:
            raise ReportInvalid(f"{what} contains a NUL character")


def _require_role(author: Author, roles: frozenset[str], what: str) -> None:
    if author.actor.role not in roles:
        raise ReportForbidden(f"role {author.actor.role} may not {what} (allowed: {', '.join(sorted(roles))})")


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
    source_node: str = "http",
) -> Event:
    _require_role(author, AUTHOR_ROLES, "create reports")
    if not is_uid(study_instance_uid):
        raise ReportInvalid("study_instance_uid is not a valid DICOM UID")
    _check_texts(protocol_text, conclusion_text)
    return new_event(
        "ReportDrafted",
        {
            "report_id": report_id,
            "StudyInstanceUID": study_instance_uid,
            "AccessionNumber": accession_number,
            "protocol_text": protocol_text,
            "conclusion_text": conclusion_text,
            "author": author.clinician,
            "revision": 1,
            "source": "http",
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
) -> Event:
    _require_role(author, AUTHOR_ROLES, "edit reports")
    state = _existing(state)
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
) -> Event:
    """``now`` is the archive's clock: the signing time never comes from the client."""
    _require_role(author, AUTHOR_ROLES, "sign reports")
    state = _existing(state)
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
            "source": "http",
            "document": state.document,
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
    _require_role(author, AMENDING_ROLES, "amend signed reports")
    state = _existing(state)
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


def _existing(state: ReportState | None) -> ReportState:
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


# -- the fold ----------------------------------------------------------------------------------
REPORT_EVENTS = frozenset({"ReportDrafted", "ReportEdited", "ReportSigned", "ReportAmended"})


def fact(event: Event) -> dict[str, Any]:
    """The part of an event the fold needs, as plain values (what a projection row carries)."""
    return {
        "event_id": event.envelope.event_id,
        "event_type": event.type,
        "recorded_at": _iso(event.envelope.recorded_at),
        "organisation": event.envelope.organisation,
        "actor": event.envelope.actor.to_dict(),
        "payload": {k: (_iso(v) if isinstance(v, datetime) else v) for k, v in event.payload.items()},
    }


def _drafting_user(f: Mapping[str, Any]) -> str | None:
    """The archive user behind a ReportDrafted: its actor when that is a report author (a DICOM
    document's actor is the sending modality, no user of the archive)."""
    actor = f.get("actor") or {}
    return str(actor["user"]) if actor.get("role") in AUTHOR_ROLES and actor.get("user") else None


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


# -- the write side's store --------------------------------------------------------------------
TABLE = "reports"


class ReportStore:
    """Report states as the log says they are (SQLite; rebuildable from ``cami.reports``)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")  # rebuildable from the log
        self._conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} (report_id TEXT PRIMARY KEY, study_instance_uid TEXT NOT NULL,"
            " state TEXT NOT NULL)"
        )
        self._conn.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_study ON {TABLE} (study_instance_uid)")
        self._lock = threading.Lock()

    def get(self, report_id: str) -> ReportState | None:
        with self._lock:
            row = self._conn.execute(f"SELECT state FROM {TABLE} WHERE report_id = ?", (report_id,)).fetchone()
        return ReportState.from_json(row[0]) if row else None

    def for_study(self, study_instance_uid: str) -> list[ReportState]:
        with self._lock:
            rows = self._conn.execute(
                f"SELECT state FROM {TABLE} WHERE study_instance_uid = ?", (study_instance_uid,)
            ).fetchall()
        return sorted((ReportState.from_json(r[0]) for r in rows), key=lambda s: (s.created_at, s.report_id))

    def all(self) -> list[ReportState]:
        with self._lock:
            rows = self._conn.execute(f"SELECT state FROM {TABLE} ORDER BY report_id").fetchall()
        return [ReportState.from_json(r[0]) for r in rows]

    def apply(self, facts: Sequence[Mapping[str, Any]]) -> None:
        """Fold facts in order, each report's read-modify-write in one transaction."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                for f in facts:
                    report_id = f["payload"]["report_id"]
                    row = self._conn.execute(f"SELECT state FROM {TABLE} WHERE report_id = ?", (report_id,)).fetchone()
                    before = ReportState.from_json(row[0]) if row else None
                    after = evolve(before, f)
                    if after is not None and after is not before:
                        self._conn.execute(
                            f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?)",
                            (after.report_id, after.study_instance_uid, after.to_json()),
                        )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class ReportStoreProjection:
    """Pure: a report event -> one row carrying its fact for :class:`ReportStoreSink`."""

    topics: Sequence[str] = (REPORTS,)

    def __init__(self, node: str = "local") -> None:
        self.name = f"report-store.{node}"

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        if event.type not in REPORT_EVENTS:
            return []
        return [Row(TABLE, fact(event))]


class ReportStoreSink:
    def __init__(self, store: ReportStore) -> None:
        self.store = store

    def write(self, rows: Sequence[Row]) -> None:
        self.store.apply([r.values for r in rows if r.table == TABLE])


# -- the service: rules + log + store, one report at a time ------------------------------------
class ReportService:
    """Runs a command against the state the log holds, publishes its event (durable), then
    records it. Changes to one report are serialised by a per-report lock."""

    def __init__(
        self,
        store: ReportStore,
        event_log: EventLog,
        *,
        node: str = "local",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        source_node: str = "http",
    ) -> None:
        self.store = store
        self.event_log = event_log
        self.clock = clock
        self.source_node = source_node
        self.projection = ReportStoreProjection(node)
        self._sink = ReportStoreSink(store)
        self._runner = EmbeddedRunner(event_log, [(self.projection, self._sink)])
        self._consumer: Consumer | None = None
        self._refresh_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    # -- reading the log -----------------------------------------------------------------------
    def refresh(self, timeout: float = 30.0) -> int:
        """Fold what the log holds beyond what this store has seen (other nodes, DICOM documents).
        Returns the number of records read; ends by offsets, not by an empty poll."""
        with self._refresh_lock:
            if self._consumer is None:
                self._consumer = self.event_log.consumer(group_id(self.projection), self.projection.topics)
            group = group_id(self.projection)
            targets = self.event_log.end_offsets(REPORTS)
            deadline = time.monotonic() + timeout
            total = 0
            while True:
                committed = self.event_log.committed(group, REPORTS)
                if all(committed.get(p, 0) >= end for p, end in targets.items()):
                    return total
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the report store did not catch up with the log within {timeout} s")
                total += self._runner.run_once(self.projection, self._sink, self._consumer, timeout=0.2)

    def get(self, report_id: str) -> ReportState:
        self.refresh()
        return _existing(self.store.get(report_id))

    def for_study(self, study_instance_uid: str) -> list[ReportState]:
        self.refresh()
        return self.store.for_study(study_instance_uid)

    # -- commands ------------------------------------------------------------------------------
    @contextmanager
    def _report_lock(self, report_id: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._locks.setdefault(report_id, threading.Lock())
        with lock:
            yield
        with self._locks_guard:
            if not lock.locked():
                self._locks.pop(report_id, None)

    def _commit(self, event: Event) -> ReportState:
        publish(self.event_log, event)  # durable, or it raises and nothing changed
        self.store.apply([fact(event)])
        return _existing(self.store.get(event["report_id"]))

    def create(
        self,
        study_instance_uid: str,
        protocol_text: str,
        conclusion_text: str,
        author: Author,
        *,
        accession_number: str | None = None,
    ) -> ReportState:
        report_id = str(uuid.uuid4())
        with self._report_lock(report_id):
            event = draft(
                report_id,
                study_instance_uid,
                protocol_text,
                conclusion_text,
                author,
                accession_number=accession_number,
                source_node=self.source_node,
            )
            return self._commit(event)

    def edit(
        self,
        report_id: str,
        protocol_text: str,
        conclusion_text: str,
        author: Author,
        *,
        expected_revision: int | None = None,
    ) -> ReportState:
        with self._report_lock(report_id):
            self.refresh()
            event = edit(
                self.store.get(report_id),
                protocol_text,
                conclusion_text,
                author,
                expected_revision=expected_revision,
                source_node=self.source_node,
            )
            return self._commit(event)

    def sign(self, report_id: str, author: Author, *, expected_revision: int | None = None) -> ReportState:
        with self._report_lock(report_id):
            self.refresh()
            event = sign(
                self.store.get(report_id),
                author,
                self.clock(),
                expected_revision=expected_revision,
                source_node=self.source_node,
            )
            return self._commit(event)

    def amend(
        self,
        report_id: str,
        protocol_text: str | None,
        conclusion_text: str | None,
        reason: str,
        author: Author,
    ) -> ReportState:
        with self._report_lock(report_id):
            self.refresh()
            event = amend(
                self.store.get(report_id),
                protocol_text,
                conclusion_text,
                reason,
                author,
                self.clock(),
                source_node=self.source_node,
            )
            return self._commit(event)

    def close(self) -> None:
        with self._refresh_lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None


# -- reports arriving as DICOM documents -------------------------------------------------------
SR_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.88.11": "basic-text-sr",
    "1.2.840.10008.5.1.4.1.1.88.22": "enhanced-sr",
    "1.2.840.10008.5.1.4.1.1.88.33": "comprehensive-sr",
    "1.2.840.10008.5.1.4.1.1.88.34": "comprehensive-3d-sr",
    "1.2.840.10008.5.1.4.1.1.88.35": "extensible-sr",
}
ENCAPSULATED_PDF = "1.2.840.10008.5.1.4.1.1.104.1"

#: DCM concept codes of report sections (PS3.16): findings go to the protocol, the rest to the conclusion
_CONCLUSION_CODES = {"121072", "121073", "121074", "121075", "121076", "121077"}
_PROTOCOL_CODES = {"121070", "121071", "121060", "121064", "121065"}
_CONCLUSION_WORDS = re.compile(r"impression|conclusion|recommendation|заключени|вывод|рекомендац|диагноз", re.I)
_PROTOCOL_WORDS = re.compile(r"finding|description|protocol|описани|протокол|результат|находк", re.I)
_PERSON_OBSERVER_NAME = "121008"


def _concept(item: Dataset) -> tuple[str | None, str]:
    code = first_item(item, "ConceptNameCodeSequence")
    if code is None:
        return None, ""
    return text(code, "CodeValue"), text(code, "CodeMeaning") or ""


def _section(code: str | None, meaning: str, inherited: str | None) -> str | None:
    if code in _CONCLUSION_CODES or _CONCLUSION_WORDS.search(meaning):
        return "conclusion"
    if code in _PROTOCOL_CODES or _PROTOCOL_WORDS.search(meaning):
        return "protocol"
    return inherited


def sr_texts(ds: Dataset) -> tuple[str, str, str | None]:
    """(protocol, conclusion, person observer name) from an SR content tree.

    TEXT items whose concept name (or an enclosing container's) means impression / conclusion /
    recommendation (DCM codes or English/Russian words) form the conclusion; the others the protocol."""
    protocol: list[str] = []
    conclusion: list[str] = []
    observer: list[str] = []

    def walk(items: Any, inherited: str | None, depth: int) -> None:
        if depth > 32 or items is None:
            return
        for item in items:
            value_type = text(item, "ValueType")
            code, meaning = _concept(item)
            section = _section(code, meaning, inherited)
            if value_type == "TEXT":
                value = text(item, "TextValue")
                if value:
                    (conclusion if section == "conclusion" else protocol).append(value)
            elif value_type == "PNAME" and code == _PERSON_OBSERVER_NAME:
                name = text(item, "PersonName")
                if name:
                    observer.append(name)
            walk(item.get("ContentSequence"), section, depth + 1)

    root_code, root_meaning = _concept(ds)
    walk(ds.get("ContentSequence"), _section(root_code, root_meaning, None), 0)
    return "\n".join(protocol), "\n".join(conclusion), observer[0] if observer else None


def _verifier(ds: Dataset) -> dict[str, str | None] | None:
    item = first_item(ds, "VerifyingObserverSequence")
    if item is None:
        return None
    code_item = first_item(item, "VerifyingObserverIdentificationCodeSequence")
    return {
        "code": text(code_item, "CodeValue") if code_item is not None else None,
        "name": text(item, "VerifyingObserverName"),
    }


class DocumentReportHook:
    """Ingest hook: a stored DICOM SR or encapsulated PDF becomes a report.

    Returns ReportDrafted, plus ReportSigned when the document says VerificationFlag VERIFIED and
    CompletionFlag COMPLETE (signer: the verifying observer; signed_at: the archive's clock; the
    document's own VerificationDateTime is kept as declared). The report id is derived from the
    SOPInstanceUID (and version), so a document is one report however often it is re-sent.
    Encapsulated PDF texts are not extracted: the event says so (``text_extracted`` false) and
    points at the document's blob."""

    def __init__(self, store_name: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store_name = store_name
        self.clock = clock

    def __call__(self, ds: Dataset, outcome: Outcome, arrival: Arrival) -> list[Event]:
        sop_class = outcome.sop_class_uid or text(ds, "SOPClassUID")
        if sop_class in SR_CLASSES:
            source = "dicom-sr"
            protocol, conclusion, observer = sr_texts(ds)
            extracted = True
        elif sop_class == ENCAPSULATED_PDF:
            source = "encapsulated-pdf"
            protocol, conclusion, observer = "", "", None
            extracted = False
        else:
            return []
        sop_uid = outcome.sop_instance_uid
        study = outcome.study_instance_uid
        if not sop_uid or not study or outcome.blob is None:
            return []
        version = outcome.version or 1
        report_id = str(uuid.uuid5(DOCUMENT_NAMESPACE, sop_uid if version == 1 else f"{sop_uid}/{version}"))
        document = {"sha256": outcome.blob.sha256, "size": outcome.blob.size, "store": self.store_name}
        verifier = _verifier(ds)
        author = {"code": None, "name": observer} if observer else (verifier or {"code": None, "name": None})
        identity = {
            "report_id": report_id,
            "StudyInstanceUID": study,
            "AccessionNumber": text(ds, "AccessionNumber"),
            "PatientID": text(ds, "PatientID"),
        }
        common: dict[str, Any] = {
            "aggregate_id": study,
            "source_node": arrival.source_node,
            "organisation": arrival.organisation,
            "actor": arrival.actor,
            "correlation_id": arrival.correlation_id,
        }
        events = [
            new_event(
                "ReportDrafted",
                {
                    **identity,
                    "protocol_text": protocol,
                    "conclusion_text": conclusion,
                    "author": author,
                    "revision": 1,
                    "source": source,
                    "document": document,
                    "SOPInstanceUID": sop_uid,
                    "text_extracted": extracted,
                },
                **common,
            )
        ]
        verified = text(ds, "VerificationFlag") == "VERIFIED" and text(ds, "CompletionFlag") == "COMPLETE"
        if verified:
            now = self.clock()
            events.append(
                new_event(
                    "ReportSigned",
                    {
                        **identity,
                        "protocol_text": protocol,
                        "conclusion_text": conclusion,
                        "signer": verifier or author,
                        "revision": 1,
                        "signed_at": now,
                        "content_sha256": content_sha256(protocol, conclusion),
                        "SOPInstanceUID": sop_uid,
                        "source": source,
                        "document": document,
                        "declared_verification_datetime": _verification_datetime(ds),
                    },
                    occurred_at=now,
                    **common,
                )
            )
        return events


def _verification_datetime(ds: Dataset) -> str | None:
    item = first_item(ds, "VerifyingObserverSequence")
    return text(item, "VerificationDateTime") if item is not None else None
