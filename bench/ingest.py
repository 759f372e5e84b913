"""DICOM ingest throughput: CAMI's Storage SCP against Orthanc (and dcmtk's storescp), in one run.

    python bench/ingest.py [--instances 1000] [--associations 4] [--tiny 10000]
                           [--no-mixed] [--no-kafka] [--floors] [--json]

The same study — a CT series of ``--instances`` objects, 512x512 pixels of 16 bits, uncompressed
(about 0.5 MB each) — is sent by dcmtk's ``storescu`` (``/usr/bin/storescu``, one association,
``+sd +r -R``, ``TCP_NODELAY=1`` without which dcmtk stalls ~45 ms per object) to each target on loopback:

* **Orthanc** (the anchor: a local PACS on the same machine, started by infra/orthanc.sh, SQLite
  index and files in a temporary directory);
* **CAMI embedded**: ``cami serve`` in a subprocess on the embedded defaults (SQLite event log,
  blobs in a local directory, processors running), ``CAMI_HOME`` in a temporary directory;
* **CAMI kafka+minio**: ``cami serve`` with ``CAMI_EVENT_LOG=kafka://...`` and
  ``CAMI_BLOBS=s3://...`` on a real broker and a real MinIO started for the run;
* **dcmtk storescp**: the practical limit (writes files, nothing else), for scale;
* with ``--floors``, a bare **pynetdicom** Storage SCP with CAMI's network settings
  (bench/pynetdicom_scp.py) that stores nothing, and one that writes and fsyncs each data set:
  what the library CAMI's SCP is built on costs before CAMI does anything.

The same CT study is then sent over ``--associations`` concurrent associations (the files split
evenly, one storescu process each; the time is from the first start to the last exit), as many
hospitals sending at once; every target gets the same number. ``--tiny`` 8x8-pixel CT instances
(10 studies) go over one association: there the per-object costs (round trips, fsyncs, Python per
message) are all there is (0 skips either variant).

A further variant (skip with ``--no-mixed``) sends as many instances spread over every transfer
syntax this interpreter can write (explicit/implicit VR, deflate, RLE, JPEG-LS and JPEG 2000
lossless), one study per syntax, one storescu association per syntax proposing that syntax
first (storescu proposes one preferred syntax per run; the times are summed).

After every run the target is asked how many instances it holds — Orthanc's ``/statistics``,
CAMI's SOP index, its InstanceReceived events and its blob store, storescp's output directory — and
the run fails unless every instance arrived exactly once, so a fast failure is never reported as
speed. Figures are instances/s and MB/s (file bytes over storescu's wall time, association set-up
included), the CPU time the receiving process used meanwhile per instance (all its threads: for
CAMI the DICOM listener and the processors in ``cami serve``; not the broker's or MinIO's) and the
ratio to Orthanc measured in the same run (> 1: CAMI is faster).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from api.demo.synthetic import (  # noqa: E402
    available_transfer_syntaxes,
    region,
    synthetic_study,
    write_study,
)
from ingest.sop_index import SopIndex  # noqa: E402
from schemas.codec import decode  # noqa: E402
from streams import open_event_log  # noqa: E402
from streams.blobs import open_blob_store  # noqa: E402
from streams.topics import DICOM  # noqa: E402
from tests.support.servers import KafkaServer, MinioServer, OrthancServer, free_port  # noqa: E402

console = Console(stderr=True)

STORESCU = "/usr/bin/storescu"
STORESCP = "/usr/bin/storescp"
CAMI = str(Path(sys.executable).with_name("cami"))
SCU_AET = "BENCH_SCU"
ANCHOR = "Orthanc"
STORESCU_TIMEOUT_S = 1800
#: UIDs of the tiny instances (a root for examples and tests)
TINY_ROOT = "1.2.826.0.1.3680043.8.498.77."
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Corpus:
    name: str
    directory: Path
    instances: int
    bytes: int
    transfer_syntaxes: tuple[str, ...]
    sop_instance_uids: frozenset[str]
    #: one directory per transfer syntax (storescu proposes one preferred syntax per run)
    parts: tuple[tuple[Path, str], ...]
    #: concurrent associations the files are split over (single-syntax corpora only)
    associations: int = 1


def dcmtk_env() -> dict[str, str]:
    """dcmtk tools (and Orthanc) stall ~45 ms per object without it (Nagle's algorithm and delayed ACKs)."""
    return {**os.environ, "TCP_NODELAY": "1"}


# -- the studies -------------------------------------------------------------------------------------
def make_corpus(name: str, directory: Path, instances: int, syntaxes: list[str], seed: int) -> Corpus:
    """``instances`` CT objects spread over one study per transfer syntax, written as Part-10 files."""
    org = region()[0]
    share, extra = divmod(instances, len(syntaxes))
    total_bytes = 0
    uids: set[str] = set()
    parts = []
    for n, syntax in enumerate(syntaxes):
        size = share + (1 if n < extra else 0)
        if size == 0:
            continue
        study = synthetic_study(org, "CT", instances=size, seed=seed + n, transfer_syntax=syntax, realistic=True)
        parts.append((directory / str(n), syntax))
        for path in write_study(study, directory / str(n)):
            total_bytes += path.stat().st_size
        uids.update(str(ds.SOPInstanceUID) for ds in study.instances)
    if len(uids) != instances:
        raise RuntimeError(f"{name}: generated {len(uids)} distinct instances, expected {instances}")
    return Corpus(name, directory, instances, total_bytes, tuple(syntaxes), frozenset(uids), tuple(parts))


def make_tiny_corpus(directory: Path, instances: int, seed: int, studies: int = 10) -> Corpus:
    """``instances`` CT objects of 8x8 pixels over ``studies`` studies: all per-object cost."""
    org = region()[0]
    template = synthetic_study(org, "CT", instances=1, seed=seed).instances[0]
    total_bytes = 0
    uids: set[str] = set()
    template.Rows = template.Columns = 8
    template.PixelData = bytes(range(128))  # 8 x 8 x 16 bit
    for n in range(instances):
        ds = copy.deepcopy(template)
        study, number = divmod(n, -(-instances // studies))
        ds.StudyInstanceUID = f"{TINY_ROOT}{seed}.{study}"
        ds.SeriesInstanceUID = f"{TINY_ROOT}{seed}.{study}.1"
        ds.SOPInstanceUID = f"{TINY_ROOT}{seed}.{study}.1.{number + 1}"
        ds.InstanceNumber = number + 1
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = directory / str(study) / f"{number + 1}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        total_bytes += path.stat().st_size
        uids.add(str(ds.SOPInstanceUID))
    syntax = str(template.file_meta.TransferSyntaxUID)
    name = f"tiny 8x8 CT ({instances})"
    return Corpus(name, directory, instances, total_bytes, (syntax,), frozenset(uids), ((directory, syntax),))


# -- sending ----------------------------------------------------------------------------------------
#: storescu's option that makes it propose a transfer syntax first (else it sends compressed files
#: under an uncompressed context the peer prefers, and fails: it cannot decompress them)
PROPOSE = {
    "1.2.840.10008.1.2.1": [],
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.5": ["-xr"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
}


def storescu(corpus: Corpus, aet: str, port: int) -> float:
    """Send the corpus, one association per transfer syntax (``corpus.associations`` at once for
    a single-syntax corpus); returns storescu's total wall time."""
    if corpus.associations > 1:
        return _concurrent_storescu(corpus, aet, port)
    elapsed = 0.0
    for directory, syntax in corpus.parts:
        cmd = [STORESCU, "-aet", SCU_AET, "-aec", aet, "-R", *PROPOSE[syntax], "+sd", "+r"]
        cmd += ["127.0.0.1", str(port), str(directory)]
        started = time.perf_counter()
        proc = subprocess.run(
            cmd, env=dcmtk_env(), capture_output=True, text=True, timeout=STORESCU_TIMEOUT_S, check=False
        )
        elapsed += time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"storescu ({syntax}) to {aet} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return elapsed


def _concurrent_storescu(corpus: Corpus, aet: str, port: int) -> float:
    """``corpus.associations`` storescu processes at once, each with its share of the files."""
    [(directory, syntax)] = corpus.parts
    files = sorted(str(p) for p in directory.rglob("*.dcm"))
    shares = [files[i :: corpus.associations] for i in range(corpus.associations)]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [STORESCU, "-aet", SCU_AET, "-aec", aet, "-R", *PROPOSE[syntax], "127.0.0.1", str(port), *share],
            env=dcmtk_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in shares
    ]
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=STORESCU_TIMEOUT_S)
        if proc.returncode != 0:
            errors.append(f"exit {proc.returncode}: {err[-2000:]}")
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} of {len(procs)} storescu processes to {aet} failed:\n" + "\n".join(errors))
    return elapsed


