"""Storage commitment results the delivery waits for.

The delivery sends N-ACTION (request storage commitment) on its own association; CAMI answers with an
N-EVENT-REPORT on a *new* association to the agent's router SCP (PS3.4 Annex J). The router hands the
report to :meth:`CommitmentWaiter.report`; the delivery, blocked in :meth:`CommitmentWaiter.wait`,
gets it by transaction UID. A report that arrives before anyone waits is kept (bounded) for its waiter.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

#: reports kept for transactions nobody waits for (yet); the oldest go first
REPORTS_KEPT = 1000


@dataclass(frozen=True)
class CommitmentReport:
    transaction_uid: str
    #: (SOPClassUID, SOPInstanceUID) CAMI committed
    committed: tuple[tuple[str, str], ...] = ()
    #: (SOPClassUID, SOPInstanceUID, FailureReason) CAMI could not commit
    failed: tuple[tuple[str, str, int], ...] = field(default=())


class CommitmentWaiter:
    """Meeting point of the router (which receives reports) and the delivery (which awaits them)."""

    def __init__(self) -> None:
        self._reports: OrderedDict[str, CommitmentReport] = OrderedDict()
        self._arrived = threading.Condition()

    def report(self, report: CommitmentReport) -> None:
        with self._arrived:
            self._reports[report.transaction_uid] = report
            while len(self._reports) > REPORTS_KEPT:
                self._reports.popitem(last=False)
            self._arrived.notify_all()

    def wait(self, transaction_uid: str, timeout: float) -> CommitmentReport | None:
        """The report for ``transaction_uid``, or None when none came within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while transaction_uid not in self._reports:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._arrived.wait(left)
            return self._reports.pop(transaction_uid)
