"""``cami demo``: a synthetic region sent through the real Storage SCP, projected and reported.

1. A demo senders file ($CAMI_HOME/senders.toml, unless one exists) lists the region's
   organisations: their AE titles and regional codes.
2. The archive's own Storage SCP (``Archive.storage_scp``) starts in this process on a free port.
3. Every organisation's studies (``api.demo.synthetic``) go over the network with a pynetdicom SCU:
   one association per AE title, each instance in its own transfer syntax, as a local PACS would.
   Two deliberate mistakes show the refusals: an object without PatientID and a caller whose AE
   title is not in the senders file.
4. The embedded runner projects the events; the summary is read back from the event log (what
   the archive recorded, not what the demo sent).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.demo.synthetic import Organisation, SyntheticStudy, region, synthetic_region
from ingest.senders import Senders
from projections.status import projection_lag
from schemas.events import Actor, Event
from streams.processing import EmbeddedRunner, Row, Source, group_id
from streams.topics import DICOM

#: a calling AE title that no senders file lists: the demo shows that it is refused
UNKNOWN_AE_TITLE = "UNKNOWN_MOD"
#: the demo's deterministic region; a second run re-sends the same objects (all duplicates)
DEFAULT_SEED = 1
DEFAULT_STUDIES = 12


def senders_toml(organisations: Sequence[Organisation], archive_ae_title: str = "CAMI") -> str:
    """A senders file (see ``ingest.senders``) for the synthetic region."""
    lines = [
        "# Demo senders file written by `cami demo`: who may send to the archive.",
        "[archive]",
        f"ae_title = {json.dumps(archive_ae_title)}",
        "accept_unknown = false",
        'emergency_ae_title = "CAMI_URGENT"',
    ]
    for org in organisations:
        lines += [
            "",
            "[[sender]]",
            f"ae_title = {json.dumps(org.ae_title)}",
            f"organisation = {json.dumps(org.code)}",
            f"name = {json.dumps(org.name, ensure_ascii=False)}",
        ]
    return "\n".join(lines) + "\n"


def ensure_senders_file(path: Path, organisations: Sequence[Organisation]) -> bool:
    """Write the demo senders file if there is none; True when written."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(senders_toml(organisations), encoding="utf-8")
    tmp.replace(path)
    return True


# -- reading back what the archive recorded --------------------------------------------------------
@dataclass
class _Collector:
    """A processor + sink pair that keeps this run's cami.dicom events in memory.

    It keeps only events at or after the log's end as it was when this run began (``since``),
    whatever its consumer group (``cami.demo-arrivals``) had read before."""

    name: str = "demo-arrivals"
    topics: Sequence[str] = (DICOM,)
    events: list[Event] = field(default_factory=list)
    #: per partition, the first offset of this run (what was there before is not this run's)
    since: dict[int, int] = field(default_factory=dict)

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        if source.offset < self.since.get(source.partition, 0):
            return []
        return [Row("demo", {"event": event})]

    def write(self, rows: Sequence[Row]) -> None:
        self.events.extend(row.values["event"] for row in rows)


@dataclass
class _Sent:
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)
    bytes: int = 0
    instances: int = 0


