"""Which store should DICOM queries read? ClickHouse study/series tables against a SQLite row store,
built side by side on the same synthetic region and asked bench/qido.py's query shapes.

    python bench/query_model.py [--studies 100000] [--instances 50] [--repeat 50] [--json]

Both stores hold the same rows: one per study (the attributes a study-level query matches and
returns, the patient's name case-folded for prefix matching, Cyrillic included), one per series
and one per instance (the newest version). The facts are those of ``bench/qido.py``'s synthetic
index (two studies per patient, dates spread over ~6.5 years, five modalities).

* **ClickHouse** (chdb, in this process): MergeTree tables ordered for the look-ups (studies by
  date for "newest studies" and date ranges, with bloom-filter skipping indexes on patient,
  accession and UID; series and instances by study and series).
* **SQLite** (one file, WAL): the same tables as B-trees with an index per query shape, as
  :mod:`projections.query_model.sqlite` builds them.

Each shape is asked ``--repeat`` times with parameters drawn from the data (the same draws for
both); the report is p50/p95 in milliseconds per store and the SQLite/ClickHouse ratio. This is
the record behind the choice in docs/performance.md ("Query model"); the figures are relative:
run it alone for absolute ones.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from projections.warehouse import Warehouse, open_warehouse  # noqa: E402

console = Console(stderr=True)
SURNAMES = ["Иванов", "Петрова", "Сидоров", "Кузнецова", "Смирнов", "Попова", "Волков", "Морозова"]
GIVEN = ["Иван", "Анна", "Олег", "Мария"]
MODALITIES = ["CT", "MR", "US", "DX", "CR"]
DAY0 = date(2020, 1, 1)
PREFIX = "1.2.826.0.1.3680043.8.498.8."


def facts(s: int) -> dict[str, Any]:
    """Study ``s`` as bench/qido.py's ``study_facts`` makes it."""
    p = s // 2
    return {
        "study_uid": f"{PREFIX}{s}",
        "patient_id": f"BP-{p}",
        "patient_name": f"{SURNAMES[p % 8]}^{GIVEN[(p // 8) % 4]}",
        "study_date": DAY0 + timedelta(days=s * 7919 % 2400),
        "modality": MODALITIES[s % 5],
        "accession": f"A{s}",
    }


# -- ClickHouse ---------------------------------------------------------------------------------------
CH_DDL = (
    """CREATE TABLE qm_studies (study_uid String, patient_id String, patient_name String, name_folded String,
        study_date Nullable(Date32), study_time Nullable(String), accession_number Nullable(String),
        modalities Array(String), series_count UInt32, instance_count UInt32,
        INDEX patient_idx patient_id TYPE bloom_filter GRANULARITY 1,
        INDEX accession_idx accession_number TYPE bloom_filter GRANULARITY 1,
        INDEX uid_idx study_uid TYPE bloom_filter GRANULARITY 1)
       ENGINE = MergeTree ORDER BY (assumeNotNull(study_date), study_uid) SETTINGS allow_nullable_key = 1""",
    """CREATE TABLE qm_series (study_uid String, series_uid String, modality String, series_number Nullable(Int32),
        instance_count UInt32) ENGINE = MergeTree ORDER BY (study_uid, series_uid)""",
    """CREATE TABLE qm_instances (study_uid String, series_uid String, sop_uid String,
        instance_number Nullable(Int32), sop_class_uid String)
       ENGINE = MergeTree ORDER BY (study_uid, series_uid, sop_uid)""",
)


def build_clickhouse(warehouse: Warehouse, studies: int, instances: int) -> None:
    for ddl in CH_DDL:
        warehouse.command(ddl)
    surnames = "[" + ",".join(f"'{s}'" for s in SURNAMES) + "]"
    given = "[" + ",".join(f"'{g}'" for g in GIVEN) + "]"
    modalities = "[" + ",".join(f"'{m}'" for m in MODALITIES) + "]"
    uid = f"concat('{PREFIX}', toString(s))"
    name = f"concat(arrayElement({surnames}, p % 8 + 1), '^', arrayElement({given}, intDiv(p, 8) % 4 + 1))"
    warehouse.command(
        f"""INSERT INTO qm_studies SELECT {uid}, concat('BP-', toString(p)), {name}, lowerUTF8({name}),
                toDate32('2020-01-01') + toInt32(s * 7919 % 2400), '101500', concat('A', toString(s)),
                [arrayElement({modalities}, s % 5 + 1)], 2, {instances}
            FROM (SELECT number AS s, intDiv(number, 2) AS p FROM numbers({studies}))"""
    )
    warehouse.command(
        f"""INSERT INTO qm_series SELECT {uid}, concat({uid}, '.', toString(k)),
                arrayElement({modalities}, s % 5 + 1), k, {instances // 2}
            FROM (SELECT intDiv(number, 2) AS s, number % 2 + 1 AS k FROM numbers({studies * 2}))"""
    )
    warehouse.command(
        f"""INSERT INTO qm_instances SELECT {uid}, concat({uid}, '.', toString(i % 2 + 1)),
                concat({uid}, '.', toString(i % 2 + 1), '.', toString(intDiv(i, 2) + 1)), intDiv(i, 2) + 1,
                '1.2.840.10008.5.1.4.1.1.2'
            FROM (SELECT intDiv(number, {instances}) AS s, number % {instances} AS i
                  FROM numbers({studies * instances}))"""
    )
    warehouse.command("OPTIMIZE TABLE qm_studies FINAL")


