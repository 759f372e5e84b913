"""The audit trail on both warehouse backends (chdb and clickhouse-connect over HTTP), fed by the
real embedded log and runner.

Whatever way the events arrive — once, twice, rebuilt from offset 0, across a restart, or split
between two workers of one group — the table must hold the same rows, and every change to history
(a stored row, an event in the log, a deleted row) must be reported at the entry where it is.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from projections.audit.fold import TABLE, AuditTrail
from projections.audit.queries import history
from projections.audit.verify import ChainReport, verify_against_log, verify_chain
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.codec import encode
from schemas.events import Actor, Event, new_event
from streams import open_event_log
from streams.log import EventLog
from streams.processing import EmbeddedRunner, group_id, process_batch, record_source
from streams.publisher import publish_many
from streams.topics import ACCESS, DICOM, PATIENTS, REPORTS, SOURCE_OF_TRUTH, archive_topics
from tests.support.warehouses import WarehouseTarget

ORG_A = "1.2.643.5.1.13.13.12.2.50.1001"
ORG_B = "1.2.643.5.1.13.13.12.2.50.1002"
T0 = datetime(2026, 2, 2, 9, 0, tzinfo=UTC)
DOCTOR = {"code": "123-456-7N + 2 00", "name": "Орлова^Анна"}
RADIOLOGIST = Actor("dr.petrov", "radiologist")
#: every event of region_events()
N = 48
STUDIES = [f"1.2.826.0.1.3680043.8.498.9.{n}" for n in range(1, 6)]
PATIENT_IDS = ["P-1", "P-2", "P-3'\\%"]


def received(study: str, n: int, organisation: str) -> Event:
    payload: dict[str, Any] = {
        "StudyInstanceUID": study,
        "SeriesInstanceUID": f"{study}.1",
        "SOPInstanceUID": f"{study}.1.{n}",
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
        "TransferSyntaxUID": "1.2.840.10008.1.2.1",
        "PatientID": "P-1",
        "PatientName": "Иванова^Анна",
        "Modality": "CT",
        "PerformingPhysician": DOCTOR,
        "blob": {"sha256": f"{n:064x}", "size": 1000 + n, "store": "file://"},
        "channel": "dicom",
        "calling_ae_title": "OKB_PACS",
        "peer_address": "10.1.2.3",
    }
    return new_event(
        "InstanceReceived",
        payload,
        aggregate_id=study,
        source_node="OKB_PACS",
        organisation=organisation,
        occurred_at=T0 + timedelta(minutes=n),
    )


def report(event_type: str, study: str, revision: int) -> Event:
    payload: dict[str, Any] = {
        "report_id": f"r-{study}",
        "StudyInstanceUID": study,
        "protocol_text": "протокол",
        "conclusion_text": "заключение",
        "revision": revision,
    }
    if event_type == "ReportDrafted":
        payload |= {"author": DOCTOR, "source": "http"}
    else:
        payload |= {"editor": DOCTOR}
    return new_event(event_type, payload, aggregate_id=study, source_node="http", organisation=ORG_A, actor=RADIOLOGIST)


def accessed(study: str) -> Event:
    return new_event(
        "RecordAccessed",
        {"action": "view", "channel": "study-page", "StudyInstanceUID": study, "results": 1},
        aggregate_id=study,
        source_node="http",
        actor=RADIOLOGIST,
    )


def updated(patient: str, n: int) -> Event:
    return new_event(
        "PatientUpdated",
        {"PatientID": patient, "PatientName": f"Петрова^Анна^{n}", "source": "hl7"},
        aggregate_id=patient,
        source_node="MIS",
    )


def region_events() -> list[Event]:
    """Five studies with images (dicom), reports and accesses; three patients updated; interleaved."""
    events: list[Event] = []
    for round_ in range(4):
        for s, study in enumerate(STUDIES):
            events.append(received(study, round_, ORG_A if s % 2 else ORG_B))
            if round_ == 1:
                events.append(report("ReportDrafted", study, 1))
            if round_ in (2, 3) and s < 3:
                events.append(report("ReportEdited", study, round_))
            if round_ == 3:
                events.append(accessed(study))
        for patient in PATIENT_IDS:
            events.append(updated(patient, round_))
    return events


@pytest.fixture
def event_log(tmp_path: Path) -> Iterator[EventLog]:
    log = open_event_log(f"sqlite://{tmp_path}/events.db")
    log.ensure_topics(archive_topics(3))
    publish_many(log, region_events())
    try:
        yield log
    finally:
        log.close()


def snapshot(warehouse: Warehouse) -> list[tuple[Any, ...]]:
    return warehouse.query(f"SELECT * FROM {TABLE} FINAL ORDER BY aggregate_id, topic, partition, offset").rows


def total(event_log: EventLog) -> int:
    return sum(sum(event_log.end_offsets(t).values()) for t in SOURCE_OF_TRUTH)


def trail(name: str = "audit", warehouse: Warehouse | None = None) -> AuditTrail:
    processor = AuditTrail()
    processor.name = name  # its own consumer group
    if warehouse is not None:
        processor.attach(warehouse)
    return processor


def run(event_log: EventLog, warehouse: Warehouse, processor: AuditTrail, batch_size: int) -> None:
    EmbeddedRunner(event_log, [(processor, WarehouseSink(warehouse, AuditTrail.ddl))], batch_size).catch_up()


def reference(event_log: EventLog, warehouse: Warehouse) -> list[tuple[Any, ...]]:
    """One uninterrupted run (its own group), then the table is dropped again."""
    run(event_log, warehouse, trail("audit-reference", warehouse), batch_size=500)
    rows = snapshot(warehouse)
    assert len(rows) == total(event_log) == N
    warehouse.command(f"DROP TABLE {TABLE}")
    return rows


def assert_intact(warehouse: Warehouse, event_log: EventLog) -> None:
    chain, against_log = verify_chain(warehouse), verify_against_log(warehouse, event_log)
    for report in (chain, against_log):
        assert report.ok, report.first_broken
        assert (report.entries, report.broken, report.first_broken) == (N, 0, None)
        # a chain per (record, topic): 5 studies in dicom + reports, 5 in access, 3 patients
        assert report.chains == 5 + 5 + 5 + 3
    assert against_log.log_events == N and against_log.unaudited == 0


def test_redelivery_and_rebuild_leave_identical_rows(warehouse: Warehouse, event_log: EventLog) -> None:
    run(event_log, warehouse, trail(warehouse=warehouse), batch_size=7)
    first = snapshot(warehouse)
    assert len(first) == N
    assert_intact(warehouse, event_log)

    # every event delivered again to a processor without the table's state (another group, other
    # batches): it rebuilds every chain from GENESIS and writes the identical rows a second time
    warehouse.command(f"SYSTEM STOP MERGES {TABLE}")
    run(event_log, warehouse, trail("audit-redelivery"), batch_size=3)
    assert warehouse.query(f"SELECT count() FROM {TABLE}").scalar() == 2 * N  # really written twice
    assert snapshot(warehouse) == first
    # and to one attached to the table: it loads the heads, sees every position chained, adds nothing
    run(event_log, warehouse, trail("audit-redelivery-attached", warehouse), batch_size=11)
    assert warehouse.query(f"SELECT count() FROM {TABLE}").scalar() == 2 * N
    warehouse.command(f"SYSTEM START MERGES {TABLE}")
    assert snapshot(warehouse) == first
    assert_intact(warehouse, event_log)

    # a rebuild: drop the table, replay from offset 0
    warehouse.command(f"DROP TABLE {TABLE}")
    run(event_log, warehouse, trail("audit-rebuild", warehouse), batch_size=500)
    assert snapshot(warehouse) == first
    warehouse.command(f"OPTIMIZE TABLE {TABLE} FINAL")
    assert snapshot(warehouse) == first
    assert_intact(warehouse, event_log)


def test_a_restarted_processor_continues_the_chains(warehouse_target: WarehouseTarget, event_log: EventLog) -> None:
    warehouse = warehouse_target.open()
    expected = reference(event_log, warehouse)
    before = trail(warehouse=warehouse)
    sink = WarehouseSink(warehouse, AuditTrail.ddl)
    runner = EmbeddedRunner(event_log, [(before, sink)], batch_size=9)
    with event_log.consumer(group_id(before), before.topics) as consumer:
        handled = 0
        while handled < 20:
            handled += runner.run_once(before, sink, consumer)
        # the batch after that is written but the process dies before committing it
        records = consumer.poll(9, 1.0)
        assert records
        sink.write(process_batch(before, [record_source(r) for r in records]).rows)
    written = len(snapshot(warehouse))
    assert 20 < written < N

    warehouse_target.restart()  # a new process: nothing in memory, same storage
    warehouse = warehouse_target.open()
    run(event_log, warehouse, trail(warehouse=warehouse), batch_size=5)
    assert snapshot(warehouse) == expected
    assert_intact(warehouse, event_log)


def test_two_workers_taking_turns_on_the_same_partitions(warehouse: Warehouse, event_log: EventLog) -> None:
    expected = reference(event_log, warehouse)
    workers = [trail(warehouse=warehouse), trail(warehouse=warehouse)]
    sink = WarehouseSink(warehouse, AuditTrail.ddl)
    sizes = (2, 3)
    runners = [EmbeddedRunner(event_log, [(w, sink)], batch_size=size) for w, size in zip(workers, sizes, strict=True)]
    group = group_id(workers[0])
    turn = 0
    while sum(event_log.lag(group, t) for t in SOURCE_OF_TRUTH):
        worker, runner = workers[turn % 2], runners[turn % 2]
        # a rebalance between every batch: the member that gets the partitions starts from the
        # group's committed offsets, i.e. right after what the other member processed
        with event_log.consumer(group, worker.topics) as consumer:
            if turn % 3 == 2:
                # this member loses its partitions after writing, before committing: the other
                # member gets the same events again
                records = consumer.poll(sizes[turn % 2], 1.0)
                sink.write(process_batch(worker, [record_source(r) for r in records]).rows)
            else:
                runner.run_once(worker, sink, consumer, timeout=1.0)
        turn += 1
    assert turn > 20
    assert snapshot(warehouse) == expected
    assert_intact(warehouse, event_log)


# -- tampering ------------------------------------------------------------------------------------
def entries(warehouse: Warehouse, record: str, topic: str) -> list[dict[str, Any]]:
    return warehouse.query(
        f"SELECT * FROM {TABLE} FINAL WHERE aggregate_id = {{r:String}} AND topic = {{t:String}} ORDER BY offset",
        {"r": record, "t": topic},
    ).dicts()


def tamper(warehouse: Warehouse, entry: dict[str, Any], column: str, value: str) -> None:
    warehouse.command(
        f"ALTER TABLE {TABLE} UPDATE {column} = {{v:String}}"
        " WHERE topic = {t:String} AND partition = {p:UInt16} AND offset = {o:UInt64} SETTINGS mutations_sync = 2",
        {"v": value, "t": entry["topic"], "p": entry["partition"], "o": entry["offset"]},
    )


def first(report: ChainReport) -> tuple[str, str, int, int, str]:
    broken = report.first_broken
    assert broken is not None and not report.ok
    return (broken.record, broken.topic, broken.partition, broken.offset, broken.problem)


def at(entry: dict[str, Any], problem: str) -> tuple[str, str, int, int, str]:
    return (entry["aggregate_id"], entry["topic"], entry["partition"], entry["offset"], problem)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.fixture
def audited(warehouse: Warehouse, event_log: EventLog) -> Warehouse:
    run(event_log, warehouse, trail(warehouse=warehouse), batch_size=10)
    assert_intact(warehouse, event_log)
    return warehouse


def test_a_changed_summary_is_found_against_the_log(audited: Warehouse, event_log: EventLog) -> None:
    study = sorted(STUDIES)[1]
    chain = entries(audited, study, DICOM)
    assert len(chain) == 4
    tamper(audited, chain[3], "summary", "x")  # a later entry
    tamper(audited, chain[1], "summary", "x")
    later = entries(audited, sorted(STUDIES)[4], REPORTS)[0]  # a later record
    tamper(audited, later, "actor_user", "someone.else")

    assert verify_chain(audited).ok  # the summary is not hashed: only the log can tell
    report = verify_against_log(audited, event_log)
    assert first(report) == at(chain[1], "summary")
    assert report.first_broken is not None
    assert (report.first_broken.expected, report.first_broken.stored) == (chain[1]["summary"], "x")
    assert report.broken == 3


@pytest.mark.parametrize(
    ("column", "chain_problem", "log_problem", "broken"),
    [
        # the entry's own hash: it and the next entry (which no longer follows it) are broken
        ("entry_hash", "entry_hash", "entry_hash", 2),
        ("prev_hash", "prev_hash", "prev_hash", 1),
        # the chain sees the entry hash not matching; the log says which column it was
        ("event_sha256", "entry_hash", "event_sha256", 1),
    ],
)
def test_a_changed_hash_is_the_first_broken_entry(
    audited: Warehouse, event_log: EventLog, column: str, chain_problem: str, log_problem: str, broken: int
) -> None:
    patient = "P-2"
    chain = entries(audited, patient, PATIENTS)
    assert len(chain) == 4
    forged = "f" * 64
    tamper(audited, chain[1], column, forged)
    # later entries broken too: the last entry of this chain, and an entry of a later record
    tamper(audited, chain[3], "prev_hash", "e" * 64)
    later = entries(audited, PATIENT_IDS[2], PATIENTS)
    assert later[0]["aggregate_id"] > patient
    tamper(audited, later[0], "entry_hash", "d" * 64)

    chain_report = verify_chain(audited)
    assert first(chain_report) == at(chain[1], chain_problem)
    assert chain_report.first_broken is not None and chain_report.first_broken.stored == (
        forged if column != "event_sha256" else text(chain[1]["entry_hash"])
    )
    # + chain[3] (prev_hash) + later[0] (entry_hash) and later[1] (no longer follows it)
    assert chain_report.broken == broken + 3

    log_report = verify_against_log(audited, event_log)
    assert first(log_report) == at(chain[1], log_problem)
    assert log_report.broken == broken + 3

    # only this record
    assert first(verify_chain(audited, patient)) == at(chain[1], chain_problem)
    assert verify_chain(audited, patient).broken == broken + 1
    assert first(verify_against_log(audited, event_log, patient)) == at(chain[1], log_problem)
    assert verify_chain(audited, PATIENT_IDS[0]).ok and verify_against_log(audited, event_log, PATIENT_IDS[0]).ok


def rewrite_event(db: Path, topic: str, partition: int, offset: int, value: bytes) -> None:
    with sqlite3.connect(db) as conn:
        changed = conn.execute(
            "UPDATE events SET value = ? WHERE topic = ? AND partition = ? AND offset = ?",
            (value, topic, partition, offset),
        ).rowcount
    assert changed == 1


def test_a_changed_event_in_the_log_is_found(audited: Warehouse, event_log: EventLog, tmp_path: Path) -> None:
    study = sorted(STUDIES)[2]
    chain = entries(audited, study, REPORTS)
    assert len(chain) == 3  # drafted, edited twice
    db = tmp_path / "events.db"
    # valid events, correctly encoded, at the positions of real ones: what someone rewriting
    # history in the log would write
    rewrite_event(db, REPORTS, chain[1]["partition"], chain[1]["offset"], encode(report("ReportEdited", study, 7)))
    # a later one that even claims to belong to another record
    other = report("ReportEdited", sorted(STUDIES)[0], 9)
    rewrite_event(db, REPORTS, chain[2]["partition"], chain[2]["offset"], encode(other))

    assert verify_chain(audited).ok  # the table itself was not touched
    report_ = verify_against_log(audited, event_log)
    assert first(report_) == at(chain[1], "event_sha256")
    assert report_.first_broken is not None and report_.first_broken.expected == text(chain[1]["event_sha256"])
    assert report_.broken == 2  # each changed event once; the entries after them are judged on their own

    only = verify_against_log(audited, event_log, study)
    assert first(only) == at(chain[1], "event_sha256") and only.broken == 2
    assert only.log_events == 4 + 3 + 1  # the study's events in dicom, reports and access
    assert verify_against_log(audited, event_log, sorted(STUDIES)[0]).ok


def delete(warehouse: Warehouse, entry: dict[str, Any]) -> None:
    warehouse.command(
        f"ALTER TABLE {TABLE} DELETE"
        " WHERE topic = {t:String} AND partition = {p:UInt16} AND offset = {o:UInt64} SETTINGS mutations_sync = 2",
        {"t": entry["topic"], "p": entry["partition"], "o": entry["offset"]},
    )


def test_a_deleted_row_is_a_missing_row(audited: Warehouse, event_log: EventLog) -> None:
    chain = entries(audited, PATIENT_IDS[0], PATIENTS)
    last = entries(audited, PATIENT_IDS[1], PATIENTS)[-1]
    delete(audited, chain[1])
    delete(audited, last)

    # the chain alone sees entry 2 not following entry 0; it cannot see that a last entry is gone
    chain_report = verify_chain(audited)
    assert first(chain_report) == at(chain[2], "prev_hash") and chain_report.broken == 1
    report_ = verify_against_log(audited, event_log)
    assert first(report_) == at(chain[1], "missing row")
    assert report_.first_broken is not None and report_.first_broken.stored is None
    # both deleted rows, and entry 2 that no longer follows what is stored; entry 3 is intact
    assert report_.broken == 3
    assert first(verify_against_log(audited, event_log, PATIENT_IDS[1])) == at(last, "missing row")
    assert verify_against_log(audited, event_log, PATIENT_IDS[0]).broken == 2
    assert verify_against_log(audited, event_log, PATIENT_IDS[2]).ok


def test_an_invented_row_is_no_such_event(audited: Warehouse, event_log: EventLog) -> None:
    [row] = audited.query(
        f"SELECT * FROM {TABLE} FINAL WHERE aggregate_id = {{r:String}} AND topic = {{t:String}}",
        {"r": sorted(STUDIES)[3], "t": ACCESS},
    ).dicts()
    end = event_log.end_offsets(ACCESS)[row["partition"]]
    invented = {**row, "offset": end + 5}  # the same entry, at a position the log never had
    audited.insert(TABLE, list(invented), [list(invented.values())])
    report_ = verify_against_log(audited, event_log)
    assert first(report_) == (row["aggregate_id"], ACCESS, row["partition"], end + 5, "no such event")
    assert report_.broken == 1
    # the chain alone sees an entry that does not follow its predecessor
    assert first(verify_chain(audited)) == (row["aggregate_id"], ACCESS, row["partition"], end + 5, "prev_hash")


def test_unprocessed_events_are_not_missing(audited: Warehouse, event_log: EventLog) -> None:
    """Events past the audit group's committed offsets are counted, not reported; rows written for
    a batch whose offsets were not committed yet are checked like the others."""
    publish_many(event_log, [updated(p, 10) for p in PATIENT_IDS] + [accessed(STUDIES[0])])
    processor = trail(warehouse=audited)
    sink = WarehouseSink(audited, AuditTrail.ddl)
    group = group_id(processor)
    with event_log.consumer(group, processor.topics) as consumer:
        records = consumer.poll(2, 1.0)
        assert len(records) == 2
        sink.write(process_batch(processor, [record_source(r) for r in records]).rows)  # not committed
    committed = {t: event_log.committed(group, t) for t in SOURCE_OF_TRUTH}

    assert not verify_against_log(audited, event_log).ok  # the whole log expected: 2 missing rows
    report_ = verify_against_log(audited, event_log, audited=committed)
    assert report_.ok, report_.first_broken
    assert (report_.log_events, report_.unaudited, report_.entries) == (N + 2, 2, N + 2)
    run(event_log, audited, processor, batch_size=10)
    report_ = verify_against_log(
        audited, event_log, audited={t: event_log.committed(group, t) for t in SOURCE_OF_TRUTH}
    )
    assert report_.ok and (report_.log_events, report_.unaudited) == (N + 4, 0)


def test_history_lists_a_record_in_order(audited: Warehouse) -> None:
    study = STUDIES[0]
    rows = history(audited, study)
    assert [r["topic"] for r in rows].count(DICOM) == 4
    assert {r["topic"] for r in rows} == {DICOM, REPORTS, ACCESS}
    assert len(rows) == 4 + 3 + 1
    keys = [(r["occurred_at"], r["recorded_at"], r["topic"], r["partition"], r["offset"]) for r in rows]
    assert keys == sorted(keys)
    dicom = [r for r in rows if r["topic"] == DICOM]
    assert [r["summary"].split(" ")[2] for r in dicom] == [f"{study}.1.{n}" for n in range(4)]
    assert dicom[0]["peer_address"] == "10.1.2.3" and dicom[0]["organisation"] == ORG_B
    for r in rows:  # hashes as hex text, whatever the backend returns for FixedString
        assert isinstance(r["entry_hash"], str) and len(r["entry_hash"]) == 64
        assert isinstance(r["prev_hash"], str) and isinstance(r["event_sha256"], str)
    assert history(audited, "no-such-record") == []