def wait_port(port: int, alive: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError(f"{what} exited during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} not listening on 127.0.0.1:{port} after {START_TIMEOUT_S}s")


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], port: int, log: Path, what: str) -> Iterator[subprocess.Popen[bytes]]:
    """Run a server until the block ends (SIGTERM, then SIGKILL after 30 s)."""
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            wait_port(port, lambda: proc.poll() is None, what)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


# -- CPU of the receiving process ------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listening_pid(port: int) -> int:
    """The process listening on a loopback TCP port (Orthanc runs detached from the bench)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                    inodes.add(fields[9])
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in inodes:
                    return int(entry.name)
    raise RuntimeError(f"no process found listening on port {port}")


@dataclass(frozen=True)
class Sent:
    """One target's run: storescu's wall time and the receiving process's CPU time meanwhile."""

    seconds: float
    cpu_seconds: float


def timed_storescu(corpus: Corpus, aet: str, port: int, pid: int) -> Sent:
    before = cpu_seconds(pid)
    seconds = storescu(corpus, aet, port)
    return Sent(seconds, cpu_seconds(pid) - before)


# -- targets ----------------------------------------------------------------------------------------
def run_orthanc(corpus: Corpus, workdir: Path) -> Sent:
    pacs = OrthancServer(workdir / "orthanc", aet="ORTHANC", modalities={"bench": (SCU_AET, "127.0.0.1", 104)})
    pacs.start()
    try:
        sent = timed_storescu(corpus, "ORTHANC", pacs.dicom_port, listening_pid(pacs.dicom_port))
        held = int(pacs.rest("GET", "/statistics")["CountInstances"])
    finally:
        pacs.stop()
    if held != corpus.instances:
        raise RuntimeError(f"Orthanc holds {held} of {corpus.instances} instances")
    return sent


