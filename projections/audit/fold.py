"""Audit trail: one row per event (every topic) with who, what, when, from where, on which record,
and a per-record hash chain that makes any change to history detectable.

The chain
---------
A *record* is the event's aggregate id (the log key: StudyInstanceUID, organisation, PatientID...).
The same aggregate id appears in several topics (a study has ``cami.dicom``, ``cami.reports`` and
``cami.access`` events) and only events of one topic with one key are totally ordered (same
partition, increasing offsets); across topics there is no order every runner agrees on (the live
runner and a rebuild interleave topics differently). So each record has one chain **per topic**:
the chain id is ``(aggregate_id, topic)``, and its entries are in offset order. That is what makes
the live result and a rebuild identical link for link. ``history RECORD`` shows all of them.

For each entry::

    event_sha256 = SHA-256(the event's bytes exactly as stored in the log)
    entry_hash   = SHA-256(prev_hash (32 bytes) || event_sha256 (32 bytes) || "topic/partition/offset")
    prev_hash    = entry_hash of the chain's previous entry, or GENESIS for its first entry

(hashes are stored as lower-case hex; the concatenation is over the raw digests).

State and redelivery
--------------------
The chain needs the previous entry's hash, so the projection has state. The logic stays pure:
:func:`next_link` reads the state and decides the link, :func:`entry_row` builds the row, and
:func:`apply` is the explicit fold ``(state, event, source) -> (state, rows)``. :class:`AuditTrail`
is the Processor that keeps the state in memory (same functions, updated in place), and can be
loads the heads it lacks from the audit table (:meth:`AuditTrail.prepare`: after a restart, or
when another worker processed part of a partition in between).

A redelivered event (its position is already chained) yields the *identical* row again, never a
new link: the state remembers the links by position. A position at or before the chain's head that
the state no longer holds (older than the retained window, or written before a restart) yields no
row: its row is already in the table (state is only ever loaded from rows in the table).

Checking (:mod:`projections.audit.verify`)
------------------------------------------
:func:`~projections.audit.verify.verify_chain` recomputes every chain from the stored rows;
:func:`~projections.audit.verify.verify_against_log` additionally re-reads the log, re-hashes each
event and re-derives each row with the same fold, so a changed stored row (any column), a changed
event in the log, a missing or an invented row is reported. Both return the FIRST broken entry in
``(aggregate_id, topic, partition, offset)`` order.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.warehouse import Warehouse
from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import SOURCE_OF_TRUTH

log = logging.getLogger("cami.audit")

TABLE = "audit_trail"

#: prev_hash of a chain's first entry (fixed, so anyone can recompute a chain from its rows)
GENESIS = "0" * 64

#: ReplacingMergeTree keyed by the event's log position: a redelivered event (same position, same
#: values) replaces itself, so at-least-once delivery leaves one row per event; no version column
#: is needed because the fold always produces the same row for a position.
#:
#: ORDER BY starts with the record (aggregate_id), then topic and position: the auditors' query
#: is "the history of one record" (``WHERE aggregate_id = ?``), which reads one contiguous range
#: of the primary index, already in chain order (a chain is one topic's events of the record, in
#: offset order, so ``ORDER BY topic, partition, offset`` is the chain order the check walks).
#: Partition is in the key although a record's events of one topic share a partition: the key
#: must be the full log position for deduplication to be exactly "one row per event".
DDL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    aggregate_id String,
    topic LowCardinality(String),
    partition UInt16,
    offset UInt64,
    event_id UUID,
    event_type LowCardinality(String),
    schema_version UInt16,
    summary String,
    actor_user String,
    actor_role LowCardinality(String),
    occurred_at DateTime64(6, 'UTC'),
    recorded_at DateTime64(6, 'UTC'),
    source_node String,
    organisation Nullable(String),
    peer_address Nullable(String),
    study_instance_uid Nullable(String),
    patient_id Nullable(String),
    event_sha256 FixedString(64),
    prev_hash FixedString(64),
    entry_hash FixedString(64)
) ENGINE = ReplacingMergeTree
ORDER BY (aggregate_id, topic, partition, offset)
"""