@contextmanager
def quiet(*names: str) -> Iterator[None]:
    """Silence loggers while the demo makes its deliberate mistakes (it reports them itself)."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _instance_bytes(ds: Dataset) -> int:
    return len(ds.PixelData) if "PixelData" in ds else 0


def send_organisation(
    org_ae_title: str,
    instances: Sequence[Dataset],
    host: str,
    port: int,
    called_ae_title: str,
    progress: Progress | None = None,
    task: Any = None,
) -> _Sent:
    """One association from ``org_ae_title``; each instance in its own transfer syntax."""
    ae = AE(ae_title=org_ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in instances})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    sent = _Sent()
    assoc = ae.associate(host, port, ae_title=called_ae_title)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "failed"
        sent.failures.append({"ae_title": org_ae_title, "association": reason, "instances": len(instances)})
        if progress is not None:
            progress.advance(task, sum(_instance_bytes(ds) for ds in instances))
        return sent
    try:
        for ds in instances:
            response = assoc.send_c_store(ds)
            status = int(response.Status) if "Status" in response else -1
            sent.statuses[status] += 1
            sent.instances += 1
            size = _instance_bytes(ds)
            if status in (0x0000, 0xB000, 0xB007, 0xB006):
                sent.bytes += size
            else:
                sent.failures.append(
                    {
                        "ae_title": org_ae_title,
                        "sop_instance_uid": str(ds.SOPInstanceUID),
                        "status": f"0x{status:04X}",
                        "error_comment": str(response.get("ErrorComment", "")),
                    }
                )
            if progress is not None:
                progress.advance(task, size)
    finally:
        assoc.release()
    return sent


def _without_patient_id(study: SyntheticStudy) -> Dataset:
    """A copy of one instance with no PatientID (and its own UID): the archive must refuse it."""
    bad = copy.deepcopy(study.instances[0])
    del bad.PatientID
    bad.SOPInstanceUID = generate_uid(entropy_srcs=["demo-no-patient-id", study.study_uid])
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    return bad


def _publish_reports(archive: Archive, studies: Sequence[SyntheticStudy]) -> dict[str, Any]:
    """Each written report is drafted and signed by its doctor through ``ingest.reports``
    (ReportDrafted, ReportSigned; the signing time is the archive's clock). Studies that
    already have a report (a second demo run) are left alone."""
    from ingest.reports import Author, ReportService, ReportStore

    service = ReportService(
        ReportStore(archive.settings.home / "reports-demo.db"), archive.event_log, node="demo", source_node="demo"
    )
    drafted = signed = already = 0
    try:
        for study in studies:
            if study.report is None:
                continue
            if service.for_study(study.study_uid):
                already += 1
                continue
            code, name, protocol, conclusion = study.report
            author = Author(
                Actor(f"doctor-{code[:11]}", "radiologist"), {"code": code, "name": name}, study.organisation.code
            )
            report = service.create(study.study_uid, protocol, conclusion, author)
            drafted += 1
            service.sign(report.report_id, author)
            signed += 1
    finally:
        service.close()
    written = sum(1 for s in studies if s.report is not None)
    return {
        "written": written,
        "drafted": drafted,
        "signed": signed,
        "already_reported": already,
        "without_report": len(studies) - written,
    }


def run_demo(
    settings: Settings, console: Console, *, seed: int = DEFAULT_SEED, studies: int = DEFAULT_STUDIES
) -> dict[str, Any]:
    started = time.monotonic()
    organisations = region(seed)
    wrote_senders = ensure_senders_file(settings.senders_file, organisations)
    archive = bootstrap(settings)
    try:
        senders = archive.senders()
        unlisted = [o.ae_title for o in organisations if senders.lookup(o.ae_title) is None]
        if unlisted:
            console.print(
                f"[yellow]{settings.senders_file} does not list {', '.join(unlisted)}: "
                "their studies will be refused[/yellow]"
            )
        generated = synthetic_region(seed, studies)
        by_org: dict[str, list[Dataset]] = defaultdict(list)
        for study in generated:
            by_org[study.organisation.ae_title].extend(study.instances)
        bad = _without_patient_id(next(s for s in generated if s.transfer_syntax == ExplicitVRLittleEndian))
        first_ae = generated[0].organisation.ae_title

        collector = _Collector(since=dict(archive.event_log.end_offsets(DICOM)))
        scp = archive.storage_scp(port=0)
        scp.start()
        try:
            sent = _send_all(console, scp.host, scp.port, senders, by_org)
            with quiet("pynetdicom", "cami.scp", "cami.ingest"):
                refused_object = send_organisation(first_ae, [bad], scp.host, scp.port, senders.ae_title)
                refused_caller = send_organisation(
                    UNKNOWN_AE_TITLE, generated[-1].instances[:1], scp.host, scp.port, senders.ae_title
                )
        finally:
            scp.stop()
        sending_seconds = time.monotonic() - started
        reports = _publish_reports(archive, generated)

        EmbeddedRunner(archive.event_log, [(collector, collector)]).catch_up()
        projected = EmbeddedRunner(archive.event_log, archive.bindings()).catch_up()
        # how far the demo's runner (a group per projection, as above) is behind its topics now
        lag = projection_lag(archive.event_log, archive.processors(), group_id)
        read_side = _read_side(archive)
    finally:
        archive.close()

    summary = _summarise(collector.events, generated, organisations)
    summary.update(
        {
            "seed": seed,
            "seconds": round(time.monotonic() - started, 2),
            "sending_seconds": round(sending_seconds, 2),
            "instances_sent": sum(s.instances for s in sent.values()),
            "studies_sent": len(generated),
            "send_failures": [f for s in sent.values() for f in s.failures],
            "refusals": {
                "object_without_patient_id": refused_object.failures,
                "unknown_ae_title": refused_caller.failures,
            },
            "reports": reports,
            "projected": projected,
            "projection_lag": lag,
            **read_side,
            "senders_file": {"path": str(settings.senders_file), "written": wrote_senders},
            "open": _study_links(settings, read_side["index"]["newest"]),
            "scp": {"ae_title": senders.ae_title, "host": scp.host, "port": scp.port},
            "data": settings.describe(),
        }
    )
    _render(console, summary)
    return summary


DEMO_USER = "demo.radiologist"


def _study_links(settings: Settings, studies: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The MIS links of the newest studies, and (first demo only) a radiologist to sign in with:
    its token is shown once here, like ``cami users add`` does."""
    from urllib.parse import urlencode

    from api.auth import UserDirectory, add_user

    users_file = settings.users_file
    token = None
    if not UserDirectory(users_file).users():
        _, token = add_user(
            users_file, DEMO_USER, "radiologist", doctor_code="R-DEMO-1", doctor_name="Демонстрационный^Врач"
        )
    base = _base_url(settings)
    return {
        "serve": "cami serve",
        "sign_in": {"url": f"{base}/signin", "user": DEMO_USER if token else None, "token": token},
        "studies": [
            f"{base}/study?{urlencode({'patient': s['patient_id'], 'study': s['study_uid']})}" for s in studies[:3]
        ],
    }


def _base_url(settings: Settings) -> str:
    """Where ``cami serve`` will answer with these settings: https with TLS, an IPv6 address in
    brackets, a wildcard bind address as this machine (a browser cannot open 0.0.0.0)."""
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):
        host = "localhost"
    elif ":" in host:
        host = f"[{host}]"
    return f"{'https' if settings.http_tls else 'http'}://{host}:{settings.http_port}"