def run_floor(corpus: Corpus, workdir: Path, mode: str) -> Sent:
    """A bare pynetdicom Storage SCP with CAMI's network settings (bench/pynetdicom_scp.py)."""
    out = workdir / f"pynetdicom-{mode}"
    port = free_port()
    cmd = [sys.executable, str(ROOT / "bench" / "pynetdicom_scp.py"), str(port), mode, str(out)]
    workdir.mkdir(parents=True, exist_ok=True)
    with process(cmd, dcmtk_env(), port, workdir / f"pynetdicom-{mode}.log", f"pynetdicom {mode}") as proc:
        sent = timed_storescu(corpus, "FLOOR", port, proc.pid)
    if mode == "write":
        held = sum(1 for p in out.iterdir() if p.is_file())
        if held != corpus.instances:
            raise RuntimeError(f"the pynetdicom SCP wrote {held} of {corpus.instances} files")
    return sent


def run_storescp(corpus: Corpus, workdir: Path) -> Sent:
    out = workdir / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    cmd = [STORESCP, "-aet", "STORESCP", "+xa", "-od", str(out), str(port)]
    with process(cmd, dcmtk_env(), port, workdir / "storescp.log", "storescp") as proc:
        sent = timed_storescu(corpus, "STORESCP", port, proc.pid)
    held = sum(1 for p in out.iterdir() if p.is_file())
    if held != corpus.instances:
        raise RuntimeError(f"storescp wrote {held} of {corpus.instances} files")
    return sent


def write_senders(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "senders.toml").write_text(
        '[archive]\nae_title = "CAMI"\n\n'
        f'[[sender]]\nae_title = "{SCU_AET}"\norganisation = "{region()[0].code}"\nname = "bench storescu"\n',
        encoding="utf-8",
    )


