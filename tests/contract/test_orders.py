"""The orders read model on both warehouse backends (chdb and clickhouse-connect over HTTP): orders
as the MIS's HL7 messages make them, cancellations and MPPS steps; redelivery and a rebuild give
the same rows; the worklist lists what a modality may still perform, and an order's state says
whether it was cancelled and where its procedure step is."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7

from ingest.hl7.messages import Context, Sender, interpret
from ingest.hl7.wire import read_header
from projections.orders.fold import Orders
from projections.orders.queries import order, steps, worklist
from projections.sinks import WarehouseSink
from projections.warehouse import Warehouse
from schemas.events import Actor, Event, new_event
from streams.processing import EmbeddedRunner
from tests.support.hl7 import message, pid, segment
from tests.support.projections import Redelivery, open_log, snapshot
from tests.support.warehouses import WarehouseTarget

CONTEXT = Context(
    Sender("MIS", "ORG01", "ORG01"), datetime(2026, 11, 30, tzinfo=UTC), UTC, lambda a: None, lambda r: None
)
DAY = datetime(2026, 12, 1, tzinfo=UTC)


def hl7_events(control: str, placer: str, accession: str, station: str, modality: str, hour: int) -> list[Event]:
    text = message(
        "OMI^O23",
        pid(f"P-{placer}", "Смирнова^Ольга"),
        segment("ORC", {1: control, 2: placer}),
        segment("TQ1", {7: f"20261201{hour:02d}0000+0000"}),
        segment("OBR", {1: "1", 2: placer, 4: "A06^КТ^RGC"}),
        segment("IPC", {1: accession, 2: "RP", 3: f"1.2.3.{placer[-1]}", 4: "SPS", 5: modality, 9: station}),
    )
    return interpret(hl7.parse(text), read_header(text.encode()), CONTEXT)


def step(uid: str, status: str, **fields: Any) -> Event:
    payload = {
        "AffectedSOPInstanceUID": uid,
        "PerformedProcedureStepStatus": status,
        "StudyInstanceUID": fields.get("study"),
        "AccessionNumber": fields.get("accession"),
        "PatientID": None,
        "Modality": "CT",
        "PerformedStationAETitle": "CT1",
        "PerformedProcedureStepStartDateTime": DAY,
        "PerformedProcedureStepEndDateTime": fields.get("ended"),
        "number_of_series": fields.get("series", 0),
        "number_of_instances": fields.get("instances", 0),
        "discontinuation_reason": None,
    }
    return new_event(
        "ProcedureStepChanged", payload, aggregate_id=uid, source_node="CT1", actor=Actor("CT1", "modality")
    )


EVENTS = [
    *hl7_events("NW", "PL1", "A1", "CT1", "CT", 9),
    *hl7_events("NW", "PL2", "A2", "CT1", "CT", 10),
    *hl7_events("NW", "PL3", "A3", "MR1", "MR", 8),
    *hl7_events("NW", "PL4", "A4", "CT1", "CT", 11),
    *hl7_events("CA", "PL2", "A2", "CT1", "CT", 10),  # cancelled
    *hl7_events("NW", "PL5", "A5", "CT1", "CT", 12),
    *hl7_events("CA", "PL5", "A5", "CT1", "CT", 12),
    *hl7_events("XO", "PL5", "A5", "CT1", "CT", 13),  # placed again after its cancellation
    step("1.9.1", "IN PROGRESS", accession="A1", study="1.2.3.1"),
    step("1.9.1", "COMPLETED", accession="A1", study="1.2.3.1", ended=DAY, series=2, instances=40),
    step("1.9.4", "IN PROGRESS", study="1.2.3.4"),  # linked by study UID only
]


def figures(warehouse: Warehouse) -> None:
    ct = worklist(warehouse, station_ae_title="CT1")
    assert [(r["accession_number"], r["step_status"]) for r in ct] == [("A4", "IN PROGRESS"), ("A5", "")]
    assert [r["accession_number"] for r in worklist(warehouse, modality="MR")] == ["A3"]
    assert worklist(warehouse, start_from=DAY.replace(hour=12), start_to=DAY.replace(hour=23)) != []
    assert [r["accession_number"] for r in worklist(warehouse, start_to=DAY.replace(hour=11))] == ["A3", "A4"]
    cancelled = order(warehouse, "A2")
    assert cancelled is not None and cancelled["cancelled"] and cancelled["patient_name"] == "Смирнова^Ольга"
    assert (cancelled["placer_order_number"], cancelled["placer_application"]) == ("PL2", "MIS@ORG01")
    again = order(warehouse, "A5")
    assert again is not None and not again["cancelled"]
    done = order(warehouse, "A1")
    assert done is not None and done["step_status"] == "COMPLETED"
    (performed,) = steps(warehouse, "A1", "1.2.3.1")
    assert (performed["status"], performed["series"], performed["instances"]) == ("COMPLETED", 2, 40)
    assert order(warehouse, "NOPE") is None


def test_orders_redelivery_rebuild_and_the_worklist(warehouse_target: WarehouseTarget, tmp_path: Path) -> None:
    """Fed once; everything again under another group; then rebuilt from offset 0 into dropped
    tables: the same rows (FINAL) and the same answers each time."""
    warehouse = warehouse_target.open()
    log = open_log(tmp_path, EVENTS)
    try:
        sink = WarehouseSink(warehouse, Orders.ddl)
        EmbeddedRunner(log, [(Orders(), sink)], batch_size=4).catch_up()
        first = snapshot(warehouse, Orders.tables)
        assert {t: len(rows) for t, rows in first.items()} == {
            "orders": 5,
            "order_cancellations": 2,
            "procedure_steps": 3,
        }
        figures(warehouse)
        EmbeddedRunner(log, [(Redelivery(Orders(), "redelivery"), sink)], batch_size=3).catch_up()
        assert snapshot(warehouse, Orders.tables) == first
        figures(warehouse)
        for table in Orders.tables:
            warehouse.command(f"DROP TABLE {table}")
        rebuilt = WarehouseSink(warehouse, Orders.ddl)
        EmbeddedRunner(log, [(Redelivery(Orders(), "rebuild"), rebuilt)], batch_size=500).catch_up()
        assert snapshot(warehouse, Orders.tables) == first
        figures(warehouse)
    finally:
        log.close()
