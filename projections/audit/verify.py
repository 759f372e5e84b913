"""Checking the audit trail: recompute every per-record hash chain from the stored rows
(:func:`verify_chain`) and, against the event log, re-hash each event and re-derive its row with the
fold of :mod:`projections.audit.fold` (:func:`verify_against_log`). See that module for the chain.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from projections.audit.fold import (
    COLUMNS,
    DDL,
    GENESIS,
    TABLE,
    AuditState,
    ChainId,
    Link,
    Position,
    as_hex,
    chain_hash,
    entry_row,
    event_hash,
    link_from_row,
    next_link,
)
from projections.warehouse import Warehouse
from schemas.codec import CodecError, decode
from streams.log import EventLog
from streams.processing import Source
from streams.topics import SOURCE_OF_TRUTH


# -- checking --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Broken:
    """The first entry where history does not add up."""

    record: str
    topic: str
    partition: int
    offset: int
    #: what is wrong: "entry_hash", "prev_hash", "event_sha256" (log bytes differ), "missing row",
    #: "no such event", a column name (the stored value differs from the one the log gives)
    problem: str
    expected: str | None
    stored: str | None

    @property
    def sort_key(self) -> tuple[str, str, int, int]:
        return (self.record, self.topic, self.partition, self.offset)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record": self.record,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "problem": self.problem,
            "expected": self.expected,
            "stored": self.stored,
        }

    def describe(self) -> str:
        return (
            f"record {self.record} ({self.topic}/{self.partition}@{self.offset}): {self.problem}: "
            f"expected {self.expected}, stored {self.stored}"
        )


@dataclass
class ChainReport:
    entries: int = 0
    chains: int = 0
    #: entries that do not add up (the first one is in ``first_broken``)
    broken: int = 0
    first_broken: Broken | None = None
    #: verify_against_log only: events of the log checked, and events past the audited offsets
    log_events: int = 0
    unaudited: int = 0
    record: str | None = None
    #: positions already noted: an entry found broken by two checks is one broken entry
    _noted: set[tuple[str, str, int, int]] = field(default_factory=set, init=False, repr=False, compare=False)

    @property
    def ok(self) -> bool:
        return self.broken == 0

    def note(self, broken: Broken, *, precise: bool = False) -> None:
        """Count ``broken`` once per entry. ``precise``: this finding says better what is wrong with
        an entry already noted (the log knows which column changed; the chain alone only sees that
        the hashes do not add up), so it replaces the earlier one as the first broken entry."""
        key = broken.sort_key
        if key in self._noted:
            if precise and self.first_broken is not None and self.first_broken.sort_key == key:
                self.first_broken = broken
            return
        self._noted.add(key)
        self.broken += 1
        if self.first_broken is None or key < self.first_broken.sort_key:
            self.first_broken = broken

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChainReport:
        """The report :meth:`to_dict` gave (e.g. from a server's JSON answer)."""
        first = data.get("first_broken")
        report = cls(
            entries=int(data.get("entries", 0)),
            chains=int(data.get("chains", 0)),
            broken=int(data.get("broken", 0)),
            first_broken=Broken(**first) if first else None,
            log_events=int(data.get("log_events", 0)),
            unaudited=int(data.get("unaudited", 0)),
            record=data.get("record"),
        )
        return report

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "record": self.record,
            "entries": self.entries,
            "chains": self.chains,
            "broken": self.broken,
            "first_broken": self.first_broken.to_dict() if self.first_broken else None,
            "log_events": self.log_events,
            "unaudited": self.unaudited,
        }


_STORED = f"SELECT aggregate_id, topic, partition, offset, event_sha256, prev_hash, entry_hash FROM {TABLE} FINAL"


def stored_links(warehouse: Warehouse, record: str | None = None) -> list[Link]:
    """The stored entries in chain order (one record's, or all)."""
    warehouse.command(DDL)
    order = " ORDER BY aggregate_id, topic, partition, offset"
    if record is None:
        result = warehouse.query(_STORED + order)
    else:
        result = warehouse.query(_STORED + " WHERE aggregate_id = {r:String}" + order, {"r": record})
    return [link_from_row(row) for row in result.rows]


def check_links(links: Iterable[Link], report: ChainReport) -> None:
    """Recompute each chain (``links`` in chain order) and note every entry that does not add up."""
    previous: Link | None = None
    for link in links:
        report.entries += 1
        if previous is None or previous.chain != link.chain:
            report.chains += 1
            expected_prev = GENESIS
        else:
            expected_prev = previous.entry_hash
        where = (link.aggregate_id, link.topic, link.partition, link.offset)
        if link.prev_hash != expected_prev:
            report.note(Broken(*where, "prev_hash", expected_prev, link.prev_hash))
        else:
            expected = chain_hash(expected_prev, link.event_sha256, link.topic, link.partition, link.offset)
            if expected != link.entry_hash:
                report.note(Broken(*where, "entry_hash", expected, link.entry_hash))
        previous = link


def broken_links(links: Iterable[Link]) -> dict[Position, Broken]:
    """Per entry, what is wrong with its link (``links`` in chain order; entries that add up are
    absent): the chain check of :func:`check_links`, entry by entry, for pages that show each."""
    found: dict[Position, Broken] = {}
    previous: Link | None = None
    for link in links:
        expected_prev = GENESIS if previous is None or previous.chain != link.chain else previous.entry_hash
        where = (link.aggregate_id, link.topic, link.partition, link.offset)
        if link.prev_hash != expected_prev:
            found[link.position] = Broken(*where, "prev_hash", expected_prev, link.prev_hash)
        else:
            expected = chain_hash(expected_prev, link.event_sha256, link.topic, link.partition, link.offset)
            if expected != link.entry_hash:
                found[link.position] = Broken(*where, "entry_hash", expected, link.entry_hash)
        previous = link
    return found