def run_cami(corpus: Corpus, home: Path, backends: dict[str, str]) -> Sent:
    write_senders(home)
    env = {**os.environ, "CAMI_HOME": str(home), "CAMI_HTTP_PORT": str(free_port()), **backends}
    env.pop("CAMI_SENDERS", None)
    port = free_port()
    with process([CAMI, "serve", "--dicom-port", str(port)], env, port, home / "serve.log", "cami serve") as proc:
        sent = timed_storescu(corpus, "CAMI", port, proc.pid)
    verify_cami(corpus, home, env)
    return sent


def verify_cami(corpus: Corpus, home: Path, env: dict[str, str]) -> None:
    """Every instance in the SOP index, its blob in the store, exactly one InstanceReceived each.
    (Only this corpus's instances count: a Kafka broker shared between runs holds earlier ones too.)"""
    index = SopIndex(home / "sop-index.db")
    try:
        held = [index.latest(uid) for uid in corpus.sop_instance_uids]
    finally:
        index.close()
    digests = [h.sha256 for h in held if h is not None]
    if len(digests) != corpus.instances:
        raise RuntimeError(f"CAMI's SOP index holds {len(digests)} of {corpus.instances} instances")
    blobs = open_blob_store(env.get("CAMI_BLOBS", f"file://{home}/blobs"), env)
    try:
        missing = sum(1 for digest in digests if not blobs.exists(digest))
    finally:
        blobs.close()
    if missing:
        raise RuntimeError(f"{missing} of CAMI's instances have no blob")
    per_instance: Counter[str] = Counter()
    with open_event_log(env.get("CAMI_EVENT_LOG", f"sqlite://{home}/events.db")) as log:
        for partition in log.partitions(DICOM):
            offset = 0
            while records := log.read(DICOM, partition, offset, 1000):
                for record in records:
                    event = decode(record.value)
                    if event.type == "InstanceReceived" and event.payload["SOPInstanceUID"] in corpus.sop_instance_uids:
                        per_instance[str(event.payload["SOPInstanceUID"])] += 1
                offset = records[-1].offset + 1
    if len(per_instance) != corpus.instances or any(n != 1 for n in per_instance.values()):
        raise RuntimeError(
            f"CAMI logged {sum(per_instance.values())} InstanceReceived events for {len(per_instance)} instances, "
            f"expected exactly one for each of {corpus.instances}"
        )