def _read_side(archive: Archive) -> dict[str, Any]:
    """What the read models now answer: the newest studies of the archive index, the audit
    trail's chain check and today's monitoring per organisation."""
    from projections.audit.verify import verify_chain
    from projections.monitoring.queries import organisation_summary
    from projections.query_model.find import search_studies

    warehouse = archive.warehouse
    studies = search_studies(archive.query_store, limit=10_000)
    statuses = Counter(s["report_status"] for s in studies)
    newest = [
        {
            "study_uid": s["study_uid"],
            "patient_id": s["patient_id"],
            "patient_name": s["patient_name"],
            "study_date": s["study_date"].isoformat() if s["study_date"] else None,
            "modalities": list(s["modalities"]),
            "series": s["series_count"],
            "instances": s["instance_count"],
            "organisations": list(s["organisations"]),
            "report_status": s["report_status"],
            "missing": list(s["missing"]),
        }
        for s in studies[:8]
    ]
    audit = verify_chain(warehouse)
    day_ago = datetime.now(UTC) - timedelta(days=1)
    monitoring = [
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}
        for row in organisation_summary(warehouse, day_ago)
    ]
    return {
        "index": {"studies": len(studies), "report_status": dict(statuses), "newest": newest},
        "audit": {"entries": audit.entries, "chains": audit.chains, "intact": audit.ok},
        "monitoring": monitoring,
    }