def check_entry(row: Mapping[str, Any], raw: bytes | None) -> Broken | None:
    """One stored entry against its event as the log holds it (``raw``; None: no such event):
    the event's hash, then every column re-derived by the fold with the entry's stored link."""
    link = Link(
        str(row["aggregate_id"]),
        str(row["topic"]),
        int(row["partition"]),
        int(row["offset"]),
        as_hex(row["event_sha256"]),
        as_hex(row["prev_hash"]),
        as_hex(row["entry_hash"]),
    )
    where = (link.aggregate_id, link.topic, link.partition, link.offset)
    if raw is None:
        return Broken(*where, "no such event", None, "stored row")
    actual = event_hash(raw)
    if actual != link.event_sha256:
        return Broken(*where, "event_sha256", link.event_sha256, actual)
    try:
        event = decode(raw)
    except CodecError:
        return None  # the bytes are the ones audited: nothing more to compare
    expected = entry_row(event, Source(link.topic, link.partition, link.offset, raw), link).values
    for column in COLUMNS:
        if _comparable(expected[column]) != _comparable(row[column]):
            return Broken(*where, column, _show(expected[column]), _show(row[column]))
    return None


def verify_chain(warehouse: Warehouse, record: str | None = None) -> ChainReport:
    """Recompute every chain (of ``record``, or all) from the stored rows; the first broken entry."""
    report = ChainReport(record=record)
    check_links(stored_links(warehouse, record), report)
    return report


def verify_against_log(
    warehouse: Warehouse,
    event_log: EventLog,
    record: str | None = None,
    audited: Mapping[str, Mapping[int, int]] | None = None,
    topics: Sequence[str] = SOURCE_OF_TRUTH,
) -> ChainReport:
    """:func:`verify_chain`, plus: re-read the log, re-hash each event, re-derive its row with the
    same fold and compare every column with the stored row.

    ``audited``: per topic and partition, the offset up to which the audit projection has
    processed the log (its committed offsets); events at or past it are counted as ``unaudited``,
    not as missing. Without it the whole log is expected to be in the table."""
    report = verify_chain(warehouse, record)
    stored = _stored_rows(warehouse, record)
    wanted_key = record.encode() if record is not None else None
    ends = {t: event_log.end_offsets(t) for t in topics}
    heads: dict[ChainId, Link] = {}
    for batch in event_log.scan(ends):
        for rec in batch:
            if wanted_key is not None and rec.key != wanted_key:
                continue
            position = (rec.topic, rec.partition, rec.offset)
            row = stored.pop(position, None)
            limit = audited.get(rec.topic, {}).get(rec.partition, 0) if audited is not None else None
            if row is None and limit is not None and rec.offset >= limit:
                # not processed yet; a row written before its offsets were committed (a running
                # worker's current batch, a crash between write and commit) is checked like any
                report.unaudited += 1
                continue
            report.log_events += 1
            actual = event_hash(rec.value)
            try:
                event = decode(rec.value)
            except CodecError:
                event = None
            if row is not None:  # the record the entry was chained under, whatever the log says now
                aggregate = str(row["aggregate_id"])
            else:
                aggregate = event.envelope.aggregate_id if event else rec.key.decode(errors="replace")
            where = (aggregate, rec.topic, rec.partition, rec.offset)
            source = Source(rec.topic, rec.partition, rec.offset, rec.value)
            if row is None:
                if event is not None or record is None:
                    report.note(Broken(*where, "missing row", actual, None), precise=True)
                if event is not None:
                    # chain on with the entry the row should have been: the entries after it are
                    # judged on their own, not all reported because one row is gone
                    should_be, _ = next_link(AuditState(heads), event, source)
                    if should_be is not None:
                        heads[should_be.chain] = should_be
                continue
            if as_hex(row["event_sha256"]) != actual:
                report.note(Broken(*where, "event_sha256", as_hex(row["event_sha256"]), actual), precise=True)
                # keep chaining from what is stored, so later entries are judged on their own
                stored_hashes = (as_hex(row["event_sha256"]), as_hex(row["prev_hash"]), as_hex(row["entry_hash"]))
                link = Link(*where, *stored_hashes)
                heads[link.chain] = link
                continue
            if event is None:  # same bytes as audited but undecodable: cannot re-derive the row
                continue
            derived, _ = next_link(AuditState(heads), event, source)
            if derived is None:  # cannot happen in a log read once in order; nothing to compare
                continue
            heads[derived.chain] = derived
            expected = entry_row(event, source, derived).values
            for column in COLUMNS:
                if _comparable(expected[column]) != _comparable(row[column]):
                    report.note(Broken(*where, column, _show(expected[column]), _show(row[column])), precise=True)
                    break
    for (topic, partition, offset), row in stored.items():
        report.note(
            Broken(str(row["aggregate_id"]), topic, partition, offset, "no such event", None, "stored row"),
            precise=True,
        )
    return report


def _stored_rows(warehouse: Warehouse, record: str | None) -> dict[Position, dict[str, Any]]:
    columns = ", ".join(COLUMNS)
    if record is None:
        result = warehouse.query(f"SELECT {columns} FROM {TABLE} FINAL")
    else:
        result = warehouse.query(
            f"SELECT {columns} FROM {TABLE} FINAL WHERE aggregate_id = {{r:String}}", {"r": record}
        )
    rows: dict[Position, dict[str, Any]] = {}
    for row in result.dicts():
        rows[(str(row["topic"]), int(row["partition"]), int(row["offset"]))] = row
    return rows


def _comparable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.decode()
    if value is None or isinstance(value, int | float | bool):
        return value
    return str(value)


def _show(value: Any) -> str | None:
    return None if value is None else str(_comparable(value))