#: the columns of a row, in table order
COLUMNS: tuple[str, ...] = (
    "aggregate_id",
    "topic",
    "partition",
    "offset",
    "event_id",
    "event_type",
    "schema_version",
    "summary",
    "actor_user",
    "actor_role",
    "occurred_at",
    "recorded_at",
    "source_node",
    "organisation",
    "peer_address",
    "study_instance_uid",
    "patient_id",
    "event_sha256",
    "prev_hash",
    "entry_hash",
)

#: links kept in memory by position for redelivery (far more than any uncommitted window)
DEFAULT_RETAINED_LINKS = 200_000

ChainId = tuple[str, str]  # (aggregate_id, topic)
Position = tuple[str, int, int]  # (topic, partition, offset)


# -- the chain -----------------------------------------------------------------------------------
def event_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def chain_hash(prev_hash: str, event_sha256: str, topic: str, partition: int, offset: int) -> str:
    """entry_hash = SHA-256(prev || event hash || "topic/partition/offset")."""
    digest = hashlib.sha256(bytes.fromhex(prev_hash))
    digest.update(bytes.fromhex(event_sha256))
    digest.update(f"{topic}/{partition}/{offset}".encode())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Link:
    """One entry of a chain."""

    aggregate_id: str
    topic: str
    partition: int
    offset: int
    event_sha256: str
    prev_hash: str
    entry_hash: str

    @property
    def chain(self) -> ChainId:
        return (self.aggregate_id, self.topic)

    @property
    def position(self) -> Position:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True)
class AuditState:
    """The fold's state: each chain's last link, and links by position (for redelivery)."""

    heads: Mapping[ChainId, Link] = field(default_factory=dict)
    links: Mapping[Position, Link] = field(default_factory=dict)

    def added(self, link: Link) -> AuditState:
        """A new state with ``link`` as its chain's head (the state itself is not changed)."""
        return AuditState({**self.heads, link.chain: link}, {**self.links, link.position: link})


def next_link(state: AuditState, event: Event, source: Source) -> tuple[Link | None, bool]:
    """Pure: the link for this event and whether it is new.

    ``(link, True)``: a new entry at the head of its chain. ``(link, False)``: the position was
    already chained (redelivery): the same link again. ``(None, False)``: the position is at or
    before the chain's head but no longer held in the state; its row is already stored."""
    position = (source.topic, source.partition, source.offset)
    known = state.links.get(position)
    if known is not None:
        return known, False
    chain = (event.envelope.aggregate_id, source.topic)
    head = state.heads.get(chain)
    if head is not None and source.offset <= head.offset:
        return None, False
    prev = head.entry_hash if head is not None else GENESIS
    sha = event_hash(source.raw)
    return Link(
        chain[0],
        source.topic,
        source.partition,
        source.offset,
        sha,
        prev,
        chain_hash(prev, sha, source.topic, source.partition, source.offset),
    ), True


def apply(state: AuditState, event: Event, source: Source) -> tuple[AuditState, list[Row]]:
    """The explicit fold: ``(state, event, source) -> (state, rows)``; no I/O, ``state`` unchanged."""
    link, new = next_link(state, event, source)
    if link is None:
        return state, []
    return (state.added(link) if new else state), [entry_row(event, source, link)]


# -- what a row says -------------------------------------------------------------------------------
def _clinician(value: Any) -> str:
    if isinstance(value, Mapping):
        return str(value.get("code") or value.get("name") or "?")
    return "?"


