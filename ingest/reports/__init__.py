"""Reports (the radiologist's protocol and conclusion) and their lifecycle (GOST R 52636).

* :mod:`~ingest.reports.rules`: who may do what to a report in which state, and what each event does
  to it (pure functions).
* :mod:`~ingest.reports.store`: :class:`ReportStore`, each report's state as the log says it is.
* :mod:`~ingest.reports.fold`: the fold of ``cami.reports`` into that store (projection + sink).
* :mod:`~ingest.reports.service`: :class:`ReportService`, commands -> durable events.
* :mod:`~ingest.reports.documents`: DICOM SR and encapsulated-PDF documents arriving on the ingest
  path become report events (:class:`DocumentReportHook`).

Why under ingest/ and not projections/: the report store is the write model's state, not a read
model. The service checks every command against it synchronously before it publishes an event; it
is folded from the log only so that it survives restarts and sees other nodes' reports.
"""

from ingest.reports.documents import DocumentReportHook
from ingest.reports.rules import (
    Author,
    ReportError,
    ReportNotFound,
    ReportState,
)
from ingest.reports.service import ReportService
from ingest.reports.store import ReportStore

__all__ = [
    "Author",
    "DocumentReportHook",
    "ReportError",
    "ReportNotFound",
    "ReportService",
    "ReportState",
    "ReportStore",
]
