"""The agent's end of storage commitment, standing alone: a pynetdicom SCP that takes CAMI's
N-EVENT-REPORT (Storage Commitment Push Model, on the new association CAMI opens as Annex J has it,
with the SCP/SCU role selection CAMI proposes) and hands it to a :class:`CommitmentWaiter`.

It is a real peer of CAMI's commitment service, for tests of the delivery that run without the
agent's router SCP."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from ingest.agent.commitment import CommitmentReport, CommitmentWaiter
from ingest.commitment import STORAGE_COMMITMENT_PUSH
from tests.support.servers import free_port


def report_of(info: Dataset) -> CommitmentReport:
    committed = tuple(
        (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID)) for i in info.get("ReferencedSOPSequence", [])
    )
    failed = tuple(
        (str(i.ReferencedSOPClassUID), str(i.ReferencedSOPInstanceUID), int(i.FailureReason))
        for i in info.get("FailedSOPSequence", [])
    )
    return CommitmentReport(str(info.TransactionUID), committed, failed)


class CommitmentReceiver:
    def __init__(self, ae_title: str, waiter: CommitmentWaiter, port: int | None = None):
        self.ae_title = ae_title
        self.waiter = waiter
        self.port = port or free_port()
        self.reports: list[CommitmentReport] = []
        self._server: Any = None

    def _on_report(self, event: Any) -> tuple[int, Dataset | None]:
        report = report_of(event.event_information)
        self.reports.append(report)
        self.waiter.report(report)
        return 0x0000, None

    def start(self) -> CommitmentReceiver:
        ae = AE(ae_title=self.ae_title)
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH, scu_role=True, scp_role=True)
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, self._on_report)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def __enter__(self) -> CommitmentReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
