"""HL7 v2 messages -> events or refusals, and the acknowledgement, without a network: the
receiver on an embedded log in a temporary directory."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from ingest.hl7.receiver import HL7Receiver, Received
from ingest.hl7.wire import CHARSETS, read_header
from ingest.reports.fold import fact
from ingest.reports.rules import ReportState, evolve
from schemas.codec import decode
from streams.embedded import EmbeddedEventLog
from streams.topics import ORDERS, archive_topics
from tests.support.hl7 import ack_fields, message, pid, segment

STUDY = "1.2.826.0.1.3680043.8.498.1"
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


class Reports:
    """The report states the receiver consults, folded from what it recorded."""

    def __init__(self) -> None:
        self.states: dict[str, ReportState | None] = {}

    def record(self, received: Received) -> None:
        for event in received.events:
            if event.type.startswith("Report"):
                report_id = event["report_id"]
                self.states[report_id] = evolve(self.states.get(report_id), fact(event))


@pytest.fixture()
def reports() -> Reports:
    return Reports()


@pytest.fixture()
def receiver(tmp_path: Path, reports: Reports) -> Iterator[HL7Receiver]:
    log = EmbeddedEventLog(tmp_path / "events.db")
    log.ensure_topics(archive_topics(2))
    yield HL7Receiver(
        log,
        organisation_of=lambda facility: facility if facility == "ORG01" else None,
        study_of_accession=lambda accession: STUDY if accession == "ACC9" else None,
        report_state=lambda report_id: reports.states.get(report_id),
        zone=ZoneInfo("Europe/Moscow"),
        clock=lambda: NOW,
    )
    log.close()


def only(received: Received, event_type: str) -> dict[str, object]:
    assert received.ack_code == "AA", ack_fields(received.ack)
    assert [e.type for e in received.events] == [event_type]
    return dict(received.events[0].payload)


def rejected(received: Received) -> dict[str, object]:
    assert [e.type for e in received.events] == ["MessageRejected"]
    return dict(received.events[0].payload)


# -- patients --------------------------------------------------------------------------------------
@pytest.mark.parametrize("trigger", ["A01", "A04", "A08", "A28", "A31"])
def test_adt_registration_and_update_become_patient_updated(receiver: HL7Receiver, trigger: str) -> None:
    text = message(f"ADT^{trigger}", pid("P100", "Иванов^Иван^Иванович", "19800215", "M", issuer="ORG01"))
    payload = only(receiver.receive(text.encode()), "PatientUpdated")
    assert payload == {
        "PatientID": "P100",
        "IssuerOfPatientID": "ORG01",
        "PatientName": "Иванов^Иван^Иванович",
        "PatientBirthDate": "19800215",
        "PatientSex": "M",
        "source": "hl7",
    }


def test_the_event_names_the_mis_as_actor_and_its_organisation(receiver: HL7Receiver) -> None:
    received = receiver.receive(message("ADT^A08", pid("P100")).encode(), "10.0.0.5:40000")
    envelope = received.events[0].envelope
    assert (envelope.actor.user, envelope.actor.role) == ("hl7:MIS@ORG01", "mis")
    assert envelope.organisation == "ORG01"
    assert envelope.aggregate_id == "P100"


def test_adt_merge_becomes_patients_merged(receiver: HL7Receiver) -> None:
    text = message("ADT^A40^ADT_A39", pid("NEW1", issuer="ORG01"), segment("MRG", {1: "OLD1^^^ORG01"}))
    payload = only(receiver.receive(text.encode()), "PatientsMerged")
    assert payload["PatientID"] == "NEW1" and payload["PriorPatientID"] == "OLD1"
    assert payload["PriorIssuerOfPatientID"] == "ORG01"


def test_merge_without_mrg_is_refused(receiver: HL7Receiver) -> None:
    received = receiver.receive(message("ADT^A40", pid("NEW1")).encode())
    assert ack_fields(received.ack)["MSA-1"] == "AE"
    assert rejected(received)["reason"] == "missing-mrg"


# -- orders ----------------------------------------------------------------------------------------
CHEST_CT = "A06.09.005^КТ органов грудной полости^RGC"


def orm(control: str = "NW", placer: str = "PL1", **extra: str) -> str:
    return message(
        "ORM^O01",
        pid("P100", "Петров^Пётр", "19700101", "F"),
        segment("ORC", {1: control, 2: placer, 7: "^^^20261201093000^^S", 12: "D123^Сидоров^Сидор^Петрович",
                        16: "^wrong patient", 21: "Городская больница^^^^^^^^^ORG02"}),
        segment("OBR", {1: "1", 2: placer, 4: CHEST_CT, 18: extra.get("accession", ""), 21: extra.get("station", ""),
                        24: "CT"}),
        version="2.3",
    )  # fmt: skip


def test_orm_new_order_becomes_order_placed(receiver: HL7Receiver) -> None:
    payload = only(receiver.receive(orm(accession="ACC1", station="CT_ROOM1").encode()), "OrderPlaced")
    assert payload["placer_order_number"] == "PL1"
    assert payload["AccessionNumber"] == "ACC1"
    assert payload["PatientID"] == "P100" and payload["PatientName"] == "Петров^Пётр"
    assert (payload["ProcedureCodeValue"], payload["ProcedureCodeMeaning"], payload["ProcedureCodingScheme"]) == (
        "A06.09.005",
        "КТ органов грудной полости",
        "RGC",
    )
    assert payload["Modality"] == "CT" and payload["ScheduledStationAETitle"] == "CT_ROOM1"
    # no offset in the message: the region's local time (Moscow, UTC+3)
    assert payload["ScheduledProcedureStepStartDateTime"] == datetime(2026, 12, 1, 6, 30, tzinfo=UTC)
    assert payload["priority"] == "STAT"
    assert payload["ReferringPhysicianName"] == "Сидоров^Сидор^Петрович"
    assert payload["ReferringPhysicianCode"] == "D123"
    assert payload["referring_organisation"] == "ORG02"
    assert payload["placer_application"] == "MIS@ORG01"
    assert str(payload["StudyInstanceUID"]).startswith("2.25.")


def test_the_filler_assigns_the_same_accession_and_study_uid_every_time(receiver: HL7Receiver) -> None:
    first = only(receiver.receive(orm().encode()), "OrderPlaced")
    again = only(receiver.receive(orm().encode()), "OrderPlaced")
    other = only(receiver.receive(orm(placer="PL2").encode()), "OrderPlaced")
    assert first["AccessionNumber"] == again["AccessionNumber"] != other["AccessionNumber"]
    assert first["StudyInstanceUID"] == again["StudyInstanceUID"] != other["StudyInstanceUID"]
    assert len(str(first["AccessionNumber"])) <= 16
    cancelled = only(receiver.receive(orm("CA").encode()), "OrderCancelled")
    assert cancelled == {
        "placer_order_number": "PL1",
        "AccessionNumber": first["AccessionNumber"],
        "reason": "wrong patient",
        "placer_application": "MIS@ORG01",
    }


def test_omi_takes_the_ipc_segment(receiver: HL7Receiver) -> None:
    text = message(
        "OMI^O23^OMI_O23",
        pid("P101", "Smith^John"),
        segment("ORC", {1: "NW", 2: "PL9"}),
        segment("TQ1", {7: "20261201100000+0500", 9: "R"}),
        segment("OBR", {1: "1", 2: "PL9", 4: "X1^Chest^L"}),
        segment("IPC", {1: "ACC2", 2: "RP2", 3: "1.2.826.0.1.3680043.2.1", 4: "SPS2", 5: "MR", 9: "MR01"}),
    )
    payload = only(receiver.receive(text.encode()), "OrderPlaced")
    assert (payload["AccessionNumber"], payload["RequestedProcedureID"], payload["ScheduledProcedureStepID"]) == (
        "ACC2",
        "RP2",
        "SPS2",
    )
    assert payload["StudyInstanceUID"] == "1.2.826.0.1.3680043.2.1"
    assert (payload["Modality"], payload["ScheduledStationAETitle"]) == ("MR", "MR01")
    start = payload["ScheduledProcedureStepStartDateTime"]
    assert start == datetime(2026, 12, 1, 10, 0, tzinfo=timezone(timedelta(hours=5)))


@pytest.mark.parametrize(
    ("orc", "reason", "location"),
    [
        ({1: "NW"}, "missing-placer-order-number", "ORC^1^2"),
        ({1: "ZZ", 2: "PL1"}, "unsupported-order-control", "ORC^1^1"),
    ],
)
def test_broken_orders_are_refused_with_the_field(
    receiver: HL7Receiver, orc: dict[int, str], reason: str, location: str
) -> None:
    text = message("ORM^O01", pid("P1"), segment("ORC", orc), segment("OBR", {1: "1"}))
    received = receiver.receive(text.encode())
    fields = ack_fields(received.ack)
    assert fields["MSA-1"] == "AE" and fields["MSA-2"] == "MSG1"
    assert rejected(received)["reason"] == reason
    assert location.replace("^1^", "-") == rejected(received)["error_location"]


def test_an_order_without_pid_is_refused(receiver: HL7Receiver) -> None:
    received = receiver.receive(message("ORM^O01", segment("ORC", {1: "NW", 2: "PL1"})).encode())
    assert received.ack_code == "AE" and rejected(received)["reason"] == "missing-pid"


# -- results ---------------------------------------------------------------------------------------
def oru(status: str, conclusion: str = "Без патологии", accession: str = "ACC9", study: str = "") -> str:
    observations = [
        segment("OBX", {1: "1", 2: "TX", 3: "GDT^Описание", 5: "Лёгкие без очагов~Сердце не расширено"}),
        segment("OBX", {1: "2", 2: "TX", 3: "IMP^Заключение", 5: conclusion}),
    ]
    if study:
        observations.append(segment("OBX", {1: "3", 2: "UI", 3: "110180^Study Instance UID^DCM", 5: study}))
    return message(
        "ORU^R01",
        pid("P100"),
        segment("OBR", {1: "1", 2: "PL1", 3: "F1", 4: "X^Y", 18: accession, 25: status, 32: "D9&Врачев&Иван"}),
        *observations,
    )


def test_final_result_is_a_signed_report(receiver: HL7Receiver, reports: Reports) -> None:
    received = receiver.receive(oru("F").encode())
    reports.record(received)
    assert received.ack_code == "AA"
    drafted, signed = received.events
    assert (drafted.type, signed.type) == ("ReportDrafted", "ReportSigned")
    assert drafted["StudyInstanceUID"] == STUDY and drafted["AccessionNumber"] == "ACC9"
    assert drafted["protocol_text"] == "Лёгкие без очагов\nСердце не расширено"
    assert drafted["conclusion_text"] == "Без патологии"
    assert drafted["source"] == "hl7" and signed["source"] == "hl7"
    assert signed["signer"] == {"code": "D9", "name": "Врачев^Иван"}
    assert signed["signed_at"] == NOW  # the archive's clock
    # the same result again (its ACK was lost): nothing new
    again = receiver.receive(oru("F").encode())
    assert again.ack_code == "AA" and again.events == ()
    # a correction amends the signed report, keeping before and after
    corrected = receiver.receive(oru("C", conclusion="Очаг в S6 справа").encode())
    assert [e.type for e in corrected.events] == ["ReportAmended"]
    amended = corrected.events[0]
    assert (amended["conclusion_before"], amended["conclusion_after"]) == ("Без патологии", "Очаг в S6 справа")


def test_preliminary_then_final_edits_and_signs_the_draft(receiver: HL7Receiver, reports: Reports) -> None:
    first = receiver.receive(oru("P", conclusion="Предварительно").encode())
    reports.record(first)
    assert [e.type for e in first.events] == ["ReportDrafted"]
    final = receiver.receive(oru("F").encode())
    reports.record(final)
    assert [e.type for e in final.events] == ["ReportEdited", "ReportSigned"]
    assert final.events[1]["revision"] == 2 and final.events[1]["conclusion_text"] == "Без патологии"
    late = receiver.receive(oru("P", conclusion="Другое").encode())
    assert late.ack_code == "AE" and rejected(late)["reason"] == "report-signed"


def test_a_result_names_its_study_or_an_accession_the_archive_knows(receiver: HL7Receiver) -> None:
    named = receiver.receive(oru("F", accession="NEW7", study="1.2.3.4.5").encode())
    assert named.ack_code == "AA" and named.events[0]["StudyInstanceUID"] == "1.2.3.4.5"
    unknown = receiver.receive(oru("F", accession="NOPE").encode())
    fields = ack_fields(unknown.ack)
    assert (fields["MSA-1"], fields["ERR-3"]) == ("AE", "204")
    assert "NOPE" in fields["ERR-8"]


# -- what is refused before the body is read -------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "ack_code", "error_code", "reason"),
    [
        (message("ADT^A08", pid("P1"), version="2.1"), "AR", "203", "unsupported-version"),
        (message("ADT^A08", pid("P1"), version="3.0"), "AR", "203", "unsupported-version"),
        (message("SIU^S12", pid("P1")), "AR", "200", "unsupported-message-type"),
        (message("ADT^A03", pid("P1")), "AR", "201", "unsupported-event"),
        (message("ADT^A08", pid("P1"), processing="T"), "AR", "202", "training-message"),
        (message("ADT^A08", segment("PID", {5: "Name"})), "AE", "101", "missing-patient-id"),
        (message("ADT^A08", pid("P1", birth_date="19801340")), "AE", "102", "invalid-date"),
        (message("ADT^A08", pid("P1"), charset="EBCDIC"), "AE", "103", "unsupported-charset"),
    ],
)
def test_bad_messages_get_a_negative_ack_with_the_reason(
    receiver: HL7Receiver, text: str, ack_code: str, error_code: str, reason: str
) -> None:
    received = receiver.receive(text.encode(), "10.1.1.1:5000")
    fields = ack_fields(received.ack)
    assert (fields["MSA-1"], fields["MSA-2"], fields["ERR-3"]) == (ack_code, "MSG1", error_code)
    event = rejected(received)
    assert (event["reason"], event["ack_code"], event["error_code"]) == (reason, ack_code, int(error_code))
    assert event["peer_address"] == "10.1.1.1:5000" and event["control_id"] == "MSG1"
    assert received.events[0].envelope.aggregate_id == "MIS@ORG01"


def test_not_hl7_at_all_is_refused(receiver: HL7Receiver) -> None:
    received = receiver.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ack_fields(received.ack)["MSA-1"] == "AR"
    assert rejected(received)["reason"] == "malformed"


# -- character sets --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("declared", "codec"), [("CP1251", "cp1251"), ("8859/5", "iso8859-5"), ("UNICODE UTF-8", "utf-8")]
)
def test_cyrillic_in_the_declared_character_set(receiver: HL7Receiver, declared: str, codec: str) -> None:
    text = message("ADT^A08", pid("P200", "Сидорова^Анна^Юрьевна"), charset=declared)
    received = receiver.receive(text.encode(codec))
    assert only(received, "PatientUpdated")["PatientName"] == "Сидорова^Анна^Юрьевна"
    assert read_header(received.ack.strip(b"\x0b\x1c\r")).charset == declared  # the ACK says how it is written


def test_bytes_invalid_in_the_declared_set_are_refused_not_guessed(receiver: HL7Receiver) -> None:
    text = message("ADT^A08", pid("P200", "Сидорова^Анна"), charset="UNICODE UTF-8").encode("cp1251")
    received = receiver.receive(text)
    fields = ack_fields(received.ack)
    assert (fields["MSA-1"], fields["ERR-3"]) == ("AE", "102")
    assert rejected(received)["reason"] == "broken-encoding"


def test_the_configured_default_reads_messages_that_declare_nothing(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "events.db")
    log.ensure_topics(archive_topics(1))
    try:
        receiver = HL7Receiver(log, default_charset=CHARSETS["CP1251"])
        text = message("ADT^A08", pid("P300", "Кузнецов^Олег")).encode("cp1251")
        assert only(receiver.receive(text), "PatientUpdated")["PatientName"] == "Кузнецов^Олег"
    finally:
        log.close()


def test_every_answer_is_durable_in_the_log(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "events.db")
    log.ensure_topics(archive_topics(1))
    try:
        receiver = HL7Receiver(log)
        receiver.receive(message("SIU^S12").encode())
        records = [r for p in log.partitions(ORDERS) for r in log.read(ORDERS, p)]
        assert [decode(r.value).type for r in records] == ["MessageRejected"]
    finally:
        log.close()


def test_when_the_log_cannot_record_the_answer_is_ae_207_and_no_claim(tmp_path: Path) -> None:
    log = EmbeddedEventLog(tmp_path / "events.db")
    log.ensure_topics(archive_topics(1))
    receiver = HL7Receiver(log)
    log.close()  # appends now fail
    received = receiver.receive(message("ADT^A08", pid("P1")).encode())
    fields = ack_fields(received.ack)
    assert (fields["MSA-1"], fields["ERR-3"]) == ("AE", "207") and received.events == ()