def _send_all(
    console: Console, host: str, port: int, senders: Senders, by_org: dict[str, list[Dataset]]
) -> dict[str, _Sent]:
    total = sum(_instance_bytes(ds) for instances in by_org.values() for ds in instances)
    count = sum(len(v) for v in by_org.values())
    sent: dict[str, _Sent] = {}
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task(f"C-STORE {count} instances to {senders.ae_title}@{host}:{port}", total=total)
        for ae_title, instances in by_org.items():
            progress.update(task, description=f"C-STORE {ae_title} -> {senders.ae_title} ({len(instances)} instances)")
            sent[ae_title] = send_organisation(ae_title, instances, host, port, senders.ae_title, progress, task)
    return sent


def _summarise(
    events: Sequence[Event], generated: Sequence[SyntheticStudy], organisations: Sequence[Organisation]
) -> dict[str, Any]:
    """What the archive recorded in this run, per organisation, from the events themselves."""
    names = {o.code: o for o in organisations}
    per_org: dict[str, dict[str, Any]] = {}
    incomplete: dict[str, dict[str, Any]] = {}
    received = rejected = assoc_rejected = 0
    rejections: list[dict[str, Any]] = []
    for event in events:
        p = event.payload
        if event.type == "InstanceReceived":
            received += 1
            code = event.envelope.organisation or "?"
            org = names.get(code)
            row = per_org.setdefault(
                code,
                {
                    "organisation": code,
                    "name": org.name if org else "",
                    "ae_title": p.get("calling_ae_title"),
                    "studies": set(),
                    "instances": 0,
                    "bytes": 0,
                    "pathology_studies": set(),
                    "emergency_studies": set(),
                    "modalities": set(),
                },
            )
            study = p["StudyInstanceUID"]
            row["studies"].add(study)
            row["instances"] += 1
            row["bytes"] += int(p["blob"]["size"])
            row["modalities"].add(p.get("Modality") or "?")
            if p.get("pathology"):
                row["pathology_studies"].add(study)
            if p.get("emergency"):
                row["emergency_studies"].add(study)
            if p.get("missing"):
                entry = incomplete.setdefault(
                    study,
                    {
                        "study_instance_uid": study,
                        "organisation": code,
                        "ae_title": p.get("calling_ae_title"),
                        "modality": p.get("Modality"),
                        "missing": [],
                    },
                )
                entry["missing"] = sorted(set(entry["missing"]) | set(p["missing"]))
        elif event.type == "InstanceRejected":
            rejected += 1
            rejections.append(
                {
                    "event": "InstanceRejected",
                    "from": p.get("calling_ae_title"),
                    "reason": p.get("reason"),
                    "status": f"0x{int(p.get('status') or 0):04X}",
                    "comment": p.get("error_comment"),
                }
            )
        elif event.type == "AssociationRejected":
            assoc_rejected += 1
            rejections.append(
                {"event": "AssociationRejected", "from": p.get("calling_ae_title"), "reason": p["reason"]}
            )
    organisations_out = [
        {
            **{k: v for k, v in row.items() if not isinstance(v, set)},
            "studies": len(row["studies"]),
            "pathology_studies": len(row["pathology_studies"]),
            "emergency_studies": len(row["emergency_studies"]),
            "modalities": sorted(row["modalities"]),
            "megabytes": round(row["bytes"] / 1e6, 2),
        }
        for row in sorted(per_org.values(), key=lambda r: str(r["ae_title"]))
    ]
    sent_instances = sum(len(s.instances) for s in generated)
    return {
        "instances_stored": received,
        "duplicates": max(0, sent_instances - received),
        "instances_rejected": rejected,
        "associations_rejected": assoc_rejected,
        "dicom_events": len(events),
        "organisations": organisations_out,
        "incomplete_packages": sorted(incomplete.values(), key=lambda e: str(e["organisation"])),
        "rejections": rejections,
        "transfer_syntaxes": sorted({s.transfer_syntax for s in generated}),
    }