def summarise(event: Event) -> str:
    """A short human sentence about the event; never a patient's name or birth date (patient IDs
    and UIDs may appear: auditors need them). Free-text fields (report texts, reasons typed by
    people, error comments) are left out because they may contain anything."""
    p = event.payload
    t = event.type
    g = p.get
    if t == "InstanceReceived":
        return (
            f"stored instance {g('SOPInstanceUID')} ({g('Modality') or '?'}) of series {g('SeriesInstanceUID')}, "
            f"version {g('version')}, via {g('channel')}"
            + (f", missing {', '.join(map(str, p['missing']))}" if g("missing") else "")
        )
    if t == "InstanceRejected":
        return f"rejected object ({g('reason')}, status 0x{int(g('status') or 0):04X}) via {g('channel')}"
    if t == "AssociationRejected":
        return f"refused association from {g('calling_ae_title')} to {g('called_ae_title') or '?'}: {g('reason')}"
    if t == "ReportDrafted":
        return f"report {g('report_id')} drafted (revision {g('revision')}) by {_clinician(g('author'))}"
    if t == "ReportEdited":
        return f"report {g('report_id')} edited (revision {g('revision')}) by {_clinician(g('editor'))}"
    if t == "ReportSigned":
        return f"report {g('report_id')} signed (revision {g('revision')}) by {_clinician(g('signer'))}"
    if t == "ReportAmended":
        return f"report {g('report_id')} amended (amendment {g('amendment_number')}) by {_clinician(g('amended_by'))}"
    if t == "OrderPlaced":
        return f"order {g('placer_order_number')} placed ({g('ProcedureCodeValue') or '?'}, {g('Modality') or '?'})"
    if t == "OrderCancelled":
        return f"order {g('placer_order_number')} cancelled"
    if t == "ProcedureStepChanged":
        return f"procedure step {g('AffectedSOPInstanceUID')} {g('PerformedProcedureStepStatus')}"
    if t == "TransferQueued":
        return (
            f"transfer {g('transfer_id')} queued: {g('instances')} instances ({g('bytes')} bytes) to {g('destination')}"
        )
    if t == "TransferStarted":
        return f"transfer {g('transfer_id')} started (attempt {g('attempt')})"
    if t == "TransferCompleted":
        return f"transfer {g('transfer_id')} completed: {g('instances_sent')} instances in {g('duration_ms')} ms"
    if t == "TransferFailed":
        return f"transfer {g('transfer_id')} failed (attempt {g('attempt')}, retry: {g('will_retry')})"
    if t == "TransferRequested":
        what = f"study {g('StudyInstanceUID')}" if g("StudyInstanceUID") else f"patient {g('PatientID')}"
        return f"full import of {what} requested from {g('organisation')}" + (" (urgent)" if g("urgent") else "")
    if t == "AgentHeartbeat":
        return f"agent {g('agent_id')} alive: queue {g('queue_depth')}, in flight {g('in_flight')}"
    if t == "PatientUpdated":
        return f"patient {g('PatientID')} demographics updated ({g('source')})"
    if t == "PatientsMerged":
        return f"patient {g('PriorPatientID')} merged into {g('PatientID')} ({g('source')})"
    if t == "SecondOpinionRequested":
        whom = g("to_organisation") or f"a radiologist of {g('to_specialty')}"
        return f"second opinion {g('request_id')} asked of {whom} by {_clinician(g('requested_by'))}"
    if t == "SecondOpinionAccepted":
        return f"second opinion {g('request_id')} accepted by {_clinician(g('accepted_by'))}"
    if t == "ArbitrationRequested":
        return f"readings disagree ({' / '.join(g('assessments') or [])}): arbitration task {g('task_id')}"
    if t == "MessageRejected":
        return f"HL7 {g('message_type') or 'message'} refused ({g('ack_code')} {g('reason')}): {g('error_text')}"
    if t == "RecordAccessed":
        return f"{g('action')} via {g('channel')}: {g('outcome')}, {g('results')} result(s)"
    return t


def entry_row(event: Event, source: Source, link: Link) -> Row:
    env = event.envelope
    p = event.payload
    peer = p.get("peer_address") or p.get("remote_address")
    return Row(
        TABLE,
        {
            "aggregate_id": env.aggregate_id,
            "topic": source.topic,
            "partition": source.partition,
            "offset": source.offset,
            "event_id": env.event_id,
            "event_type": env.event_type,
            "schema_version": env.schema_version,
            "summary": summarise(event),
            "actor_user": env.actor.user,
            "actor_role": env.actor.role,
            "occurred_at": env.occurred_at,
            "recorded_at": env.recorded_at,
            "source_node": env.source_node,
            "organisation": env.organisation,
            "peer_address": str(peer) if peer else None,
            "study_instance_uid": p.get("StudyInstanceUID"),
            "patient_id": p.get("PatientID"),
            "event_sha256": link.event_sha256,
            "prev_hash": link.prev_hash,
            "entry_hash": link.entry_hash,
        },
    )


# -- the processor ---------------------------------------------------------------------------------
#: chain heads of the given records of one topic, as stored (the entry with the highest offset)
_HEADS = (
    "SELECT aggregate_id, topic, argMax(partition, offset), max(offset), argMax(event_sha256, offset),"
    f" argMax(prev_hash, offset), argMax(entry_hash, offset) FROM {TABLE} FINAL"
    " WHERE topic = {topic:String} AND aggregate_id IN {records:Array(String)} GROUP BY aggregate_id, topic"
)