STUDY_COLUMNS = "study_uid, patient_id, patient_name, study_date, study_time, accession_number, modalities"


def clickhouse_shapes(w: Warehouse) -> dict[str, Callable[[dict[str, Any]], int]]:
    order = "ORDER BY study_date DESC, study_time DESC, study_uid"

    def q(sql: str, params: dict[str, Any]) -> int:
        return len(w.query(sql, params).rows)

    return {
        "studies by PatientID": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM qm_studies WHERE patient_id = {{p:String}} {order} LIMIT 1000",
            {"p": f["patient_id"]},
        ),
        "studies by PatientName prefix + date": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM qm_studies WHERE name_folded LIKE {{n:String}}"
            f" AND study_date = {{d:Date32}} {order} LIMIT 1000",
            {"n": f["patient_name"][:6].lower() + "%", "d": f["study_date"]},
        ),
        "studies by AccessionNumber": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM qm_studies WHERE accession_number = {{a:String}} {order} LIMIT 1000",
            {"a": f["accession"]},
        ),
        "studies in a month, one modality": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM qm_studies WHERE study_date BETWEEN {{a:Date32}} AND {{b:Date32}}"
            f" AND has(modalities, {{m:String}}) {order} LIMIT 100",
            {"a": f["study_date"].replace(day=1), "b": f["study_date"].replace(day=28), "m": f["modality"]},
        ),
        "series of a study": lambda f: q(
            "SELECT * FROM qm_series WHERE study_uid = {s:String} ORDER BY series_number, series_uid",
            {"s": f["study_uid"]},
        ),
        "instances of a series": lambda f: q(
            "SELECT * FROM qm_instances WHERE study_uid = {s:String} AND series_uid = {r:String}"
            " ORDER BY instance_number, sop_uid",
            {"s": f["study_uid"], "r": f["study_uid"] + ".1"},
        ),
        "newest 100 studies (no key)": lambda f: q(f"SELECT {STUDY_COLUMNS} FROM qm_studies {order} LIMIT 100", {}),
    }


# -- SQLite -------------------------------------------------------------------------------------------
SQLITE_DDL = (
    """CREATE TABLE studies (study_uid TEXT PRIMARY KEY, patient_id TEXT, patient_name TEXT, name_folded TEXT,
        study_date TEXT, study_time TEXT, accession_number TEXT, modalities TEXT, series_count INTEGER,
        instance_count INTEGER) WITHOUT ROWID""",
    "CREATE INDEX studies_newest ON studies (study_date DESC, study_time DESC, study_uid)",
    "CREATE INDEX studies_patient ON studies (patient_id)",
    "CREATE INDEX studies_name ON studies (name_folded)",
    "CREATE INDEX studies_accession ON studies (accession_number)",
    """CREATE TABLE series (study_uid TEXT, series_uid TEXT, modality TEXT, series_number INTEGER,
        instance_count INTEGER, PRIMARY KEY (study_uid, series_uid)) WITHOUT ROWID""",
    """CREATE TABLE instances (sop_uid TEXT PRIMARY KEY, study_uid TEXT, series_uid TEXT, instance_number INTEGER,
        sop_class_uid TEXT)""",
    "CREATE INDEX instances_series ON instances (study_uid, series_uid, instance_number)",
)