def _render(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title=f"Arrived at CAMI through the Storage SCP ({summary['sending_seconds']} s)")
    for column in ("sender", "organisation", "mod.", "studies", "inst.", "MB", "path.", "emerg."):
        table.add_column(column, justify="left" if column in ("sender", "organisation", "mod.") else "right")
    for row in summary["organisations"]:
        table.add_row(
            f"{row['ae_title']}\n[dim]…{str(row['organisation'])[-7:]}[/dim]",
            row["name"],
            " ".join(row["modalities"]),
            str(row["studies"]),
            str(row["instances"]),
            f"{row['megabytes']:.1f}",
            str(row["pathology_studies"]),
            str(row["emergency_studies"]),
        )
    console.print(table)
    if summary["duplicates"]:
        console.print(
            f"{summary['duplicates']} instances were already held (same bytes, same UID): "
            "acknowledged again, no new events"
        )
    if summary["incomplete_packages"]:
        inc = Table(title="Incomplete packages (stored; waiting for the missing regional attributes)")
        for column in ("sender", "mod.", "study (UID end)", "missing"):
            inc.add_column(column)
        for entry in summary["incomplete_packages"]:
            study = "…" + entry["study_instance_uid"][-12:]
            inc.add_row(str(entry["ae_title"]), str(entry["modality"]), study, "\n".join(entry["missing"]))
        console.print(inc)
    if summary["rejections"]:
        rej = Table(title="Refused (each recorded as an event)")
        for column in ("event", "from", "reason", "status / comment"):
            rej.add_column(column)
        for entry in summary["rejections"]:
            detail = " ".join(x for x in (entry.get("status"), entry.get("comment")) if x)
            rej.add_row(entry["event"], str(entry["from"]), str(entry["reason"]), detail)
        console.print(rej)
    reports = summary["reports"]
    console.print(
        f"Reports: {reports['signed']} drafted and signed now, {reports['already_reported']} already held, "
        f"{reports['without_report']} studies still without a report"
    )
    index = summary["index"]
    statuses = ", ".join(f"{k} {v}" for k, v in sorted(index["report_status"].items()))
    newest = Table(title=f"Archive index: {index['studies']} studies, newest first (reports: {statuses})")
    for column in ("patient", "date", "mod.", "series/inst.", "organisations", "report", "missing"):
        newest.add_column(column)
    for study in index["newest"]:
        newest.add_row(
            f"{study['patient_name'] or ''}\n[dim]{study['patient_id']}[/dim]",
            study["study_date"] or "",
            " ".join(study["modalities"]),
            f"{study['series']}/{study['instances']}",
            "\n".join("…" + o[-7:] for o in study["organisations"]),
            study["report_status"],
            ", ".join(study["missing"]),
        )
    console.print(newest)
    audit = summary["audit"]
    console.print(
        f"Audit trail: {audit['entries']} entries in {audit['chains']} per-record hash chains, "
        + ("[green]intact[/green]" if audit["intact"] else "[red]BROKEN[/red] (cami audit verify)")
    )
    data = summary["data"]
    console.print(
        f"Senders file: {summary['senders_file']['path']}"
        + (" (written by the demo)" if summary["senders_file"]["written"] else "")
    )
    console.print(f"Events: {data['event_log']}  Blobs: {data['blobs']}  ClickHouse: {data['clickhouse']}")
    links = summary["open"]
    console.print("Open the archive: run [bold]cami serve[/bold], then in a browser:")
    for url in links["studies"]:
        console.print(f"  {url}")
    if links["sign_in"]["token"]:
        console.print(
            f"  sign in as [bold]{links['sign_in']['user']}[/bold] with token [bold]{links['sign_in']['token']}[/bold]"
            " (shown once; more users: cami users add)"
        )
    console.print("Receive more: [bold]cami serve[/bold] (Storage SCP), then send with storescu to that port.")