class AuditTrail:
    """The Processor: the fold with its state kept in memory, and loaded from the audit table.

    Same decisions as :func:`apply` (it calls :func:`next_link` and :func:`entry_row`); only the
    state update is done in place, so a million events cost a million dict updates, not copies.

    With a warehouse attached (:meth:`attach`, done by the runners' bindings), :meth:`prepare`
    loads from the table the heads of the chains a batch touches that are not in memory: after a
    restart, and when another worker has processed part of a partition since this one last did.
    The second case is seen as a *gap*: offsets of a partition are contiguous, so a batch that does
    not start where this processor stopped means someone else wrote entries in between; every head
    this processor holds for that partition may be stale and is dropped, then loaded again. Without
    a warehouse (a rebuild into emptied tables, tests of the fold) memory is the whole state.
    """

    name = "audit"
    topics: Sequence[str] = SOURCE_OF_TRUTH
    ddl = (DDL,)
    tables = (TABLE,)

    def __init__(self, retained_links: int = DEFAULT_RETAINED_LINKS) -> None:
        self._heads: dict[ChainId, Link] = {}
        # ordered by insertion, oldest dropped first: an OrderedDict, as a plain dict's first key
        # is found by stepping over every entry deleted before it (quadratic once the limit is hit)
        self._links: OrderedDict[Position, Link] = OrderedDict()
        self._retained = retained_links
        #: per (topic, partition): the offset after the last event this processor applied
        self._next: dict[tuple[str, int], int] = {}
        self._warehouse: Warehouse | None = None

    def attach(self, warehouse: Warehouse) -> None:
        """Load missing state from (and only from) this warehouse's audit table."""
        warehouse.command(DDL)
        self._warehouse = warehouse

    @property
    def state(self) -> AuditState:
        """A snapshot of the state (copies; for tests and tools)."""
        return AuditState(dict(self._heads), dict(self._links))

    def prepare(self, batch: Sequence[tuple[Event, Source]]) -> None:
        first: dict[tuple[str, int], int] = {}
        for _, source in batch:
            slot = (source.topic, source.partition)
            first[slot] = min(first.get(slot, source.offset), source.offset)
        gaps = {slot for slot, offset in first.items() if slot in self._next and offset > self._next[slot]}
        if gaps:
            log.info("audit: another worker advanced %s; reloading those chain heads", sorted(gaps))
            self._forget(gaps)
        if self._warehouse is None:
            return
        wanted: dict[str, set[str]] = {}
        for event, source in batch:
            chain = (event.envelope.aggregate_id, source.topic)
            if chain not in self._heads:
                wanted.setdefault(source.topic, set()).add(chain[0])
        for topic, records in wanted.items():
            result = self._warehouse.query(_HEADS, {"topic": topic, "records": sorted(records)})
            for row in result.rows:
                link = link_from_row(row)
                self._heads[link.chain] = link

    def _forget(self, slots: set[tuple[str, int]]) -> None:
        for chain in [c for c, link in self._heads.items() if (link.topic, link.partition) in slots]:
            del self._heads[chain]
        for position in [p for p in self._links if (p[0], p[1]) in slots]:
            del self._links[position]
        for slot in slots:
            del self._next[slot]

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        slot = (source.topic, source.partition)
        self._next[slot] = max(self._next.get(slot, 0), source.offset + 1)
        link, new = next_link(AuditState(self._heads, self._links), event, source)
        if link is None:
            log.debug("audit: %s/%s@%s already chained and stored", source.topic, source.partition, source.offset)
            return []
        if new:
            self._remember(link)
        return [entry_row(event, source, link)]

    def _remember(self, link: Link) -> None:
        self._heads[link.chain] = link
        self._links[link.position] = link
        while len(self._links) > self._retained:
            self._links.popitem(last=False)


def link_from_row(row: Sequence[Any]) -> Link:
    aggregate, topic, partition, offset, sha, prev, entry = row
    return Link(str(aggregate), str(topic), int(partition), int(offset), as_hex(sha), as_hex(prev), as_hex(entry))


def as_hex(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)