def _instance_rows(studies: int, instances: int) -> Iterator[tuple[Any, ...]]:
    for s in range(studies):
        uid = f"{PREFIX}{s}"
        for i in range(instances):
            series = f"{uid}.{i % 2 + 1}"
            yield (f"{series}.{i // 2 + 1}", uid, series, i // 2 + 1, "1.2.840.10008.5.1.4.1.1.2")


def build_sqlite(path: Path, studies: int, instances: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("BEGIN")
    for ddl in SQLITE_DDL:
        db.execute(ddl)
    rows = []
    for s in range(studies):
        f = facts(s)
        rows.append(
            (f["study_uid"], f["patient_id"], f["patient_name"], f["patient_name"].lower(),
             f["study_date"].isoformat(), "101500", f["accession"], json.dumps([f["modality"]]), 2, instances)
        )  # fmt: skip
    db.executemany("INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    db.executemany(
        "INSERT INTO series VALUES (?, ?, ?, ?, ?)",
        ((r[0], f"{r[0]}.{k}", json.loads(r[7])[0], k, instances // 2) for r in rows for k in (1, 2)),
    )
    db.executemany("INSERT INTO instances VALUES (?, ?, ?, ?, ?)", _instance_rows(studies, instances))
    db.execute("COMMIT")
    db.execute("ANALYZE")
    return db


def _prefix_bounds(prefix: str) -> tuple[str, str]:
    """The range of strings that start with ``prefix`` (for a B-tree range scan)."""
    return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)


def sqlite_shapes(db: sqlite3.Connection) -> dict[str, Callable[[dict[str, Any]], int]]:
    order = "ORDER BY study_date DESC, study_time DESC, study_uid"

    def q(sql: str, params: tuple[Any, ...]) -> int:
        return len(db.execute(sql, params).fetchall())

    def by_name(f: dict[str, Any]) -> int:
        low, high = _prefix_bounds(f["patient_name"][:6].lower())
        return q(
            f"SELECT {STUDY_COLUMNS} FROM studies WHERE name_folded >= ? AND name_folded < ?"
            f" AND name_folded LIKE ? ESCAPE '\\' AND study_date = ? {order} LIMIT 1000",
            (low, high, low + "%", f["study_date"].isoformat()),
        )

    return {
        "studies by PatientID": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM studies WHERE patient_id = ? {order} LIMIT 1000", (f["patient_id"],)
        ),
        "studies by PatientName prefix + date": by_name,
        "studies by AccessionNumber": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM studies WHERE accession_number = ? {order} LIMIT 1000", (f["accession"],)
        ),
        "studies in a month, one modality": lambda f: q(
            f"SELECT {STUDY_COLUMNS} FROM studies WHERE study_date BETWEEN ? AND ?"
            f" AND EXISTS (SELECT 1 FROM json_each(modalities) WHERE value = ?) {order} LIMIT 100",
            (f["study_date"].replace(day=1).isoformat(), f["study_date"].replace(day=28).isoformat(), f["modality"]),
        ),
        "series of a study": lambda f: q(
            "SELECT * FROM series WHERE study_uid = ? ORDER BY series_number, series_uid", (f["study_uid"],)
        ),
        "instances of a series": lambda f: q(
            "SELECT * FROM instances WHERE study_uid = ? AND series_uid = ? ORDER BY instance_number, sop_uid",
            (f["study_uid"], f["study_uid"] + ".1"),
        ),
        "newest 100 studies (no key)": lambda f: q(f"SELECT {STUDY_COLUMNS} FROM studies {order} LIMIT 100", ()),
    }


# -- measuring ----------------------------------------------------------------------------------------
def time_shapes(shapes: dict[str, Callable[[dict[str, Any]], int]], draws: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, ask in shapes.items():
        ask(draws[0])  # warm-up
        latencies, counts = [], []
        for f in draws:
            started = time.perf_counter()
            counts.append(ask(f))
            latencies.append(time.perf_counter() - started)
        ordered = sorted(latencies)
        out[kind] = {
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000, 2),
            "mean_results": round(statistics.mean(counts), 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=50, help="instances per study")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(7)
    draws = [facts(rng.randrange(args.studies)) for _ in range(args.repeat)]
    report: dict[str, Any] = {"studies": args.studies, "instances": args.studies * args.instances}
    with tempfile.TemporaryDirectory(prefix="cami-bench-qm-") as tmp:
        console.print(f"ClickHouse: building {args.studies} studies / {report['instances']} instances…")
        warehouse = open_warehouse(f"chdb://{tmp}/clickhouse")
        started = time.perf_counter()
        build_clickhouse(warehouse, args.studies, args.instances)
        report["clickhouse_build_s"] = round(time.perf_counter() - started, 1)
        report["clickhouse"] = time_shapes(clickhouse_shapes(warehouse), draws)
        warehouse.close()
        console.print("SQLite: building the same rows…")
        started = time.perf_counter()
        db = build_sqlite(Path(tmp) / "query.db", args.studies, args.instances)
        report["sqlite_build_s"] = round(time.perf_counter() - started, 1)
        report["sqlite_bytes"] = (Path(tmp) / "query.db").stat().st_size
        report["sqlite"] = time_shapes(sqlite_shapes(db), draws)
        db.close()
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return 0
    table = Table(title=f"{args.studies} studies / {report['instances']} instances, {args.repeat} draws per shape")
    for col in (
        "query",
        "ClickHouse p50",
        "ClickHouse p95",
        "SQLite p50",
        "SQLite p95",
        "SQLite/ClickHouse",
        "results",
    ):
        table.add_column(col, justify="left" if col == "query" else "right")
    for kind, ch in report["clickhouse"].items():
        sq = report["sqlite"][kind]
        table.add_row(
            kind, str(ch["p50_ms"]), str(ch["p95_ms"]), str(sq["p50_ms"]), str(sq["p95_ms"]),
            f"{sq['p50_ms'] / ch['p50_ms']:.3f}" if ch["p50_ms"] else "—",
            f"{ch['mean_results']} / {sq['mean_results']}",
        )  # fmt: skip
    Console().print(table)
    Console().print(
        f"build: ClickHouse {report['clickhouse_build_s']} s, SQLite {report['sqlite_build_s']} s "
        f"({report['sqlite_bytes'] / 1e6:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
