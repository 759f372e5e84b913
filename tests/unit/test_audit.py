"""The audit trail's fold as pure functions: the chain formula, one chain per (record, topic),
redelivery, and the state left untouched (no warehouse, no log)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from projections.audit.fold import COLUMNS, GENESIS, TABLE, AuditState, AuditTrail, Link, apply, chain_hash, next_link
from projections.audit.verify import Broken, ChainReport, check_links
from schemas.codec import encode
from schemas.events import Actor, Event, new_event
from streams.processing import Row, Source
from streams.topics import ACCESS, PATIENTS, REPORTS

T0 = datetime(2026, 3, 1, 8, 30, tzinfo=UTC)
DOCTOR = {"code": "123-456-789 00", "name": "Орлова^Анна"}
STUDY = "1.2.826.0.1.3680043.8.498.7.1"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.7.2"


def updated(patient: str, name: str = "Петрова^Анна") -> Event:
    return new_event(
        "PatientUpdated",
        {"PatientID": patient, "PatientName": name, "source": "hl7"},
        aggregate_id=patient,
        source_node="MIS",
        occurred_at=T0,
    )


def drafted(study: str) -> Event:
    return new_event(
        "ReportDrafted",
        {
            "report_id": f"r-{study}",
            "StudyInstanceUID": study,
            "AccessionNumber": "ACC-1",
            "protocol_text": "текст, который в журнал не попадает",
            "conclusion_text": "—",
            "author": DOCTOR,
            "source": "http",
        },
        aggregate_id=study,
        source_node="http",
        organisation="1.2.643.5.1.13.13.12.2.50.1001",
        actor=Actor("dr.petrov", "radiologist"),
        occurred_at=T0,
    )


def accessed(study: str) -> Event:
    return new_event(
        "RecordAccessed",
        {
            "action": "study.view",
            "channel": "http",
            "outcome": "allowed",
            "results": 1,
            "StudyInstanceUID": study,
            "remote_address": "10.0.0.7",
        },
        aggregate_id=study,
        source_node="http",
        actor=Actor("dr.petrov", "radiologist"),
        occurred_at=T0,
    )


def at(event: Event, topic: str, partition: int, offset: int) -> Source:
    return Source(topic, partition, offset, encode(event))


def by_hand(prev_hex: str, raw: bytes, position: str) -> str:
    """The documented formula, spelled out independently of the module."""
    return hashlib.sha256(bytes.fromhex(prev_hex) + hashlib.sha256(raw).digest() + position.encode()).hexdigest()


def fold(events: list[tuple[Event, Source]], state: AuditState | None = None) -> tuple[AuditState, list[Row]]:
    state = state or AuditState()
    rows: list[Row] = []
    for event, source in events:
        state, new_rows = apply(state, event, source)
        rows.extend(new_rows)
    return state, rows


def test_the_chain_is_the_documented_formula() -> None:
    events = [updated("P-1", name) for name in ("Иванова^Анна", "Петрова^Анна", "Сидорова^Анна")]
    sources = [at(e, PATIENTS, 2, offset) for e, offset in zip(events, (4, 9, 10), strict=True)]
    _, rows = fold(list(zip(events, sources, strict=True)))

    assert [r.table for r in rows] == [TABLE] * 3
    prev = GENESIS
    for row, source in zip(rows, sources, strict=True):
        v = row.values
        assert set(v) == set(COLUMNS)
        assert v["event_sha256"] == hashlib.sha256(source.raw).hexdigest()
        assert v["prev_hash"] == prev
        assert v["entry_hash"] == by_hand(prev, source.raw, f"{PATIENTS}/2/{source.offset}")
        assert (v["topic"], v["partition"], v["offset"]) == (PATIENTS, 2, source.offset)
        prev = v["entry_hash"]
    digest = hashlib.sha256(bytes(32) + bytes.fromhex("ab" * 32) + b"t/0/1").hexdigest()
    assert chain_hash(GENESIS, "ab" * 32, "t", 0, 1) == digest
    # the position is part of the hash: the same event at another offset is another entry
    assert chain_hash(GENESIS, "ab" * 32, "t", 0, 1) != chain_hash(GENESIS, "ab" * 32, "t", 0, 2)
    assert chain_hash(GENESIS, "ab" * 32, "t", 0, 1) != chain_hash(GENESIS, "ab" * 32, "t", 1, 1)


def test_what_a_row_says() -> None:
    event = drafted(STUDY)
    _, [row] = fold([(event, at(event, REPORTS, 1, 0))])
    v = row.values
    assert v["aggregate_id"] == STUDY and v["study_instance_uid"] == STUDY
    assert v["event_id"] == event.envelope.event_id and v["event_type"] == "ReportDrafted"
    assert (v["actor_user"], v["actor_role"]) == ("dr.petrov", "radiologist")
    assert v["occurred_at"] == T0 and v["organisation"] == "1.2.643.5.1.13.13.12.2.50.1001"
    assert v["summary"] == f"report r-{STUDY} drafted (revision 1) by 123-456-789 00"
    assert "текст" not in v["summary"]  # free text never reaches the trail
    seen = accessed(STUDY)
    _, [access] = fold([(seen, at(seen, ACCESS, 0, 3))])
    assert access.values["peer_address"] == "10.0.0.7"
    assert access.values["summary"] == "study.view via http: allowed, 1 result(s)"


def test_each_record_and_topic_has_its_own_chain() -> None:
    a1, b1, a2, r1, a3 = updated("P-A"), updated("P-B"), updated("P-A"), drafted(STUDY), updated("P-A")
    acc = accessed(STUDY)
    # P-A and P-B share a partition; the study has a chain in reports and another in access
    batch = [
        (a1, at(a1, PATIENTS, 0, 0)),
        (b1, at(b1, PATIENTS, 0, 1)),
        (r1, at(r1, REPORTS, 0, 0)),
        (a2, at(a2, PATIENTS, 0, 2)),
        (acc, at(acc, ACCESS, 0, 0)),
        (a3, at(a3, PATIENTS, 0, 3)),
    ]
    state, rows = fold(batch)
    by_position = {(r.values["topic"], r.values["offset"]): r.values for r in rows}
    assert by_position[(PATIENTS, 0)]["prev_hash"] == GENESIS
    assert by_position[(PATIENTS, 1)]["prev_hash"] == GENESIS  # P-B does not continue P-A's chain
    assert by_position[(PATIENTS, 2)]["prev_hash"] == by_position[(PATIENTS, 0)]["entry_hash"]
    assert by_position[(PATIENTS, 3)]["prev_hash"] == by_position[(PATIENTS, 2)]["entry_hash"]
    assert by_position[(REPORTS, 0)]["prev_hash"] == GENESIS  # same record, other topic: other chain
    assert by_position[(ACCESS, 0)]["prev_hash"] == GENESIS
    assert set(state.heads) == {("P-A", PATIENTS), ("P-B", PATIENTS), (STUDY, REPORTS), (STUDY, ACCESS)}
    assert state.heads[("P-A", PATIENTS)].offset == 3

    # interleaving the chains differently (another runner, another batch split) gives the same rows
    reordered = [batch[i] for i in (4, 2, 1, 0, 3, 5)]
    _, again = fold(reordered)
    assert sorted(again, key=lambda r: (r.values["topic"], r.values["offset"])) == sorted(
        rows, key=lambda r: (r.values["topic"], r.values["offset"])
    )


def test_a_redelivered_position_gives_the_identical_row_and_no_new_link() -> None:
    events = [updated("P-1", f"Имя{n}^Анна") for n in range(3)]
    batch = [(e, at(e, PATIENTS, 1, n)) for n, e in enumerate(events)]
    state, rows = fold(batch)

    for n, (event, source) in enumerate(batch):
        link, new = next_link(state, event, source)
        assert not new and link is not None and link.entry_hash == rows[n].values["entry_hash"]
        after, [row] = apply(state, event, source)
        assert after is state  # nothing learned
        assert row == rows[n]
    # redelivering everything (at-least-once after a crash) and then continuing: the chain goes on
    # from the real head, not from the redelivered entry
    state, again = fold(batch, state)
    assert again == rows
    fourth = updated("P-1", "Новая^Анна")
    _, [row] = apply(state, fourth, at(fourth, PATIENTS, 1, 3))
    assert row.values["prev_hash"] == rows[2].values["entry_hash"]


def test_apply_does_not_change_the_given_state() -> None:
    first, second = updated("P-1"), updated("P-1")
    state, _ = fold([(first, at(first, PATIENTS, 0, 0))])
    heads, links = dict(state.heads), dict(state.links)

    after, [row] = apply(state, second, at(second, PATIENTS, 0, 1))

    assert dict(state.heads) == heads and dict(state.links) == links
    assert state.heads[("P-1", PATIENTS)].offset == 0 and (PATIENTS, 0, 1) not in state.links
    assert after is not state and after.heads[("P-1", PATIENTS)].offset == 1
    assert row.values["prev_hash"] == heads[("P-1", PATIENTS)].entry_hash
    # applying the same event to the old state again decides the same: no hidden state anywhere
    _, [same] = apply(state, second, at(second, PATIENTS, 0, 1))
    assert same == row


def test_a_position_at_or_before_the_head_and_unknown_to_the_state_gives_no_row() -> None:
    event = updated("P-1")
    head = Link("P-1", PATIENTS, 0, 5, "ab" * 32, GENESIS, chain_hash(GENESIS, "ab" * 32, PATIENTS, 0, 5))
    state = AuditState({head.chain: head}, {})  # e.g. loaded from the table after a restart

    for offset in (5, 3, 0):
        assert next_link(state, event, at(event, PATIENTS, 0, offset)) == (None, False)
        after, rows = apply(state, event, at(event, PATIENTS, 0, offset))
        assert rows == [] and after is state
    # the next offset continues the loaded head
    link, new = next_link(state, event, at(event, PATIENTS, 0, 6))
    assert new and link is not None and link.prev_hash == head.entry_hash
    # another record in the same partition is not affected by P-1's head
    other = updated("P-2")
    link, new = next_link(state, other, at(other, PATIENTS, 0, 2))
    assert new and link is not None and link.prev_hash == GENESIS


def test_the_processor_makes_the_same_decisions_as_the_fold() -> None:
    events = [updated("P-1"), drafted(STUDY), updated("P-2"), updated("P-1"), accessed(STUDY)]
    topics = [PATIENTS, REPORTS, PATIENTS, PATIENTS, ACCESS]
    batch = [(e, at(e, t, 0, n)) for n, (e, t) in enumerate(zip(events, topics, strict=True))]
    _, expected = fold(batch)

    trail = AuditTrail(retained_links=2)  # redelivery of evicted positions must still not relink
    trail.prepare(batch)  # no warehouse attached: memory is the whole state
    rows = [row for event, source in batch for row in trail.apply(event, source)]
    assert rows == expected
    again = [row for event, source in batch for row in trail.apply(event, source)]
    # the two retained positions come back identical; the evicted ones are at or before a head
    assert again == [expected[3], expected[4]]
    assert len(trail.state.links) == 2


def link_of(row: Row) -> Link:
    v = row.values
    return Link(
        v["aggregate_id"], v["topic"], v["partition"], v["offset"], v["event_sha256"], v["prev_hash"], v["entry_hash"]
    )


def test_check_links_reports_the_first_broken_entry_and_counts_each_once() -> None:
    events = [updated("P-1", f"Имя{n}^Анна") for n in range(4)]
    _, rows = fold([(e, at(e, PATIENTS, 0, n)) for n, e in enumerate(events)])
    links = [link_of(r) for r in rows]
    report = ChainReport()
    check_links(links, report)
    assert report.ok and (report.entries, report.chains) == (4, 1)

    forged = [*links]
    forged[1] = Link(*links[1].chain, 0, 1, links[1].event_sha256, links[1].prev_hash, "f" * 64)
    report = ChainReport()
    check_links(forged, report)
    # entry 1's hash is wrong, and entry 2 no longer follows it; the first is entry 1
    assert report.broken == 2
    assert report.first_broken == Broken("P-1", PATIENTS, 0, 1, "entry_hash", links[1].entry_hash, "f" * 64)

    report = ChainReport()
    report.note(Broken("P-1", PATIENTS, 0, 2, "summary", "a", "b"))
    report.note(Broken("P-1", PATIENTS, 0, 1, "prev_hash", "a", "b"))
    report.note(Broken("P-1", PATIENTS, 0, 1, "entry_hash", "a", "b"))  # same entry again
    assert report.broken == 2 and report.first_broken is not None
    assert (report.first_broken.offset, report.first_broken.problem) == (1, "prev_hash")
