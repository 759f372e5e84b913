"""Orders' status back to the MIS that placed them, over HL7 (ORM^O01, ORC-1 ``SC``).

:class:`OrderNotices` (pure) turns events into notices: (accession number, stage, when) --
``scheduled`` (OrderPlaced), ``cancelled`` (OrderCancelled), ``in-progress`` / ``discontinued``
(MPPS), ``images`` (an InstanceReceived naming the accession number), ``draft`` / ``signed``
(report events naming it). It is not a read model (nothing to rebuild): a runner of its own in
``cami serve`` drives it, its group starting at the log's end the first time.

:class:`StatusNotifier` is its sink: for each
order a batch advanced, the furthest stage it reached, sent to the order's MIS when the senders
file lists it as a ``[[mis]]`` and the stage is further than the last one sent (a stage is sent
once, and never backwards). ORC-5 carries HL7 table 0038's order status:

==============  ======  =================================
stage           ORC-5   OBR-25 (result status)
==============  ======  =================================
scheduled       SC
in-progress     IP
images          A       (some results available)
draft           A       P (preliminary)
signed          CM      F (final)
cancelled       CA
discontinued    DC
==============  ======  =================================

Delivery is at least once: a notice counts as sent when the MIS answers AA (or AR: it will
never take it, so sending again would not help; logged); no answer, a closed connection or AE
raises, and the runner retries the batch from the same position. What was sent is kept in a
small SQLite file so a restart does not send it again. The connection is a plain socket with a
timeout (the ``hl7`` library's client has none); the framing is MLLP's.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import hl7

from ingest.senders import MisEndpoint
from schemas.events import Event
from streams.processing import Row, Source
from streams.topics import DICOM, ORDERS, REPORTS

log = logging.getLogger("cami.hl7.outbound")

START, END = b"\x0b", b"\x1c\r"

#: stage -> (ORC-5 order status, OBR-25 result status)
STATUS_CODES = {
    "scheduled": ("SC", ""),
    "in-progress": ("IP", ""),
    "images": ("A", ""),
    "draft": ("A", "P"),
    "signed": ("CM", "F"),
    "cancelled": ("CA", ""),
    "discontinued": ("DC", ""),
}
#: how far each stage is; a notice goes out only for a stage further than the last one sent
RANK = {"scheduled": 1, "in-progress": 2, "images": 3, "draft": 4, "signed": 5, "cancelled": 9, "discontinued": 9}
NOTICES = "order_notices"
_STEP_STAGES = {"IN PROGRESS": "in-progress", "DISCONTINUED": "discontinued"}
_REPORT_STAGES = {
    "ReportDrafted": "draft",
    "ReportEdited": "draft",
    "ReportSigned": "signed",
    "ReportAmended": "signed",
}


class OrderNotices:
    """Pure: an event -> the notice it makes, if any."""

    name = "order-notices"
    topics: Sequence[str] = (ORDERS, DICOM, REPORTS)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        p = event.payload
        stage: str | None
        if event.type == "OrderPlaced":
            stage = "scheduled"
        elif event.type == "OrderCancelled":
            stage = "cancelled"
        elif event.type == "ProcedureStepChanged":
            stage = _STEP_STAGES.get(p["PerformedProcedureStepStatus"])
        elif event.type == "InstanceReceived":
            stage = "images"
        else:
            stage = _REPORT_STAGES.get(event.type)
        accession = p.get("AccessionNumber")
        if stage is None or not accession:
            return []
        return [Row(NOTICES, {"accession_number": accession, "stage": stage, "at": event.envelope.recorded_at})]


class NoticeNotDelivered(Exception):
    """The MIS did not take a notice (no answer, AE): the batch is retried."""


def status_message(order: Mapping[str, Any], stage: str, *, control_id: str, now: datetime, sender: str) -> str:
    """The ORM^O01 status update for ``order`` at ``stage``, UTF-8 declared (MSH-18)."""
    application, _, facility = str(order["placer_application"]).partition("@")
    status, result = STATUS_CODES[stage]
    procedure = "^".join(
        [order.get("procedure_code") or "", order.get("procedure_meaning") or "", order.get("procedure_scheme") or ""]
    ).rstrip("^")
    obr = ["OBR", "1", order["placer_order_number"], order["accession_number"], procedure] + [""] * 13
    obr += [order["accession_number"]] + [""] * 6 + [result]
    segments = [
        "|".join(["MSH", "^~\\&", sender, sender, application, facility, now.strftime("%Y%m%d%H%M%S"), "",
                  "ORM^O01^ORM_O01", control_id, "P", "2.5", "", "", "", "", "", "UNICODE UTF-8"]),
        "|".join(["PID", "", "", order["patient_id"]]),
        "|".join(["ORC", "SC", order["placer_order_number"], order["accession_number"], "", status]),
        "|".join(obr).rstrip("|"),
    ]  # fmt: skip
    return "\r".join(segments) + "\r"


class SentNotices:
    """accession number -> the furthest stage sent (a SQLite file)."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS sent (accession TEXT PRIMARY KEY, stage TEXT NOT NULL, at TEXT)")
        self._lock = threading.Lock()

    def stage(self, accession: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT stage FROM sent WHERE accession = ?", (accession,)).fetchone()
        return str(row[0]) if row else None

    def mark(self, accession: str, stage: str, at: datetime) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO sent VALUES (?, ?, ?) ON CONFLICT (accession) DO UPDATE SET stage = excluded.stage,"
                " at = excluded.at",
                (accession, stage, at.isoformat()),
            )

    def close(self) -> None:
        self._db.close()