# -- the run ----------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    for tool in (STORESCU, STORESCP):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing; run: bash infra/dicom-peers.sh install")
    results: dict[str, dict[str, dict[str, float]]] = {}
    failures: dict[str, dict[str, str]] = {}
    corpora: list[Corpus] = []
    with tempfile.TemporaryDirectory(prefix="cami-bench-ingest-") as tmp_name:
        tmp = Path(tmp_name)
        with console.status(f"writing a {args.instances}-instance CT study (512x512x16 bit)"):
            corpora.append(
                make_corpus("uncompressed", tmp / "study-plain", args.instances, ["1.2.840.10008.1.2.1"], seed=9000)
            )
        if args.associations > 1:
            plain = corpora[0]
            corpora.append(
                dataclasses.replace(
                    plain, name=f"uncompressed, {args.associations} associations", associations=args.associations
                )
            )
        if args.tiny > 0:
            with console.status(f"writing {args.tiny} tiny instances (8x8)"):
                corpora.append(make_tiny_corpus(tmp / "study-tiny", args.tiny, seed=9300))
        if not args.no_mixed:
            syntaxes = available_transfer_syntaxes()
            with console.status(f"writing {args.instances} instances over {len(syntaxes)} transfer syntaxes"):
                corpora.append(make_corpus("mixed syntaxes", tmp / "study-mixed", args.instances, syntaxes, seed=9100))

        servers: list[Any] = []
        kafka_backends: dict[str, str] = {}
        try:
            if not args.no_kafka:
                kafka, minio = KafkaServer(tmp / "kafka"), MinioServer(tmp / "minio")
                with console.status("starting Kafka and MinIO"):
                    kafka.start()
                    servers.append(kafka)
                    minio.start()
                    servers.append(minio)
                kafka_backends = {
                    "CAMI_EVENT_LOG": f"kafka://{kafka.bootstrap}",
                    "CAMI_BLOBS": f"s3://cami-bench?endpoint={minio.endpoint}",
                    "CAMI_S3_ACCESS_KEY": minio.access_key,
                    "CAMI_S3_SECRET_KEY": minio.secret_key,
                }
            for corpus in corpora:
                work = tmp / re.sub(r"\W+", "-", corpus.name)
                targets: list[tuple[str, Callable[[], Sent]]] = [
                    (ANCHOR, partial(run_orthanc, corpus, work)),
                    ("CAMI embedded", partial(run_cami, corpus, work / "cami-embedded", {})),
                ]
                if kafka_backends:
                    targets.append(("CAMI kafka+minio", partial(run_cami, corpus, work / "cami-kafka", kafka_backends)))
                if args.floors and corpus.transfer_syntaxes == ("1.2.840.10008.1.2.1",):
                    targets.append(("pynetdicom, no storage", partial(run_floor, corpus, work, "null")))
                    targets.append(("pynetdicom, write + fsync", partial(run_floor, corpus, work, "write")))
                targets.append(("dcmtk storescp", partial(run_storescp, corpus, work)))
                for name, send in targets:
                    with console.status(f"{corpus.name}: {corpus.instances} instances to {name}"):
                        try:
                            sent = send()
                        except Exception as exc:  # report the others; the run still exits non-zero
                            failures.setdefault(corpus.name, {})[name] = f"{type(exc).__name__}: {exc}"
                            console.print(f"[red]{corpus.name}: {name} failed: {exc}[/red]")
                            continue
                    results.setdefault(corpus.name, {})[name] = {
                        "seconds": sent.seconds,
                        "instances_per_s": corpus.instances / sent.seconds,
                        "mb_per_s": corpus.bytes / sent.seconds / 1e6,
                        "server_cpu_ms_per_instance": 1000 * sent.cpu_seconds / corpus.instances,
                    }
                    console.print(f"{corpus.name}: {name} {corpus.instances / sent.seconds:,.0f} instances/s")
        finally:
            for server in reversed(servers):
                server.stop()
    return {
        "corpora": {
            c.name: {"instances": c.instances, "mb": c.bytes / 1e6, "transfer_syntaxes": list(c.transfer_syntaxes)}
            for c in corpora
        },
        "results": results,
        "ratio_to_orthanc": {
            corpus: {name: r["instances_per_s"] / rows[ANCHOR]["instances_per_s"] for name, r in rows.items()}
            for corpus, rows in results.items()
            if ANCHOR in rows
        },
        "failures": failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=1000, help="instances per study (default 1000)")
    parser.add_argument(
        "--associations", type=int, default=4, help="concurrent associations in the second run (1: skip it)"
    )
    parser.add_argument("--tiny", type=int, default=10_000, help="tiny (8x8) instances to send (0: skip)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the variant with several transfer syntaxes")
    parser.add_argument("--no-kafka", action="store_true", help="skip CAMI on Kafka + MinIO")
    parser.add_argument(
        "--floors",
        action="store_true",
        help="also send to a bare pynetdicom Storage SCP (nothing stored; write + fsync): pynetdicom's own cost",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.instances < 1:
        parser.error("--instances must be at least 1")
    report = run(args)
    status = 1 if report["failures"] else 0
    if args.json:
        print(json.dumps(report, indent=2))
        return status
    for corpus, rows in report["results"].items():
        info = report["corpora"][corpus]
        table = Table(
            title=f"storescu -> target, {info['instances']} instances, {info['mb']:.0f} MB ({corpus}); "
            "ratio = target / Orthanc"
        )
        for col in ("target", "seconds", "instances/s", "MB/s", "server CPU ms/instance", "ratio"):
            table.add_column(col, justify="right")
        for name, r in rows.items():
            table.add_row(
                name,
                f"{r['seconds']:.2f}",
                f"{r['instances_per_s']:,.0f}",
                f"{r['mb_per_s']:,.1f}",
                f"{r['server_cpu_ms_per_instance']:.2f}",
                f"{report['ratio_to_orthanc'].get(corpus, {}).get(name, float('nan')):.2f}",
            )
        for name, error in report["failures"].get(corpus, {}).items():
            table.add_row(name, "failed", "", "", "", "", style="red")
            console.print(f"[red]{corpus} -> {name}: {error}[/red]")
        Console().print(table)
    return status


if __name__ == "__main__":
    sys.exit(main())
