"""Orders' status back to the MIS that asked for it, over HL7: an MIS's MLLP listener (the ``hl7``
library's server) gets an ORM^O01 status update as each of its orders advances -- once per stage,
only forward, none for another MIS's orders or for history -- and a notice the MIS did not take
(it was down) is sent when it is back, not lost."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from ingest.hl7.outbound import OrderNotices, SentNotices, StatusNotifier
from ingest.hl7.receiver import HL7Receiver
from ingest.senders import MisEndpoint
from projections.orders.fold import Orders
from projections.orders.queries import orders_by_accession
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse, open_warehouse
from schemas.events import Actor, new_event
from streams.embedded import EmbeddedEventLog
from streams.processing import EmbeddedRunner
from streams.publisher import publish
from streams.topics import archive_topics
from tests.support.hl7 import Mis, message, pid, segment

STUDY = "1.2.826.0.1.3680043.8.498.77"


@pytest.fixture()
def archive(tmp_path: Path) -> Iterator[tuple[EmbeddedEventLog, Warehouse]]:
    log = EmbeddedEventLog(tmp_path / "events.db")
    log.ensure_topics(archive_topics(2))
    warehouse = open_warehouse(f"chdb://{tmp_path / 'clickhouse'}")
    try:
        yield log, warehouse
    finally:
        warehouse.close()
        log.close()


def order(control: str, placer: str, accession: str, application: str = "MIS") -> bytes:
    return message(
        "OMI^O23",
        pid(f"P-{placer}", "Смирнова^Ольга"),
        segment("ORC", {1: control, 2: placer}),
        segment("OBR", {1: "1", 2: placer, 4: "A06^КТ^RGC"}),
        segment("IPC", {1: accession, 2: "RP", 3: STUDY if accession == "N1" else "", 4: "SPS", 5: "CT", 9: "CT1"}),
        application=application,
        control_id=f"{control}{placer}",
    ).encode()


def signed_result(accession: str) -> bytes:
    return message(
        "ORU^R01",
        pid("P-PL1"),
        segment("OBR", {1: "1", 2: "PL1", 18: accession, 25: "F", 32: "D9&Врачев&Иван"}),
        segment("OBX", {1: "1", 2: "TX", 3: "IMP^Заключение", 5: "Норма"}),
        segment("OBX", {1: "2", 2: "ST", 3: "110180^Study Instance UID^DCM", 5: STUDY}),
        control_id="R1",
    ).encode()


def test_the_mis_hears_each_stage_of_its_orders_once(
    archive: tuple[EmbeddedEventLog, Warehouse], tmp_path: Path
) -> None:
    log, warehouse = archive
    receiver = HL7Receiver(log)
    publish_all = receiver.receive
    assert publish_all(order("NW", "PL0", "N0")).ack_code == "AA"  # history: placed before the notifier began
    orders = EmbeddedRunner(log, [(Orders(), WarehouseSink(warehouse, Orders.ddl))])

    with Mis() as mis:
        endpoints = {"MIS@ORG01": MisEndpoint("MIS@ORG01", "127.0.0.1", mis.port)}

        def notifier(state: Path, start_at_end: bool) -> EmbeddedRunner:
            processor = OrderNotices()
            if start_at_end:
                ends = {t: log.end_offsets(t) for t in processor.topics}
                log.commit_offsets("cami.order-notices", {(t, p): o for t, per in ends.items() for p, o in per.items()})
            sink = StatusNotifier(
                endpoints, lambda accessions: orders_by_accession(warehouse, accessions), SentNotices(state)
            )
            return EmbeddedRunner(log, [(processor, sink)])

        notices = notifier(tmp_path / "sent.db", start_at_end=True)
        for text in (order("NW", "PL1", "N1"), order("NW", "PL2", "N2", application="OTHER"), order("NW", "PL3", "N3")):
            assert publish_all(text).ack_code == "AA"
        orders.catch_up()
        notices.catch_up(timeout=30)
        assert mis.statuses() == [("N1", "SC", ""), ("N3", "SC", "")]  # not N0 (history), not N2 (another MIS)
        assert str(mis.received[0].segment("MSH")(9)) == "ORM^O01^ORM_O01"
        assert str(mis.received[0].segment("ORC")(2)) == "PL1"

        performed = {"AffectedSOPInstanceUID": "1.9.9", "PerformedProcedureStepStatus": "IN PROGRESS",
                     "AccessionNumber": "N1", "number_of_series": 0, "number_of_instances": 0}  # fmt: skip
        publish(log, new_event("ProcedureStepChanged", performed, aggregate_id="1.9.9", source_node="CT1",
                               actor=Actor("CT1", "modality")))  # fmt: skip
        assert publish_all(order("CA", "PL3", "N3")).ack_code == "AA"
        orders.catch_up()
        notices.catch_up(timeout=30)
        assert mis.statuses()[2:] == [("N1", "IP", ""), ("N3", "CA", "")]
        assert publish_all(signed_result("N1")).ack_code == "AA"
        notices.catch_up(timeout=30)
        assert mis.statuses()[4:] == [("N1", "CM", "F")]

        # everything read again from offset 0 with what was sent kept: nothing is sent twice (only
        # the order from before the notifier began, never sent, is news now)
        again = notifier(tmp_path / "sent.db", start_at_end=False)
        log.commit_offsets("cami.order-notices", {(t, p): 0 for t in OrderNotices.topics for p in log.partitions(t)})
        again.catch_up(timeout=30)
        assert mis.statuses()[5:] == [("N0", "SC", "")]
        port = mis.port

    # the MIS is down: the notice is not lost, the batch waits
    assert publish_all(order("NW", "PL4", "N4")).ack_code == "AA"
    orders.catch_up()
    with pytest.raises(Exception, match="MIS@ORG01"):
        notices.catch_up(timeout=2)
    with Mis(port) as back:
        notices.catch_up(timeout=30)
        assert back.statuses() == [("N4", "SC", "")]


def test_a_notice_needs_its_order_in_the_read_model(
    archive: tuple[EmbeddedEventLog, Warehouse], tmp_path: Path
) -> None:
    """An order's own event read before the orders read model has it is retried, not dropped."""
    log, warehouse = archive
    with Mis() as mis:
        sink = StatusNotifier(
            {"MIS@ORG01": MisEndpoint("MIS@ORG01", "127.0.0.1", mis.port)},
            lambda accessions: orders_by_accession(warehouse, accessions),
            SentNotices(tmp_path / "sent.db"),
            clock=lambda: datetime(2026, 12, 1, tzinfo=UTC),
        )
        WarehouseSink(warehouse, Orders.ddl)  # the tables exist, empty
        assert HL7Receiver(log).receive(order("NW", "PL7", "N7")).ack_code == "AA"
        notices = EmbeddedRunner(log, [(OrderNotices(), sink)])
        with pytest.raises(Exception, match="not in the orders read model yet"):
            notices.catch_up(timeout=1)
        EmbeddedRunner(log, [(Orders(), WarehouseSink(warehouse, Orders.ddl))]).catch_up()
        notices.catch_up(timeout=30)
        assert mis.statuses() == [("N7", "SC", "")]