def send(endpoint: MisEndpoint, text: str, timeout: float) -> str:
    """One message over MLLP; the ACK's MSA-1 (AA, AE, AR). Raises when there is no ACK."""
    with socket.create_connection((endpoint.host, endpoint.port), timeout=timeout) as connection:
        connection.sendall(START + text.encode("utf-8") + END)
        answer = b""
        while not answer.endswith(END):
            chunk = connection.recv(65536)
            if not chunk:
                raise NoticeNotDelivered(f"{endpoint.application} closed the connection without an ACK")
            answer += chunk
    try:
        parsed = hl7.parse(answer.strip(b"\x0b\x1c\r\n").decode("utf-8", errors="replace"))
        return str(parsed.segment("MSA")(1))
    except Exception as exc:
        raise NoticeNotDelivered(f"{endpoint.application} answered something that is not an ACK: {exc}") from None


class StatusNotifier:
    def __init__(
        self,
        endpoints: Mapping[str, MisEndpoint],
        orders_of: Callable[[Sequence[str]], Mapping[str, Mapping[str, Any]]],
        sent: SentNotices,
        *,
        sender: str = "CAMI",
        timeout: float = 10.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.endpoints = endpoints
        self.orders_of = orders_of
        self.sent = sent
        self.sender = sender
        self.timeout = timeout
        self.clock = clock

    def write(self, rows: Sequence[Row]) -> None:
        furthest: dict[str, str] = {}
        for row in rows:
            accession, stage = str(row.values["accession_number"]), str(row.values["stage"])
            if RANK[stage] > RANK.get(furthest.get(accession, ""), 0):
                furthest[accession] = stage
        if not furthest or not self.endpoints:
            return
        orders = self.orders_of(sorted(furthest))
        for accession, stage in furthest.items():
            order = orders.get(accession)
            if order is None and stage in ("scheduled", "cancelled"):
                # an order's own event, read before the orders read model has it: try again soon
                raise NoticeNotDelivered(f"order {accession} is not in the orders read model yet")
            endpoint = self.endpoints.get(str(order["placer_application"])) if order else None
            if order is None or endpoint is None:
                continue  # images or a report of no order, or its MIS did not ask for updates
            if RANK[stage] <= RANK.get(self.sent.stage(accession) or "", 0):
                continue  # sent already (or further)
            now = self.clock()
            text = status_message(order, stage, control_id=uuid.uuid4().hex[:20], now=now, sender=self.sender)
            try:
                code = send(endpoint, text, self.timeout)
            except OSError as exc:
                raise NoticeNotDelivered(f"{endpoint.application} at {endpoint.host}:{endpoint.port}: {exc}") from exc
            if code == "AE":
                raise NoticeNotDelivered(f"{endpoint.application} answered AE to the {stage} of {accession}")
            if code != "AA":
                log.warning("%s refused (%s) the %s status of order %s", endpoint.application, code, stage, accession)
            self.sent.mark(accession, stage, now)
