"""Freshness: from a C-STORE success to the instance being visible in the read model.

    python bench/freshness.py [--instances 50] [--kafka] [--json]

Instances of a synthetic CT study are sent one at a time by dcmtk's ``/usr/bin/storescu``
(``TCP_NODELAY=1``); the clock starts when storescu exits successfully (the "stored" answer came
back) and stops when a study search of the query model (``projections.query_model.find``, as
QIDO-RS and C-FIND run it) counts the instance. p50/p95 printed.

Where it is measured, and why not through ``cami serve``: chdb locks its data directory to one
process, and the HTTP API has no read-model endpoint yet, so the bench cannot look into the
ClickHouse of a separate ``cami serve``. It therefore composes exactly what ``cami serve`` runs on
the embedded defaults — the Storage SCP and the embedded runner with every projection, in one
process, through ``api.bootstrap`` — and polls that process's query store directly.

With ``--kafka`` a broker is started (infra/kafka.sh), the projections run in a separate
``cami workers`` process (the Faust app), and ClickHouse is the test-only chdb HTTP endpoint
(tests/support/chdb_http.py) that both the worker (``CAMI_CLICKHOUSE=clickhouse://...``) and the
bench poll — a stand-in for a ClickHouse server, since chdb cannot be shared between processes; the
worker writes the query store (a SQLite file, ``CAMI_QUERY_STORE``) that the bench reads.

Anchor: the same storescu send to the same SCP without waiting for visibility (the C-STORE
round trip itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from api.bootstrap import bootstrap  # noqa: E402
from api.config import Settings  # noqa: E402
from api.demo.synthetic import region, synthetic_study, write_study  # noqa: E402
from projections.query_model.find import search_studies  # noqa: E402
from projections.query_model.store import QueryStore, open_query_store  # noqa: E402
from streams.processing import EmbeddedRunner  # noqa: E402
from tests.support.servers import free_port  # noqa: E402

console = Console(stderr=True)
STORESCU = "/usr/bin/storescu"
SCU_AET = "FRESH_SCU"
TIMEOUT_S = 30.0


def write_senders(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "senders.toml").write_text(
        '[archive]\nae_title = "CAMI"\n\n'
        f'[[sender]]\nae_title = "{SCU_AET}"\norganisation = "{region()[0].code}"\nname = "freshness bench"\n',
        encoding="utf-8",
    )


def send(path: Path, port: int) -> float:
    started = time.perf_counter()
    proc = subprocess.run(
        [STORESCU, "-aet", SCU_AET, "-aec", "CAMI", "127.0.0.1", str(port), str(path)],
        env={**os.environ, "TCP_NODELAY": "1"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"storescu exited with {proc.returncode}: {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def visible(store: QueryStore, study: str) -> int:
    """Instances of the study the query model answers with, through the read module the API uses."""
    found = search_studies(store, study_uid=study, limit=1)
    return int(found[0]["instance_count"]) if found else 0


def measure(files: list[Path], study: str, port: int, store: QueryStore, already: int = 0) -> dict[str, Any]:
    """Send ``files`` one by one; ``already``: instances of the study visible before the first."""
    latencies: list[float] = []
    sends: list[float] = []
    for n, path in enumerate(files, start=1):
        sends.append(send(path, port))
        stored_at = time.perf_counter()
        while visible(store, study) < already + n:
            if time.perf_counter() - stored_at > TIMEOUT_S:
                raise RuntimeError(f"instance {n} not visible after {TIMEOUT_S} s")
            time.sleep(0.005)
        latencies.append(time.perf_counter() - stored_at)
    q = statistics.quantiles(latencies, n=20)
    return {
        "instances": len(files),
        "visible_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "visible_p95_ms": round(q[18] * 1000, 1),
        "visible_max_ms": round(max(latencies) * 1000, 1),
        "anchor_cstore_p50_ms": round(statistics.median(sends) * 1000, 1),
    }


def run_embedded(files: list[Path], study: str, home: Path) -> dict[str, Any]:
    write_senders(home)
    settings = Settings.from_env({"CAMI_HOME": str(home)})
    archive = bootstrap(settings)
    port = free_port()
    runner = EmbeddedRunner(archive.event_log, archive.bindings())  # as `cami serve` does
    scp = archive.storage_scp(port=port)
    runner.start()
    scp.start()
    try:
        return {
            "backend": "embedded (SQLite log + chdb, one process)",
            **measure(files, study, port, archive.query_store),
        }
    finally:
        scp.stop()
        runner.stop()
        archive.close()


def run_kafka(files: list[Path], study: str, home: Path) -> dict[str, Any]:
    from tests.support.chdb_http import ChdbHttpServer
    from tests.support.servers import KafkaServer

    write_senders(home)
    with KafkaServer(home / "kafka") as kafka, ChdbHttpServer(home / "clickhouse-http") as clickhouse:
        env = {
            "CAMI_HOME": str(home),
            "CAMI_EVENT_LOG": f"kafka://{kafka.bootstrap}",
            "CAMI_CLICKHOUSE": clickhouse.url,
            "CAMI_QUERY_STORE": f"sqlite://{home}/query.db",
        }
        archive = bootstrap(Settings.from_env(env))
        worker_home = home / "worker"
        worker = subprocess.Popen(
            [sys.executable, "-m", "api.cli", "workers"],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env, "CAMI_HOME": str(worker_home)},
            stdout=subprocess.DEVNULL,
            stderr=open(home / "worker.log", "w"),  # noqa: SIM115 - closed with the process
            start_new_session=True,
        )
        port = free_port()
        scp = archive.storage_scp(port=port)
        scp.start()
        try:
            store = open_query_store(env["CAMI_QUERY_STORE"])
            try:
                # warm up: the worker has joined its group once a first instance becomes visible
                console.print("waiting for the Faust worker to join…")
                send(files[0], port)
                deadline = time.monotonic() + 180
                while True:
                    try:
                        if visible(store, study) >= 1:
                            break
                    except Exception:  # the worker has not created the table yet
                        pass
                    if time.monotonic() > deadline or worker.poll() is not None:
                        raise RuntimeError("the Faust worker did not project the first instance")
                    time.sleep(0.2)
                result = measure(files[1:], study, port, store, already=1)
                return {"backend": "kafka + faust worker + ClickHouse HTTP (chdb stand-in)", **result}
            finally:
                store.close()
        finally:
            scp.stop()
            worker.terminate()
            worker.wait(timeout=60)
            archive.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--kafka", action="store_true", help="also with Kafka + a Faust worker")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="cami-bench-fresh-") as tmp:
        for backend in ["embedded"] + (["kafka"] if args.kafka else []):
            study = synthetic_study(region()[0], "CT", instances=args.instances + 1, seed=hash(backend) % 1000)
            files = sorted(write_study(study, Path(tmp) / f"study-{backend}"))
            uid = study.study_uid
            home = Path(tmp) / f"home-{backend}"
            if backend == "embedded":
                results.append(run_embedded(files[: args.instances], uid, home))
            else:
                results.append(run_kafka(files, uid, home))
    if args.json:
        sys.stdout.write(json.dumps(results, indent=2) + "\n")
        return 0
    table = Table(title="C-STORE success -> visible in the query model")
    for col in ("backend", "instances", "p50 ms", "p95 ms", "max ms", "anchor: C-STORE p50 ms"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r["backend"],
            str(r["instances"]),
            str(r["visible_p50_ms"]),
            str(r["visible_p95_ms"]),
            str(r["visible_max_ms"]),
            str(r["anchor_cstore_p50_ms"]),
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
