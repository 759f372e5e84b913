"""Rebuild throughput: every projection replayed from offset 0, per event-log backend.

    python bench/replay.py [--events 1000000] [--kafka] [--bootstrap HOST:PORT] [--lanes 0,2] [--json]
    python bench/replay.py --region-year [EVENTS] [--lanes 2] [--keep DIR] [--json]

Builds N synthetic events (InstanceReceived-heavy, like a real archive: per study ~60-250
instances in 1-4 series, plus a transfer queued/started/completed, a report drafted and signed
and an access), appends them to the embedded log (SQLite, in a temporary directory) and, with
``--kafka``, to a Kafka broker (started on loopback by infra/kafka.sh unless ``--bootstrap``),
then runs ``cami replay``'s :func:`rebuild` of *all registered projections* into embedded
ClickHouse (chdb) and prints events/s: once per ``--lanes`` count, 0 meaning in this one
process, N meaning N worker processes over shares of the log's partitions plus one for the query
model (:mod:`projections.replay_lanes`).

Anchor (measured in the same run, on the same backend): reading and decoding every event from
offset 0 with nothing applied or written. The ratio says what the projections and ClickHouse
inserts cost on top of the unavoidable part.

Generation is fast because events are not built one by one: per series one InstanceReceived is
encoded, and each instance is derived from it by replacing its fixed-width SOPInstanceUID, its
event id and the payload hash (recomputed), so every event still decodes and verifies.
On 2 cores the default million events take a few minutes per backend; use ``--events`` for less.

**Region-year** (``--region-year``, default a 10,000,000-event sample of a 50,000,000-event year):
studies in :data:`REGION_MIX`'s modalities and sizes (stated below, not measured) from the
synthetic region's 60 organisations over 365 days, written chunk by chunk into an embedded log
(``--keep DIR`` keeps it for the next run), then every projection rebuilt once into a fresh chdb
and query store with the first ``--lanes`` count. Printed: events/s and the read+decode anchor,
wall time, peak memory (this process and the largest lane), ClickHouse bytes on disk per million
events (active parts, as rebuilt), the event log's and the query store's bytes, and the rate
extrapolated to one region-year and to 85 regions on 1, 10 and 85 machines like this one (linear:
each machine rebuilds its own regions).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import resource
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from api.demo.synthetic import SOP_CLASSES, region  # noqa: E402
from projections.query_model.fold import QueryModel  # noqa: E402
from projections.query_model.store import QueryModelSink, SqliteQueryStore  # noqa: E402
from projections.registry import build  # noqa: E402
from projections.replay import rebuild  # noqa: E402
from projections.replay_lanes import Lanes  # noqa: E402
from projections.warehouse import open_warehouse  # noqa: E402
from schemas.codec import decode, encode  # noqa: E402
from schemas.events import Actor, new_event  # noqa: E402
from streams import EventLog, open_event_log  # noqa: E402
from streams.topics import archive_topics, topic_for  # noqa: E402

console = Console(stderr=True)
PARTITIONS = 6
ORGS = [f"1.2.643.5.1.13.13.12.2.50.{1000 + i}" for i in range(20)]
MODALITIES = {"CT": (120, 250), "MR": (80, 200), "DX": (1, 4), "MG": (4, 4), "US": (10, 40)}
SOP_WIDTH = 7  # instance numbers 1000000.. keep every SOPInstanceUID the same length


def _study_events(
    rng: random.Random, n: int, day: datetime, modality: str | None = None, org: str | None = None, accesses: int = 1
) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) for one study: its instances plus the events around them."""
    org = org or rng.choice(ORGS)
    study = f"1.2.826.0.1.3680043.8.498.{rng.randrange(10**20)}"
    modality = modality or rng.choice(list(MODALITIES))
    patient = f"P-{rng.randrange(10**7):07d}"
    at = day + timedelta(seconds=rng.randrange(86_400))
    out: list[tuple[str, bytes, bytes]] = []

    def simple(event_type: str, payload: dict[str, Any], aggregate: str, **kw: Any) -> None:
        event = new_event(event_type, payload, aggregate_id=aggregate, **kw)
        out.append((topic_for(event_type), event.key.encode(), encode(event)))

    transfer = f"t-{uuid.uuid4()}"
    simple(
        "TransferQueued",
        {
            "transfer_id": transfer,
            "StudyInstanceUID": study,
            "instances": n,
            "bytes": n * 524_288,
            "priority": "scheduled",
            "destination": "CAMI",
        },
        org,
        source_node="LAMI",
        organisation=org,
        occurred_at=at,
    )
    simple(
        "TransferStarted",
        {"transfer_id": transfer, "StudyInstanceUID": study, "attempt": 1},
        org,
        source_node="LAMI",
        organisation=org,
        occurred_at=at,
    )
    series_count = max(1, min(4, n // 40))
    for series in range(1, series_count + 1):
        per = n // series_count + (1 if series <= n % series_count else 0)
        if per == 0:
            continue
        template = new_event(
            "InstanceReceived",
            {
                "StudyInstanceUID": study,
                "SeriesInstanceUID": f"{study}.{series}",
                "SOPInstanceUID": f"{study}.{series}.{10 ** (SOP_WIDTH - 1)}",
                "SOPClassUID": SOP_CLASSES[modality],
                "TransferSyntaxUID": "1.2.840.10008.1.2.1",
                "PatientID": patient,
                "PatientName": "Кузнецов^Алексей^Петрович",
                "PatientBirthDate": "19650412",
                "PatientSex": "M",
                "SpecificCharacterSet": "ISO_IR 192",
                "StudyDate": at.strftime("%Y%m%d"),
                "StudyTime": at.strftime("%H%M%S"),
                "AccessionNumber": f"A-{rng.randrange(10**6)}",
                "StudyDescription": f"{modality} органов грудной полости",
                "ReferringPhysicianName": "Петров^Иван",
                "Modality": modality,
                "SeriesNumber": series,
                "SeriesDescription": "Axial 1.25mm",
                "BodyPartExamined": "CHEST",
                "InstanceNumber": 1,
                "Rows": 512,
                "Columns": 512,
                "InstitutionName": "ОКБ",
                "PerformingPhysician": {"code": "D-0042", "name": "Орлова^Мария"},
                "ProcedureCodeValue": "A06.09.005",
                "ProcedureCodingScheme": "RU-MZ",
                "ProcedureCodeMeaning": "КТ органов грудной полости",
                "blob": {"sha256": hashlib.sha256(study.encode()).hexdigest(), "size": 526_000, "store": "s3://cami"},
                "pathology": rng.random() < 0.3,
                "channel": "dicom",
                "calling_ae_title": "OKB_CT1",
                "called_ae_title": "CAMI",
            },
            aggregate_id=study,
            source_node="OKB_CT1",
            organisation=org,
            occurred_at=at,
        )
        raw = encode(template)
        header_len = raw.index(template.envelope.payload_sha256.encode()) + 64
        envelope, payload = raw[:header_len], raw[header_len:]
        uid0 = f"{study}.{series}.{10 ** (SOP_WIDTH - 1)}".encode()
        key = study.encode()
        id0, sha0 = template.envelope.event_id.encode(), template.envelope.payload_sha256.encode()
        for i in range(per):
            uid = f"{study}.{series}.{10 ** (SOP_WIDTH - 1) + i}".encode()
            body = payload.replace(uid0, uid)
            sha = hashlib.sha256(body).hexdigest().encode()
            head = envelope.replace(id0, str(uuid.uuid4()).encode()).replace(sha0, sha)
            out.append(("cami.dicom", key, head + body))
    doctor = {"code": "D-0042", "name": "Орлова^Мария"}
    signed = at + timedelta(hours=rng.randrange(1, 48))
    simple(
        "TransferCompleted",
        {
            "transfer_id": transfer,
            "attempt": 1,
            "instances_sent": n,
            "bytes_sent": n * 524_288,
            "duration_ms": rng.randrange(1_000, 600_000),
        },
        org,
        source_node="LAMI",
        organisation=org,
        occurred_at=at,
    )
    text = {"protocol_text": "Очаговых и инфильтративных изменений не выявлено. " * 8, "conclusion_text": "Норма."}
    simple(
        "ReportDrafted",
        {"report_id": f"r-{study}", "StudyInstanceUID": study, **text, "author": doctor, "source": "api"},
        study,
        source_node="web",
        organisation=org,
        actor=Actor("dr.orlova", "radiologist"),
        occurred_at=signed,
    )
    simple(
        "ReportSigned",
        {
            "report_id": f"r-{study}",
            "StudyInstanceUID": study,
            **text,
            "signer": doctor,
            "revision": 1,
            "signed_at": signed,
            "content_sha256": "cd" * 32,
        },
        study,
        source_node="web",
        organisation=org,
        actor=Actor("dr.orlova", "radiologist"),
        occurred_at=signed,
    )
    for hours in range(1, accesses + 1):
        simple(
            "RecordAccessed",
            {"action": "view", "channel": "study-page", "PatientID": patient, "StudyInstanceUID": study, "results": 1},
            study,
            source_node="web",
            actor=Actor("dr.petrov", "referring"),
            occurred_at=signed + timedelta(hours=hours),
        )
    return out


def make_events(count: int, seed: int = 7) -> list[tuple[str, bytes, bytes]]:
    rng = random.Random(seed)
    out: list[tuple[str, bytes, bytes]] = []
    day = datetime(2026, 3, 2, tzinfo=UTC)
    while len(out) < count:
        low, high = MODALITIES[rng.choice(list(MODALITIES))]
        out += _study_events(rng, rng.randint(low, high), day + timedelta(days=rng.randrange(90)))
    return out[:count]


#: A region-year's study mix (modality: share of studies, instances per study low..high, accesses per
#: study). Stated here, not measured: radiography (fluorography screening included) dominates by study
#: count and CT by instances. Mean about 59 instances and 7 other events a study (a transfer queued,
#: started and completed, a report drafted and signed, two reads): 760,000 studies make a region-year
#: of about 50 million events, within the 30-60 million instance events a region produces a year.
REGION_MIX = {
    "DX": (0.55, (1, 3), 2),
    "MG": (0.10, (4, 4), 2),
    "US": (0.12, (10, 30), 2),
    "CT": (0.15, (120, 400), 2),
    "MR": (0.08, (120, 280), 2),
}
REGION_YEAR_EVENTS = 50_000_000
REGION_ORGANISATIONS = 60


def region_year(count: int, seed: int = 2026, chunk: int = 200_000) -> Iterator[list[tuple[str, bytes, bytes]]]:
    """``count`` events of a region's year, in chunks: studies with :data:`REGION_MIX`'s modalities
    and sizes from the synthetic region's organisations (one that has the modality), on days spread
    over a year."""
    rng = random.Random(seed)
    organisations = region(seed, organisations=REGION_ORGANISATIONS)
    by_modality = {m: [o.code for o in organisations if m in o.modalities] or ORGS for m in REGION_MIX}
    modalities, weights = list(REGION_MIX), [share for share, _, _ in REGION_MIX.values()]
    first_day = datetime(2026, 1, 1, tzinfo=UTC)
    made, pending = 0, []
    while made < count:
        modality = rng.choices(modalities, weights)[0]
        _, (low, high), accesses = REGION_MIX[modality]
        day = first_day + timedelta(days=rng.randrange(365))
        study = _study_events(rng, rng.randint(low, high), day, modality, rng.choice(by_modality[modality]), accesses)
        study = study[: count - made]
        made += len(study)
        pending += study
        if len(pending) >= chunk or made >= count:
            yield pending
            pending = []


def append_all(log: EventLog, events: list[tuple[str, bytes, bytes]]) -> float:
    start = time.perf_counter()
    step = 50_000
    for i in range(0, len(events), step):
        futures = [log.append_async(t, k, v) for t, k, v in events[i : i + step]]
        for f in futures:
            f.result(timeout=300)
    return time.perf_counter() - start


def read_decode(log: EventLog, topics: list[str]) -> tuple[int, float]:
    """The anchor: every event from offset 0, read (the same scan the rebuild uses) and decoded,
    nothing else — so the ratio shows what the projections and the sink cost."""
    start = time.perf_counter()
    n = 0
    for records in log.scan({topic: log.end_offsets(topic) for topic in topics}, 20_000):
        for r in records:
            decode(r.value)
        n += len(records)
    return n, time.perf_counter() - start


def measure(
    name: str,
    log_url: str,
    log: EventLog,
    warehouse_url: str,
    events: list[tuple[str, bytes, bytes]],
    lane_counts: list[int],
) -> list[dict[str, Any]]:
    log.ensure_topics(archive_topics(PARTITIONS))
    console.print(f"[{name}] appending {len(events):,} events…")
    append_s = append_all(log, events)
    processors = build()
    topics = list(dict.fromkeys(t for p in processors for t in p.topics))
    console.print(f"[{name}] anchor: read + decode from offset 0…")
    anchor_n, anchor_s = read_decode(log, topics)
    results = []
    for lanes in lane_counts:
        how = f"{lanes} lanes" if lanes else "in one process"
        console.print(f"[{name}] rebuilding {', '.join(p.name for p in processors)} {how}…")
        with tempfile.TemporaryDirectory(prefix="cami-bench-qm-") as tmp, open_warehouse(warehouse_url) as warehouse:
            store = SqliteQueryStore(Path(tmp) / "query.db")  # the query model's own store
            own = {p.name: QueryModelSink(store, warehouse) for p in processors if isinstance(p, QueryModel)}
            plan = Lanes(log_url, warehouse_url, lanes, query_store_url=f"sqlite://{tmp}/query.db") if lanes else None
            result = rebuild(log, warehouse, build(), batch_size=20_000, align=False, own_sinks=own, lanes=plan)
            store.close()
        results.append(
            {
                "backend": f"{name} log + chdb",
                "lanes": lanes,
                "events": result.events,
                "projections": result.projections,
                "append_events_per_s": round(len(events) / append_s),
                "anchor_read_decode_events_per_s": round(anchor_n / anchor_s),
                "rebuild_seconds": round(result.seconds, 1),
                "rebuild_events_per_s": round(result.events_per_second),
                "ratio_to_anchor": round(result.events_per_second / (anchor_n / anchor_s), 3),
                "table_rows": result.table_rows,
            }
        )
    return results


def _disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def region_year_run(workdir: Path, count: int, lanes: int) -> dict[str, Any]:
    """Write (or reuse) a region-year sample of ``count`` events in ``workdir``'s embedded log,
    rebuild every projection from it into a fresh chdb and query store, and measure."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_url = f"sqlite://{workdir}/events.db"
    processors = build()
    topics = list(dict.fromkeys(t for p in processors for t in p.topics))
    figures: dict[str, Any] = {"events": count, "lanes": lanes, "workdir": str(workdir)}
    with open_event_log(log_url) as log:
        log.ensure_topics(archive_topics(PARTITIONS))
        have = sum(sum(log.end_offsets(t).values()) for t in topics)
        if have == 0:
            console.print(f"region-year: generating and appending {count:,} events…")
            started, appending = time.perf_counter(), 0.0
            for chunk in region_year(count):
                appending += append_all(log, chunk)
            figures["generate_and_append_s"] = round(time.perf_counter() - started, 1)
            figures["append_events_per_s"] = round(count / appending)
        elif have != count:
            raise SystemExit(f"{workdir} holds {have:,} events, not {count:,}: give another --keep directory")
        else:
            console.print(f"region-year: reusing the {count:,} events in {workdir}")
        console.print("region-year: anchor: read + decode from offset 0…")
        anchor_n, anchor_s = read_decode(log, topics)
        figures["anchor_read_decode_events_per_s"] = round(anchor_n / anchor_s)
        figures["event_log_bytes"] = sum(_disk_bytes(f) for f in workdir.glob("events.db*"))

        shutil.rmtree(workdir / "clickhouse", ignore_errors=True)
        for stale in workdir.glob("query.db*"):
            stale.unlink()
        warehouse_url = f"chdb://{workdir}/clickhouse"
        done, next_report = 0, 1_000_000

        def report(n: int) -> None:
            nonlocal done, next_report
            done += n
            if done >= next_report:
                console.print(f"region-year: {done:,} events rebuilt")
                next_report += 1_000_000

        console.print(f"region-year: rebuilding every projection ({lanes or 'no'} lanes)…")
        with open_warehouse(warehouse_url) as warehouse:
            store = SqliteQueryStore(workdir / "query.db")
            own = {p.name: QueryModelSink(store, warehouse) for p in processors if isinstance(p, QueryModel)}
            plan = (
                Lanes(log_url, warehouse_url, lanes, query_store_url=f"sqlite://{workdir}/query.db") if lanes else None
            )
            result = rebuild(
                log, warehouse, build(), batch_size=20_000, align=False, own_sinks=own, lanes=plan, on_progress=report
            )
            parts = warehouse.query(
                "SELECT table, sum(bytes_on_disk), sum(rows) FROM system.parts"
                " WHERE active AND database = currentDatabase() GROUP BY table ORDER BY table"
            ).rows
            store.close()
    clickhouse_bytes = sum(int(r[1]) for r in parts)
    rate = result.events_per_second
    figures.update(
        {
            "rebuild_seconds": round(result.seconds, 1),
            "rebuild_events_per_s": round(rate),
            "ratio_to_anchor": round(rate / figures["anchor_read_decode_events_per_s"], 3),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_rss_lane_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
            "clickhouse_bytes": clickhouse_bytes,
            "clickhouse_bytes_per_million_events": round(clickhouse_bytes / count * 1_000_000),
            "clickhouse_tables": {str(r[0]): {"bytes": int(r[1]), "rows": int(r[2])} for r in parts},
            "query_store_bytes": sum(_disk_bytes(f) for f in workdir.glob("query.db*")),
            "event_log_bytes_per_million_events": round(figures["event_log_bytes"] / count * 1_000_000),
            "region_year_events": REGION_YEAR_EVENTS,
            "region_year_hours": round(REGION_YEAR_EVENTS / rate / 3600, 2),
            "nation_85_regions_hours": {n: round(85 * REGION_YEAR_EVENTS / rate / 3600 / n, 1) for n in (1, 10, 85)},
        }
    )
    return figures


def print_region_year(figures: dict[str, Any]) -> None:
    table = Table(title=f"Region-year sample: {figures['events']:,} events, every projection rebuilt")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("rebuild events/s", f"{figures['rebuild_events_per_s']:,} ({figures['lanes'] or 'no'} lanes)"),
        ("anchor: read + decode events/s", f"{figures['anchor_read_decode_events_per_s']:,}"),
        ("ratio to the anchor", f"{figures['ratio_to_anchor']:.2f}"),
        ("wall time of the rebuild", f"{figures['rebuild_seconds']:,} s"),
        (
            "peak memory (MiB): this process / largest lane",
            f"{figures['peak_rss_mib']:,} / {figures['peak_rss_lane_mib']:,}",
        ),
        ("ClickHouse on disk per 1M events", f"{figures['clickhouse_bytes_per_million_events'] / 2**20:,.1f} MiB"),
        ("event log on disk per 1M events", f"{figures['event_log_bytes_per_million_events'] / 2**20:,.1f} MiB"),
        ("query store on disk", f"{figures['query_store_bytes'] / 2**30:,.2f} GiB"),
        (f"one region-year ({figures['region_year_events']:,} events)", f"{figures['region_year_hours']} h"),
    ]
    rows += [
        (f"85 regions on {n} machine(s) like this one", f"{hours:,} h")
        for n, hours in figures["nation_85_regions_hours"].items()
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--kafka", action="store_true", help="also on Kafka (a broker is started unless --bootstrap)")
    parser.add_argument("--bootstrap", help="use this Kafka broker instead of starting one")
    parser.add_argument(
        "--lanes",
        default="0,2",
        help="rebuild with these numbers of lanes (worker processes; 0: in one process), comma-separated",
    )
    parser.add_argument(
        "--region-year",
        type=int,
        nargs="?",
        const=10_000_000,
        metavar="EVENTS",
        help="instead: a region-year sample of EVENTS events (default 10,000,000; a year is "
        f"{REGION_YEAR_EVENTS:,}), rebuilt with the first --lanes count; the rate extrapolated",
    )
    parser.add_argument("--keep", type=Path, metavar="DIR", help="with --region-year: keep (and reuse) the log in DIR")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    lane_counts = [int(n) for n in args.lanes.split(",")]
    if args.region_year:
        with tempfile.TemporaryDirectory(prefix="cami-bench-region-year-", dir=args.keep and args.keep.parent) as tmp:
            figures = region_year_run(args.keep or Path(tmp), args.region_year, lane_counts[0])
        if args.json:
            sys.stdout.write(json.dumps(figures, indent=2) + "\n")
        else:
            print_region_year(figures)
        return 0

    start = time.perf_counter()
    events = make_events(args.events)
    gen_s = time.perf_counter() - start
    console.print(
        f"generated {len(events):,} events ({sum(len(v) for _, _, v in events) / len(events):.0f} B mean) "
        f"in {gen_s:.1f} s"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="cami-bench-replay-") as tmp:
        warehouse_url = f"chdb://{tmp}/clickhouse"  # one chdb directory per process: shared, rebuilt each time
        with open_event_log(f"sqlite://{tmp}/events.db") as log:
            results += measure("embedded", f"sqlite://{tmp}/events.db", log, warehouse_url, events, lane_counts)
        if args.kafka or args.bootstrap:
            server = None
            bootstrap = args.bootstrap
            if bootstrap is None:
                from tests.support.servers import KafkaServer

                server = KafkaServer(Path(tmp) / "kafka")
                server.start()
                bootstrap = server.bootstrap
            try:
                with open_event_log(f"kafka://{bootstrap}") as log:
                    results += measure("kafka", f"kafka://{bootstrap}", log, warehouse_url, events, lane_counts)
            finally:
                if server is not None:
                    server.stop()
    if args.json:
        sys.stdout.write(json.dumps({"events": len(events), "results": results}, indent=2) + "\n")
        return 0
    table = Table(title=f"Rebuild of all projections from offset 0 ({len(events):,} events)")
    for col in (
        "backend",
        "lanes",
        "projections",
        "append ev/s",
        "anchor: read+decode ev/s",
        "rebuild ev/s",
        "ratio",
        "seconds",
    ):
        table.add_column(col)
    for r in results:
        table.add_row(
            r["backend"],
            str(r["lanes"] or "-"),
            ", ".join(r["projections"]),
            f"{r['append_events_per_s']:,}",
            f"{r['anchor_read_decode_events_per_s']:,}",
            f"{r['rebuild_events_per_s']:,}",
            f"{r['ratio_to_anchor']:.2f}",
            str(r["rebuild_seconds"]),
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
