"""Composition root: the one place that builds the archive's backends from configuration."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from api.config import Settings
from api.dicom.qr import qr_services
from ingest.commitment import StorageCommitment
from ingest.hl7.listener import MllpListener
from ingest.hl7.outbound import OrderNotices, SentNotices, StatusNotifier
from ingest.hl7.receiver import HL7Receiver
from ingest.instance_claims import instance_claims
from ingest.mpps import ProcedureSteps, StepProjection, StepStore, StepStoreSink
from ingest.pipeline import Ingestor
from ingest.reports import DocumentReportHook
from ingest.reports.rules import ReportError, ReportState
from ingest.reports.service import ReportService
from ingest.reports.store import ReportStore
from ingest.scp import StorageSCP
from ingest.senders import Senders, load_senders
from ingest.sop_index import SopIndex, SopIndexProjection, SopIndexSink
from ingest.tls import TlsConfigError, server_context
from projections.audit.fold import AuditTrail
from projections.audit.verify import ChainReport, verify_against_log, verify_chain
from projections.changes import ChangeNotifier
from projections.orders.queries import orders_by_accession
from projections.query_model.find import search_studies, study_of_accession
from projections.query_model.fold import QueryModel
from projections.query_model.store import QueryModelSink, QueryStore, open_query_store
from projections.rebuild_online import OnlineRebuilds
from projections.registry import ProjectionConfig, build
from projections.sinks import WarehouseSink
from projections.status import FAUST_GROUP, projection_lag
from projections.warehouse import Warehouse, open_warehouse
from schemas.organisations import OrganisationDirectory, load_organisations
from streams import EventLog, open_event_log
from streams.blobs import BlobStore, open_blob_store
from streams.log import Record
from streams.metrics import ArchiveMetrics
from streams.processing import EmbeddedRunner, Processor, Sink, group_id
from streams.topics import archive_topics


@dataclass
class Archive:
    settings: Settings
    event_log: EventLog
    blobs: BlobStore
    _warehouse: Warehouse | None = field(default=None, repr=False)
    _query_store: QueryStore | None = field(default=None, repr=False)
    _sop_index: SopIndex | None = field(default=None, repr=False)
    _ingestor: Ingestor | None = field(default=None, repr=False)
    _rebuilds: OnlineRebuilds | None = field(default=None, repr=False)
    _hl7_reports: ReportService | None = field(default=None, repr=False)
    #: this archive's Prometheus metrics (its own registry), served at /metrics
    metrics: ArchiveMetrics = field(default_factory=ArchiveMetrics, repr=False)
    #: signalled after the monitoring projection writes in this process (the dashboard's live stream)
    monitoring_changes: ChangeNotifier = field(default_factory=ChangeNotifier, repr=False)

    def __post_init__(self) -> None:
        self.event_log.on_append = self.metrics.appended

    @property
    def sop_index(self) -> SopIndex:
        if self._sop_index is None:
            self._sop_index = SopIndex(self.settings.home / "sop-index.db")
            # learn what other ingest nodes stored since this node last looked
            self.refresh_sop_index()
        return self._sop_index

    def refresh_sop_index(self) -> None:
        index = self.sop_index
        # the group carries the file's generation: a new file reads the log from offset 0
        projection = SopIndexProjection(index.projection_name(_node()))
        EmbeddedRunner(self.event_log, [(projection, SopIndexSink(index))]).catch_up(timeout=60)

    @property
    def ingestor(self) -> Ingestor:
        if self._ingestor is None:
            self._ingestor = Ingestor(
                self.blobs,
                self.event_log,
                self.sop_index,
                store_name=self.blob_store_name,
                refresh_index=self.refresh_sop_index,
                document_hooks=[DocumentReportHook(self.blob_store_name)],  # SR / PDF -> report events
                max_inflated_bytes=self.settings.max_inflated_bytes,
                on_outcome=self.metrics.ingested,
                claims=instance_claims(self.blobs),
            )
        return self._ingestor

    @property
    def blob_store_name(self) -> str:
        """Where blobs live, as events record it (the URL without credentials or options)."""
        return self.settings.blob_store_url.split("?", 1)[0]

    def senders(self) -> Senders:
        return load_senders(self.settings.senders_file)

    def organisations(self) -> OrganisationDirectory:
        """The regional directory (``CAMI_ORGANISATIONS``) completed by the senders' names."""
        directory = load_organisations(self.settings.organisations_file)
        senders = self.senders().senders.values()
        return directory.completed_by((sender.organisation, sender.name) for sender in senders)

    def storage_scp(self, port: int | None = None, tls_port: int | None = None) -> StorageSCP:
        """The DICOM services on the configured ports (``port``/``tls_port`` override them; 0
        picks a free one); the TLS port only when TLS is configured."""
        senders = self.senders()
        tls = self.settings.tls
        demanding = senders.demanding_certificates
        if demanding and tls.client_certificates == "none":  # nobody could ever meet those rules
            raise TlsConfigError(
                f"{self.settings.senders_file}: {', '.join(demanding)} must show a client certificate,"
                " but the archive asks for none: set CAMI_TLS_CERT, CAMI_TLS_KEY and CAMI_TLS_CA"
            )
        commitment = StorageCommitment(self.sop_index, self.blobs, senders, refresh_index=self.refresh_sop_index)
        step_store = StepStore(self.settings.home / "mpps.db")
        # the steps other ingest nodes recorded: folded from the log before a step is read
        step_projection = StepProjection(step_store.projection_name(_node()))
        step_runner = EmbeddedRunner(self.event_log, [(step_projection, StepStoreSink(step_store))])
        step_runner.catch_up(timeout=120)  # at start: a new file reads the whole topic once
        steps = ProcedureSteps(
            self.event_log,
            senders,
            step_store,
            ZoneInfo(self.settings.timezone),
            refresh=lambda: step_runner.catch_up(timeout=30),
        )
        return StorageSCP(
            self.ingestor,
            senders,
            self.event_log,
            host=self.settings.dicom_host,
            port=self.settings.dicom_port if port is None else port,
            commitment=commitment,
            procedure_steps=steps,
            # Query/Retrieve (and the modality worklist) on the same AE title and port
            extra=[
                qr_services(
                    lambda: self.warehouse,
                    lambda: self.query_store,
                    self.blobs,
                    self.event_log,
                    senders,
                    on_read=self.metrics.read,
                    zone=ZoneInfo(self.settings.timezone),
                )
            ],
            tls_port=self.settings.dicom_tls_port if tls_port is None else tls_port,
            ssl_context=server_context(tls) if tls.enabled else None,
            request_timeout=self.settings.dicom_request_timeout,
            max_associations=self.settings.dicom_max_associations,
            proxy_from=self.settings.dicom_proxy_from,
        )

    def hl7_listener(self, port: int | None = None) -> MllpListener | None:
        """The HL7 v2 (MLLP) port for the MIS (``port`` overrides CAMI_HL7_PORT; 0 picks a free
        one), or None when it is off. Results (ORU) go through a report store of its own."""
        port = self.settings.hl7_port if port is None else port
        if port is None:
            return None
        directory = self.organisations()
        if self._hl7_reports is None:
            self._hl7_reports = ReportService(
                ReportStore(self.settings.home / "reports-hl7.db"),
                self.event_log,
                node=f"{_node()}-hl7",
                source_node="hl7",
            )
        reports = self._hl7_reports

        def report_state(report_id: str) -> ReportState | None:
            try:
                return reports.get(report_id)
            except ReportError:
                return None

        def organisation_of(facility: str) -> str | None:
            found = directory.lookup(facility)
            return found.code if found is not None else None

        receiver = HL7Receiver(
            self.event_log,
            organisation_of=organisation_of,
            study_of_accession=lambda accession: study_of_accession(self.query_store, accession),
            report_state=report_state,
            zone=ZoneInfo(self.settings.timezone),
            default_charset=self.settings.hl7_charset,
            application=self.senders().ae_title,
        )
        return MllpListener(receiver, host=self.settings.hl7_host, port=port)

    def double_read(self, study_instance_uid: str) -> bool:
        """Whether the study is read twice: one of its modalities is in CAMI_DOUBLE_READ."""
        screened = self.settings.double_read_modalities
        if not screened:
            return False
        found = search_studies(self.query_store, study_uid=study_instance_uid, limit=1)
        return bool(found and set(found[0]["modalities"]) & set(screened))

    def order_notifier(self) -> EmbeddedRunner | None:
        """The runner that sends orders' status to the MIS listed as ``[[mis]]`` in the senders
        file (None: none asked). The first time it starts at the log's end: history is not news."""
        senders = self.senders()
        if not senders.mis or not self.settings.mis_notices:
            return None
        path = self.settings.home / "order-notices.db"
        fresh = not path.exists()
        processor = OrderNotices()
        if fresh:  # commit the offset after each partition's last record: the end itself
            marks = [
                Record(topic, partition, end - 1, b"", b"", 0)
                for topic in processor.topics
                for partition, end in self.event_log.end_offsets(topic).items()
                if end > 0
            ]
            if marks:
                with self.event_log.consumer(group_id(processor), processor.topics) as consumer:
                    consumer.commit(marks)
        notifier = StatusNotifier(
            senders.mis,
            lambda accessions: orders_by_accession(self.warehouse, accessions),
            SentNotices(path),
            sender=senders.ae_title,
        )
        return EmbeddedRunner(self.event_log, [(processor, notifier)])

    @property
    def warehouse(self) -> Warehouse:
        # opened on first use: chdb locks its directory, and not every command needs it
        if self._warehouse is None:
            self._warehouse = open_warehouse(self.settings.warehouse_url)
        return self._warehouse

    @property
    def query_store(self) -> QueryStore:
        """The row store QIDO-RS, C-FIND and the study lists read (``CAMI_QUERY_STORE``)."""
        if self._query_store is None:
            self._query_store = open_query_store(self.settings.query_store_url)
        return self._query_store

    @property
    def rebuilds(self) -> OnlineRebuilds:
        """Rebuilds while serving, in this process (which owns the warehouse and the query store)."""
        if self._rebuilds is None:
            self._rebuilds = OnlineRebuilds(self.event_log, lambda: self.warehouse, self.processors, self.own_sinks)
        return self._rebuilds

    @property
    def embedded_warehouse(self) -> bool:
        """Whether the read models live in the embedded ClickHouse (chdb), which one process owns.

        Who runs the projections follows from it, on either log: with the embedded warehouse the
        process that holds it (``cami serve``, else ``cami workers``) runs them in threads
        (:class:`EmbeddedRunner`, a consumer group per projection); with a ClickHouse server
        ``cami workers`` run them (Faust on Kafka, threads on the embedded log) and ``cami serve``
        only reads."""
        return self.settings.warehouse_url.partition(":")[0].lower() == "chdb"

    @property
    def runs_on_faust(self) -> bool:
        """The projections run as the Faust app (``cami workers`` on Kafka with a ClickHouse server)."""
        return self.event_log.backend == "kafka" and not self.embedded_warehouse

    def projection_group(self, processor: Processor) -> str:
        """The consumer group whose committed offsets say how far ``processor`` has got."""
        return FAUST_GROUP if self.runs_on_faust else group_id(processor)

    def projection_lag(self, names: Sequence[str] = ()) -> dict[str, dict[str, int]]:
        """Per projection and topic, the events appended but not yet applied."""
        return projection_lag(self.event_log, self.processors(names), self.projection_group)

    def audited_offsets(self) -> dict[str, dict[int, int]]:
        """Per topic and partition, how far the audit projection has committed (what the audit
        trail can be checked against)."""
        trail = AuditTrail()
        group = self.projection_group(trail)
        return {t: self.event_log.committed(group, t) for t in trail.topics}

    def verify_audit(self, record: str | None = None, *, against_log: bool = True) -> ChainReport:
        """The audit trail's hash chains recomputed from the stored entries and, ``against_log``,
        the log's events re-hashed against them (``cami audit verify``, ``GET /api/audit/verify``)."""
        if not against_log:
            return verify_chain(self.warehouse, record)
        return verify_against_log(self.warehouse, self.event_log, record, self.audited_offsets())

    def processors(self, names: Sequence[str] = ()) -> list[Processor]:
        return build(tuple(names), ProjectionConfig(pseudonym_key=self.settings.pseudonym_key))

    def own_sinks(self, processors: Sequence[Processor]) -> dict[str, QueryModelSink]:
        """The sinks of the projections whose tables live outside the warehouse (the query model
        in the query store), by projection name: the live runners and rebuilds use the same."""
        return {
            p.name: QueryModelSink(self.query_store, self.warehouse) for p in processors if isinstance(p, QueryModel)
        }

    def bindings(self, names: Sequence[str] = ()) -> list[tuple[Processor, Sink]]:
        bound: list[tuple[Processor, Sink]] = []
        processors = self.processors(names)
        own = self.own_sinks(processors)
        for processor in processors:
            changed = self.monitoring_changes.changed if processor.name == "monitoring" else None
            sink: Sink = own.get(processor.name) or WarehouseSink(
                self.warehouse, getattr(processor, "ddl", ()), on_write=changed
            )
            attach = getattr(processor, "attach", None)
            if attach is not None:  # a processor with state loads it from the tables it writes
                attach(self.warehouse)
            bound.append((processor, sink))
        return bound

    def close(self) -> None:
        if self._hl7_reports is not None:
            self._hl7_reports.close()
        if self._sop_index is not None:
            self._sop_index.close()
        self.event_log.close()
        self.blobs.close()
        if self._warehouse is not None:
            self._warehouse.close()
        if self._query_store is not None:
            self._query_store.close()


def _node() -> str:
    return socket.gethostname() or "local"


def bootstrap(settings: Settings | None = None, *, create: bool = True) -> Archive:
    """Open every backend named by ``settings``; with ``create``, make topics exist."""
    settings = settings or Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    event_log = open_event_log(settings.event_log_url)
    try:
        blobs = open_blob_store(settings.blob_store_url, settings.blob_store_env)
    except Exception:
        event_log.close()
        raise
    if create:
        try:
            event_log.ensure_topics(archive_topics(settings.partitions))
            blobs.ensure_ready()
        except Exception:
            event_log.close()
            blobs.close()
            raise
    return Archive(settings, event_log, blobs)
