"""QIDO-RS and C-FIND latency: CAMI side by side with Orthanc (+ its DICOMweb plugin), then CAMI
alone on a large synthetic index.

    python bench/qido.py [--studies 5000] [--instances 20] [--repeat 30]
                         [--synthetic-studies 100000] [--synthetic-instances 50] [--steps 0.1,1]
                         [--skip-orthanc] [--skip-synthetic] [--json]

**Side by side.** ``--studies`` small studies (``--instances`` 8x8 CT instances each, in two
series; 5,000 x 20 = 100,000 by default) are written once and sent with dcmtk's storescu to both
archives started in this run, each in its own process: CAMI as ``cami serve`` on the embedded
defaults (Storage and Q/R SCP, the embedded runner with every projection, the HTTP app) and
Orthanc (Debian package, infra/orthanc.sh, SQLite index, DICOMweb plugin).
Once both hold every instance, each kind of query below runs ``--repeat`` times with parameters
drawn from the data (the same draws for both), over HTTP (httpx, one keep-alive connection;
CAMI with a bearer token, and each CAMI request appends its RecordAccessed event before
answering) and over DICOM (pynetdicom, Study Root C-FIND on one open association, its standard
log handlers off as findscu formats nothing, and its polling sleeps replaced by waits as in
CAMI's own SCUs: ``ingest/netio.py``). Result
counts are compared between the two archives, so both answer the same question.

**Growth.** CAMI alone on a synthetic query model of ``--synthetic-studies`` studies x
``--synthetic-instances`` instance rows (100,000 x 50 = 5,000,000 by default), written into the
query store of a running ``cami serve`` through the write path of the ``query-model`` projection's
sink (the fold's instance rows; index rows only: no blobs, no events), in steps (``--steps`` fractions of the total),
measuring the same queries through the HTTP app and the Q/R SCP after each step.

p50/p95 are in milliseconds; "ratio" is CAMI / Orthanc (below 1: CAMI faster).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian  # noqa: E402
from pynetdicom import AE  # noqa: E402
from pynetdicom import _config as pynetdicom_config  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from api.auth import add_user  # noqa: E402
from api.config import Settings  # noqa: E402
from ingest import netio  # noqa: E402
from projections.archive_index.fold import INSTANCES  # noqa: E402
from projections.query_model.store import QueryStore, open_query_store  # noqa: E402
from streams.processing import Row  # noqa: E402
from tests.support.servers import OrthancServer, free_port, free_ports  # noqa: E402

console = Console(stderr=True)
STORESCU = "/usr/bin/storescu"
BENCH_AE = "BENCH_SCU"
ORG = "1.2.643.5.1.13.13.12.2.50.1001"
ROOT_UID = "1.2.826.0.1.3680043.8.498."
SURNAMES = ["Иванов", "Петрова", "Сидоров", "Кузнецова", "Смирнов", "Попова", "Волков", "Морозова"]
GIVEN = ["Иван", "Анна", "Олег", "Мария"]
MODALITIES = ["CT", "MR", "US", "DX", "CR"]
DAY0 = np.datetime64("2020-01-01")
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Query/Retrieve Information Model - FIND


# -- the data set -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StudyFacts:
    study_uid: str
    series_uids: tuple[str, ...]
    patient_id: str
    patient_name: str
    study_date: str
    modality: str
    accession: str


def study_facts(s: int, prefix: str) -> StudyFacts:
    """Study number ``s``: two studies per patient, dates spread over ~6.5 years."""
    p = s // 2
    day = DAY0 + int(s * 7919 % 2400)
    study_uid = f"{prefix}{s}"
    return StudyFacts(
        study_uid=study_uid,
        series_uids=(f"{study_uid}.1", f"{study_uid}.2"),
        patient_id=f"BP-{p}",
        patient_name=f"{SURNAMES[p % 8]}^{GIVEN[(p // 8) % 4]}",
        study_date=str(day).replace("-", ""),
        modality=MODALITIES[s % 5],
        accession=f"A{s}",
    )


def write_files(folder: Path, studies: int, instances: int, prefix: str) -> list[Path]:
    """The studies as Part-10 files, in chunk folders (one storescu run each)."""
    chunks: list[Path] = []
    pixels = (np.arange(64, dtype=np.uint16) * 37).tobytes()
    for s in range(studies):
        facts = study_facts(s, prefix)
        chunk = folder / f"chunk-{s // 250:04d}"
        if not chunks or chunks[-1] != chunk:
            chunk.mkdir(parents=True)
            chunks.append(chunk)
        for i in range(instances):
            ds = Dataset()
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
            ds.SOPInstanceUID = f"{facts.series_uids[i % 2]}.{i // 2 + 1}"
            ds.StudyInstanceUID = facts.study_uid
            ds.SeriesInstanceUID = facts.series_uids[i % 2]
            ds.PatientName = facts.patient_name
            ds.PatientID = facts.patient_id
            ds.PatientBirthDate = "19700101"
            ds.PatientSex = "F"
            ds.StudyDate = facts.study_date
            ds.StudyTime = "101500"
            ds.AccessionNumber = facts.accession
            ds.StudyID = "1"
            ds.StudyDescription = "Исследование"
            ds.ReferringPhysicianName = "Смирнов^Олег"
            ds.Modality = facts.modality
            ds.SeriesNumber = i % 2 + 1
            ds.InstanceNumber = i // 2 + 1
            ds.Rows = ds.Columns = 8
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.PixelData = pixels
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = ds.SOPClassUID
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds.file_meta = meta
            ds.save_as(chunk / f"{s:06d}-{i:03d}.dcm", enforce_file_format=True)
    return chunks


def send_all(chunks: Sequence[Path], port: int, called: str) -> float:
    """storescu every chunk folder (two at a time); returns the seconds it took."""

    def send(chunk: Path) -> None:
        proc = subprocess.run(
            [STORESCU, "-nh", "-aet", BENCH_AE, "-aec", called, "+sd", "+r", "127.0.0.1", str(port), str(chunk)],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            text=True,
            timeout=3600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"storescu to {called} failed: {proc.stderr[-2000:]}")

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(send, chunks))
    return time.perf_counter() - started


# -- CAMI ---------------------------------------------------------------------------------------------------
@dataclass
class CamiHttp:
    url: str


@dataclass
class CamiDicom:
    port: int


@dataclass
class Cami:
    """``cami serve`` on the embedded defaults under ``home``, in its own process as Orthanc runs
    in its own: the measuring client (httpx, pynetdicom) shares no interpreter with the server."""

    home: Path
    process: subprocess.Popen[bytes]
    scp: CamiDicom
    http: CamiHttp
    token: str

    @classmethod
    def start(cls, home: Path) -> Cami:
        home.mkdir(parents=True, exist_ok=True)
        (home / "senders.toml").write_text(
            '[archive]\nae_title = "CAMI"\n\n'
            f'[[sender]]\nae_title = "{BENCH_AE}"\norganisation = "{ORG}"\nname = "bench"\n\n'
            f'[[qr_caller]]\nae_title = "{BENCH_AE}"\norganisation = "{ORG}"\nrole = "radiologist"\n',
            encoding="utf-8",
        )
        _, token = add_user(
            home / "users.toml", "bench", role="radiologist", organisation=ORG, doctor_code="R-1", doctor_name="Тест^Т"
        )
        dicom_port, http_port = free_ports(2)
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "CAMI_HOME": str(home),
            "CAMI_DICOM_PORT": str(dicom_port),
            "CAMI_HTTP_PORT": str(http_port),
            "TCP_NODELAY": "1",
        }
        with (home / "serve.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "api.cli", "serve"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        cami = cls(home, process, CamiDicom(dicom_port), CamiHttp(f"http://127.0.0.1:{http_port}"), token)
        deadline = time.monotonic() + 180
        while not cami._answers():
            if process.poll() is not None or time.monotonic() > deadline:
                cami.stop()
                tail = (home / "serve.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"cami serve did not start: {tail}")
            time.sleep(0.2)
        return cami

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.scp.port), timeout=1):
                pass
            return httpx.get(f"{self.http.url}/openapi.json", timeout=2).status_code == 200
        except (OSError, httpx.HTTPError):
            return False

    def query_store(self) -> QueryStore:
        """The query store ``cami serve`` reads (SQLite: this process may write it beside the server)."""
        return open_query_store(Settings.from_env({"CAMI_HOME": str(self.home)}).query_store_url)

    def indexed(self) -> int:
        """Instances the query store holds (QIDO-RS and C-FIND read it), read from its file."""
        with contextlib.closing(sqlite3.connect(f"file:{self.home / 'query.db'}?mode=ro", uri=True)) as db:
            try:
                row = db.execute("SELECT coalesce(sum(instance_count), 0) FROM qm_studies").fetchone()
            except sqlite3.OperationalError:  # not created yet
                return 0
        return int(row[0])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# -- measuring ------------------------------------------------------------------------------------------------
@dataclass
class Target:
    name: str
    http: httpx.Client
    qido_root: str
    dicom_port: int
    called_ae: str


@dataclass
class Query:
    kind: str
    qido: Callable[[StudyFacts], tuple[str, dict[str, str]]]
    find: Callable[[StudyFacts], Dataset] | None


def _identifier(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "ModalitiesInStudy"):
        setattr(ds, keyword, "")
    if level == "SERIES":
        ds.SeriesInstanceUID = ds.Modality = ds.SeriesNumber = ""
    if level == "IMAGE":
        ds.SeriesInstanceUID = ds.SOPInstanceUID = ds.InstanceNumber = ""
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _month(facts: StudyFacts) -> str:
    return f"{facts.study_date[:6]}01-{facts.study_date[:6]}28"


QUERIES = [
    Query(
        "studies by PatientID",
        lambda f: ("/studies", {"PatientID": f.patient_id}),
        lambda f: _identifier("STUDY", PatientID=f.patient_id),
    ),
    Query(
        "studies by PatientName prefix + date",
        lambda f: ("/studies", {"PatientName": f.patient_name[:6] + "*", "StudyDate": f.study_date}),
        lambda f: _identifier("STUDY", PatientName=f.patient_name[:6] + "*", StudyDate=f.study_date),
    ),
    Query(
        "studies by AccessionNumber",
        lambda f: ("/studies", {"AccessionNumber": f.accession}),
        lambda f: _identifier("STUDY", AccessionNumber=f.accession),
    ),
    Query(
        "studies in a month, one modality",
        lambda f: ("/studies", {"StudyDate": _month(f), "ModalitiesInStudy": f.modality, "limit": "100"}),
        lambda f: _identifier("STUDY", StudyDate=_month(f), ModalitiesInStudy=f.modality),
    ),
    Query(
        "series of a study",
        lambda f: (f"/studies/{f.study_uid}/series", {}),
        lambda f: _identifier("SERIES", StudyInstanceUID=f.study_uid),
    ),
    Query(
        "instances of a series",
        lambda f: (f"/studies/{f.study_uid}/series/{f.series_uids[0]}/instances", {}),
        lambda f: _identifier("IMAGE", StudyInstanceUID=f.study_uid, SeriesInstanceUID=f.series_uids[0]),
    ),
    Query("newest 100 studies (no key)", lambda f: ("/studies", {"limit": "100"}), None),
]


@dataclass
class Timing:
    latencies: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        if not self.latencies:
            return {}
        ordered = sorted(self.latencies)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return {
            "p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(p95 * 1000, 1),
            "mean_results": round(statistics.mean(self.counts), 1),
        }


def qido(target: Target, path: str, params: dict[str, str]) -> tuple[float, int]:
    started = time.perf_counter()
    answer = target.http.get(target.qido_root + path, params=params)
    elapsed = time.perf_counter() - started
    if answer.status_code not in (200, 204):
        raise RuntimeError(f"{target.name} QIDO {path} answered {answer.status_code}: {answer.text[:300]}")
    return elapsed, len(answer.json()) if answer.content else 0


def c_find(assoc: Any, ds: Dataset) -> tuple[float, int]:
    started = time.perf_counter()
    matches = 0
    for status, found in assoc.send_c_find(ds, STUDY_ROOT_FIND):
        if status is None or status.Status not in (0xFF00, 0xFF01, 0x0000):
            raise RuntimeError(f"C-FIND failed: {status}")
        if found is not None and status.Status in (0xFF00, 0xFF01):
            matches += 1
    return time.perf_counter() - started, matches


def associate(target: Target) -> Any:
    # the client formats nothing it sends or receives (as findscu): pynetdicom's standard handlers
    # would format every PDU and message of both archives' answers in this process
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    # nor does it pretty-print each identifier for a debug log nobody reads: pynetdicom formats
    # them whatever the log level (about 1 ms per C-FIND response, for either archive)
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    # and, like findscu, it does not sleep between looks at its socket: stock pynetdicom's two
    # 1 ms polling sleeps per association thread would add a few ms to every response of either
    # archive (most of a C-FIND's time at 10-100 matches), so the client waits as CAMI's own
    # SCUs do (ingest/netio.py)
    netio.install()
    ae = AE(ae_title=BENCH_AE)
    ae.add_requested_context(STUDY_ROOT_FIND)
    assoc = ae.associate("127.0.0.1", target.dicom_port, ae_title=target.called_ae)
    if not assoc.is_established:
        raise RuntimeError(f"{target.name}: Q/R association not established")
    # as dcmtk's findscu with TCP_NODELAY=1: without it Nagle + delayed ACK add ~40 ms per exchange
    transport = assoc.dul.socket
    assert transport is not None and transport.socket is not None
    transport.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return assoc


def measure(targets: Sequence[Target], draws: Sequence[StudyFacts]) -> dict[str, dict[str, dict[str, Any]]]:
    """query kind -> "<target> qido" / "<target> c-find" -> summary; every draw asked of every target."""
    results: dict[str, dict[str, dict[str, Any]]] = {}
    associations = {t.name: associate(t) for t in targets}
    try:
        for query in QUERIES:
            timings = {f"{t.name} {channel}": Timing() for t in targets for channel in ("qido", "c-find")}
            for target in targets:  # warm-up: first request per kind and target is not counted
                qido(target, *query.qido(draws[0]))
            for facts in draws:
                for target in targets:
                    elapsed, count = qido(target, *query.qido(facts))
                    timings[f"{target.name} qido"].latencies.append(elapsed)
                    timings[f"{target.name} qido"].counts.append(count)
                    if query.find is not None:
                        elapsed, count = c_find(associations[target.name], query.find(facts))
                        timings[f"{target.name} c-find"].latencies.append(elapsed)
                        timings[f"{target.name} c-find"].counts.append(count)
            results[query.kind] = {name: timing.summary() for name, timing in timings.items()}
            console.print(f"  {query.kind}: done")
    finally:
        for assoc in associations.values():
            assoc.release()
    return results


# -- part 1: side by side -----------------------------------------------------------------------------------
def side_by_side(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    total = args.studies * args.instances
    console.print(f"writing {args.studies} studies x {args.instances} instances…")
    facts_prefix = f"{ROOT_UID}7.{os.getpid()}."
    chunks = write_files(tmp / "files", args.studies, args.instances, facts_prefix)
    cami = Cami.start(tmp / "cami")
    orthanc: OrthancServer | None = None
    try:
        load: dict[str, float] = {}
        console.print(f"sending {total} instances to CAMI…")
        started = time.perf_counter()
        load["cami_send_s"] = send_all(chunks, cami.scp.port, "CAMI")
        deadline = time.monotonic() + 3600
        while cami.indexed() < total:
            if time.monotonic() > deadline:
                raise RuntimeError("CAMI did not index every instance in an hour")
            time.sleep(0.5)
        load["cami_indexed_s"] = time.perf_counter() - started
        targets = [
            Target(
                "CAMI",
                httpx.Client(headers={"Authorization": f"Bearer {cami.token}"}, timeout=600),
                f"{cami.http.url}/dicomweb",
                cami.scp.port,
                "CAMI",
            )
        ]
        if not args.skip_orthanc:
            orthanc = OrthancServer(tmp / "orthanc", modalities={"bench": (BENCH_AE, "127.0.0.1", free_port())})
            orthanc.start()
            console.print(f"sending {total} instances to Orthanc…")
            load["orthanc_send_s"] = send_all(chunks, orthanc.dicom_port, orthanc.aet)
            count = int(orthanc.rest("GET", "/statistics")["CountInstances"])
            if count != total:
                raise RuntimeError(f"Orthanc holds {count} instances, expected {total}")
            targets.append(
                Target(
                    "Orthanc", httpx.Client(timeout=600), f"{orthanc.url}/dicom-web", orthanc.dicom_port, orthanc.aet
                )
            )
        rng = random.Random(5)
        draws = [study_facts(rng.randrange(args.studies), facts_prefix) for _ in range(args.repeat)]
        console.print("measuring…")
        results = measure(targets, draws)
        for target in targets:
            target.http.close()
        return {
            "studies": args.studies,
            "instances": total,
            "repeat": args.repeat,
            "load_s": {k: round(v, 1) for k, v in load.items()},
            "queries": results,
        }
    finally:
        cami.stop()
        if orthanc is not None:
            orthanc.stop()


# -- part 2: CAMI alone, synthetic index ------------------------------------------------------------------
SYNTHETIC_PREFIX = f"{ROOT_UID}8."


def synthetic_rows(first: int, last: int, instances: int) -> list[Row]:
    """The fold's instance rows (``archive_instances``, as :class:`ArchiveIndex` makes them from
    InstanceReceived) of studies ``first``..``last - 1``, with the facts of :func:`study_facts`."""
    rows: list[Row] = []
    received_at = datetime.now(UTC)
    for s in range(first, last):
        facts = study_facts(s, SYNTHETIC_PREFIX)
        study_date = date.fromisoformat(f"{facts.study_date[:4]}-{facts.study_date[4:6]}-{facts.study_date[6:]}")
        for i in range(instances):
            series_uid = facts.series_uids[i % 2]
            sop_uid = f"{series_uid}.{i // 2 + 1}"
            rows.append(
                Row(
                    INSTANCES,
                    {
                        "study_uid": facts.study_uid, "series_uid": series_uid, "sop_uid": sop_uid, "version": 1,
                        "patient_id": facts.patient_id, "issuer_of_patient_id": None,
                        "patient_name": facts.patient_name, "patient_birth_date": "19700101", "patient_sex": "F",
                        "study_date": study_date, "study_date_text": facts.study_date, "study_time": "101500",
                        "study_id": "1", "study_description": "Исследование", "accession_number": facts.accession,
                        "referring_physician": "Смирнов^Олег", "institution_name": "ОКБ",
                        "performing_physician_code": "D-1", "performing_physician_name": "Орлова^Анна",
                        "procedure_code": "A06", "procedure_scheme": "RU", "procedure_meaning": "КТ",
                        "series_number": i % 2 + 1, "series_description": "series", "modality": facts.modality,
                        "body_part": "CHEST", "instance_number": i // 2 + 1,
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2", "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "rows": 8, "columns": 8, "frames": None, "blob_sha256": "0" * 64, "blob_size": 2048,
                        "blob_store": "file://", "organisation": ORG, "calling_ae_title": BENCH_AE,
                        "channel": "dicom", "pathology": True, "emergency": False, "missing": [],
                        "received_at": received_at, "event_id": uuid.uuid4(), "topic": "cami.dicom",
                        "partition": 0, "log_version": s * instances + i,
                    },
                )
            )  # fmt: skip
    return rows


def insert_synthetic(store: QueryStore, first: int, last: int, instances: int) -> None:
    """Studies ``first``..``last - 1`` into the query store, through the write path the
    ``query-model`` projection's sink uses (rows upserted, study and series rows recomputed), in
    batches of about 25,000 instance rows (index rows only: no blobs, no events)."""
    step = max(1, 25_000 // instances)
    for start in range(first, last, step):
        store.apply(synthetic_rows(start, min(last, start + step), instances))


def synthetic(tmp: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    cami = Cami.start(tmp / "cami-synthetic")
    store = cami.query_store()
    try:
        target = Target(
            "CAMI",
            httpx.Client(headers={"Authorization": f"Bearer {cami.token}"}, timeout=600),
            f"{cami.http.url}/dicomweb",
            cami.scp.port,
            "CAMI",
        )
        steps = sorted({float(x) for x in args.steps.split(",")})
        done, out = 0, []
        for fraction in steps:
            studies = max(1, round(args.synthetic_studies * fraction))
            console.print(f"synthetic index: inserting studies {done}..{studies - 1}…")
            started = time.perf_counter()
            insert_synthetic(store, done, studies, args.synthetic_instances)
            inserted = time.perf_counter() - started
            done = studies
            rng = random.Random(7)
            draws = [study_facts(rng.randrange(studies), SYNTHETIC_PREFIX) for _ in range(args.repeat)]
            console.print(f"measuring at {studies} studies / {studies * args.synthetic_instances} rows…")
            out.append(
                {
                    "studies": studies,
                    "instance_rows": studies * args.synthetic_instances,
                    "insert_s": round(inserted, 1),
                    "queries": measure([target], draws),
                }
            )
        target.http.close()
        return out
    finally:
        store.close()
        cami.stop()


# -- report -------------------------------------------------------------------------------------------------
def _cell(summary: dict[str, Any], key: str) -> str:
    return f"{summary[key]:.1f}" if summary else "—"


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> str:
    return f"{a['p50_ms'] / b['p50_ms']:.2f}" if a and b and b["p50_ms"] else "—"


def print_report(report: dict[str, Any]) -> None:
    out = Console()
    if "side_by_side" in report:
        part = report["side_by_side"]
        table = Table(
            title=f"{part['studies']} studies / {part['instances']} instances, {part['repeat']} draws per query "
            f"(load: {part['load_s']})"
        )
        for col in ("query", "channel", "CAMI p50", "CAMI p95", "Orthanc p50", "Orthanc p95", "ratio", "results"):
            table.add_column(col, justify="left" if col in ("query", "channel") else "right")
        for kind, rows in part["queries"].items():
            for channel in ("qido", "c-find"):
                cami, orthanc = rows.get(f"CAMI {channel}", {}), rows.get(f"Orthanc {channel}", {})
                if not cami and not orthanc:
                    continue
                same = "" if not orthanc or cami.get("mean_results") == orthanc.get("mean_results") else " (differs)"
                table.add_row(
                    kind,
                    channel,
                    _cell(cami, "p50_ms"),
                    _cell(cami, "p95_ms"),
                    _cell(orthanc, "p50_ms"),
                    _cell(orthanc, "p95_ms"),
                    _ratio(cami, orthanc),
                    f"{cami.get('mean_results', '—')}{same}",
                )
        out.print(table)
    for step in report.get("synthetic", []):
        table = Table(
            title=f"CAMI alone, synthetic index: {step['studies']} studies / {step['instance_rows']} instance rows "
            f"(inserted in {step['insert_s']} s)"
        )
        for col in ("query", "QIDO p50", "QIDO p95", "C-FIND p50", "C-FIND p95", "results"):
            table.add_column(col, justify="left" if col == "query" else "right")
        for kind, rows in step["queries"].items():
            q, f = rows.get("CAMI qido", {}), rows.get("CAMI c-find", {})
            table.add_row(
                kind, _cell(q, "p50_ms"), _cell(q, "p95_ms"), _cell(f, "p50_ms"), _cell(f, "p95_ms"),
                str(q.get("mean_results", "—")),
            )  # fmt: skip
        out.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=20, help="instances per study (side by side)")
    parser.add_argument("--repeat", type=int, default=30, help="draws per query kind")
    parser.add_argument("--synthetic-studies", type=int, default=100_000)
    parser.add_argument("--synthetic-instances", type=int, default=50, help="instance rows per synthetic study")
    parser.add_argument("--steps", default="0.1,1", help="fractions of the synthetic index to measure at")
    parser.add_argument("--skip-orthanc", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--skip-side-by-side", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    for name in ("studies", "instances", "repeat", "synthetic_studies", "synthetic_instances"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="cami-bench-qido-") as tmp:
        if not args.skip_side_by_side:
            report["side_by_side"] = side_by_side(Path(tmp), args)
        if not args.skip_synthetic:
            report["synthetic"] = synthetic(Path(tmp), args)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
