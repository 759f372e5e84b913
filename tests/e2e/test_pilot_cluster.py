"""The pilot region on redundant servers, every part a real process: three Kafka brokers
(replication 3, min.insync 2), MinIO over four drives (one erasure set), a ClickHouse endpoint,
PostgreSQL holding the query store, two ``cami serve`` nodes behind haproxy and a
``cami workers`` process running the projections.

* Two studies are sent with storescu through the balancer while a broker is killed and a MinIO
  drive taken away: every instance answered Success is in the log and the archive index once and
  comes back byte-identical; ``/readyz`` and ``cami status`` say what is degraded, and say it no
  more once the broker and the drive are back. The hospital then sends both studies again, as it
  would after failures: nothing is recorded twice and nothing is missing.
* The same SOPInstanceUID sent to both nodes at the same moment, 50 times: one event per
  distinct content, never two.
* Storage commitment asked of the node that did not store the instance: committed.

The ClickHouse endpoint is the test-only one in front of the ClickHouse engine
(``tests/support/chdb_http.py``): no ClickHouse server package can run on these machines.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from ingest.agent.commitment import CommitmentWaiter
from ingest.commitment import REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_INSTANCE, STORAGE_COMMITMENT_PUSH
from ingest.dicom import split_part10
from projections.warehouse import open_warehouse
from schemas.codec import decode
from streams import open_event_log
from streams.topics import ORDERS
from tests.support import studies
from tests.support.agent_region import ADMIN_TOKEN, Cami, Process, _clean_env, wait_for
from tests.support.chdb_http import ChdbHttpServer
from tests.support.cli import CAMI
from tests.support.commitment_receiver import CommitmentReceiver
from tests.support.dicomweb import split_multipart
from tests.support.events import received_versions
from tests.support.mpps import MPPS, step
from tests.support.postgres import PostgresServer
from tests.support.readside import ROOT_UID
from tests.support.servers import HaproxyServer, KafkaCluster, MinioServer, free_ports

pytestmark = [pytest.mark.kafka, pytest.mark.s3, pytest.mark.clickhouse_http, pytest.mark.slow]

AGENT = "PILOT_AGENT"
CT = "1.2.840.10008.5.1.4.1.1.2"
#: instances per study: enough that the failures happen while storescu is still sending
PER_STUDY = 40
#: the broker and the drive that fail
BROKER, DRIVE = 2, 3


@dataclass
class Region:
    kafka: KafkaCluster
    minio: MinioServer
    clickhouse: ChdbHttpServer
    nodes: list[Cami]
    workers: Process
    balancer: HaproxyServer
    env: dict[str, str]

    def ready(self, node: Cami) -> dict[str, Any]:
        answer = httpx.get(node.base_url + "/readyz", timeout=10)
        body: dict[str, Any] = answer.json()
        body["http_status"] = answer.status_code
        return body

    def received(self) -> Counter[tuple[str, int]]:
        """InstanceReceived events in the log, by (SOPInstanceUID, version)."""
        with open_event_log(self.env["CAMI_EVENT_LOG"]) as log:
            return received_versions(log)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    root = tmp_path_factory.mktemp("pilot-cluster")
    with (
        KafkaCluster(root / "kafka", nodes=3) as kafka,
        MinioServer(root / "minio", drives=4) as minio,
        ChdbHttpServer(root / "clickhouse") as clickhouse,
        PostgresServer() as postgres,
    ):
        env = {
            "CAMI_EVENT_LOG": f"kafka://{kafka.bootstrap}?replication=3&min_insync=2",
            "CAMI_BLOBS": f"s3://pilot?endpoint={minio.endpoint}",
            "AWS_ACCESS_KEY_ID": minio.access_key,
            "AWS_SECRET_ACCESS_KEY": minio.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "CAMI_CLICKHOUSE": clickhouse.url,
            # the nodes and the workers share the query store, as on several hosts
            "CAMI_QUERY_STORE": postgres.url_for(schema="pilot"),
        }
        ports = free_ports(6)
        nodes = [
            Cami(root / f"node{i}", ports[2 * i], ports[2 * i + 1], AGENT, ports[4 + i], env_extra=env) for i in (0, 1)
        ]
        for node in nodes:  # a pilot: any modality may send (behind the balancer every caller is 127.0.0.1)
            senders = (node.home / "senders.toml").read_text(encoding="utf-8")
            (node.home / "senders.toml").write_text(
                senders.replace("accept_unknown = false", "accept_unknown = true"), encoding="utf-8"
            )
        # the workers log JSON lines, as for a collector
        workers_env = _clean_env({"CAMI_HOME": str(root / "workers"), "CAMI_LOG_FORMAT": "json", **env})
        workers = Process(["workers"], workers_env, root / "workers.log")
        (root / "workers").mkdir()
        balancer = HaproxyServer(
            root / "haproxy",
            backends=[f"127.0.0.1:{n.dicom_port}" for n in nodes],
            http_backends=[f"127.0.0.1:{n.http_port}" for n in nodes],
            check_interval="1s",
            balance="roundrobin",
        )
        try:
            for node in nodes:
                node.start()
            workers.start()
            balancer.start()
            for server in ("dicom/dicom1", "dicom/dicom2", "http/http1", "http/http2"):
                balancer.wait_server(server, "UP", timeout=60)
            yield Region(kafka, minio, clickhouse, nodes, workers, balancer, env)
        finally:
            balancer.stop()
            workers.stop()
            for node in nodes:
                node.process.stop()


def fail(region: Region, broker: int, drive: int) -> None:
    """Kill a broker; take a drive away and keep it away: MinIO would make a new, empty one where
    the old one was and heal it within seconds (a replaced drive), so a file stands in its place
    until :func:`bring_back`."""
    region.kafka.kill_node(broker)
    region.minio.fail_drive(drive)
    path = region.minio.drive_path(drive)
    if path.is_dir():
        shutil.rmtree(path)
    path.write_bytes(b"")


def bring_back(region: Region, broker: int, drive: int) -> None:
    """The broker and the drive back (whatever the test got to: it runs in ``finally``)."""
    if not region.kafka.node_running(broker):
        region.kafka.start_node(broker)
    path = region.minio.drive_path(drive)
    if path.is_file():
        path.unlink()
        region.minio.restore_drive(drive)


def is_ready(region: Region, node: Cami) -> bool:
    return bool(region.ready(node)["status"] == "ready")


def cami_status(region: Region, node: Cami, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAMI), "status", *args], env=node.process.env, capture_output=True, text=True, timeout=180, check=False
    )


def _data_set(data: bytes) -> tuple[str, bytes]:
    """(transfer syntax, the data set's bytes after the Part-10 meta header)."""
    split = split_part10(data)
    return split.transfer_syntax, data[split.dataset_offset :]


def _send_watching(
    host: str, port: int, files: list[Path], calling: str, on_success: threading.Event, output: list[str]
) -> subprocess.Popen[str]:
    """storescu in the background, ``on_success`` set once it has logged a few successes."""
    proc = subprocess.Popen(
        ["/usr/bin/storescu", "-v", "-nh", "-aet", calling, "-aec", "CAMI", host, str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=studies.DCMTK_ENV,
    )

    def watch() -> None:
        assert proc.stdout is not None
        successes = 0
        for line in proc.stdout:
            output.append(line)
            if "Received Store Response (Success)" in line:
                successes += 1
                if successes == 5:
                    on_success.set()
        on_success.set()

    threading.Thread(target=watch, daemon=True).start()
    return proc


def test_two_studies_through_the_balancer_while_a_broker_and_a_drive_fail(region: Region, tmp_path: Path) -> None:
    for node in region.nodes:
        wait_for(f"{node.base_url} ready", partial(is_ready, region, node), timeout=120)
    sent: list[studies.SentFile] = []
    for number in (1, 2):
        study, series = str(generate_uid(prefix=ROOT_UID)), str(generate_uid(prefix=ROOT_UID))
        for i in range(1, PER_STUDY + 1):
            ds = studies.instance(study, series, i, patient_id=f"PILOT-C{number}", size=256)
            path = tmp_path / f"s{number}-{i:03d}.dcm"
            path.write_bytes(studies.part10_bytes(ds))
            sent.append(studies.SentFile(path, str(ds.SOPInstanceUID), ExplicitVRLittleEndian))
    halves = [sent[:PER_STUDY], sent[PER_STUDY:]]

    # two modalities at once through the balancer (round robin: one association per node)
    outputs: list[list[str]] = [[], []]
    started = [threading.Event(), threading.Event()]
    senders = [
        _send_watching("127.0.0.1", region.balancer.port, [f.path for f in half], f"CT{i}", started[i], outputs[i])
        for i, half in enumerate(halves)
    ]
    for event in started:
        assert event.wait(120), "storescu stored nothing"
    fail(region, BROKER, DRIVE)
    try:
        for proc in senders:
            assert proc.wait(600) is not None
        time.sleep(0.5)  # the watcher threads read the last lines
        told = {}
        for output in outputs:
            told.update(studies.outcomes("".join(output)))
        stored = {f.sop_instance_uid for f in sent if told.get(str(f.path)) == "Success"}
        assert len(stored) >= 10, told  # ingest went on after the first successes
        sent_after_failures = [o for output in outputs for o in output[-PER_STUDY // 2 :]]
        assert any("Success" in line for line in sent_after_failures)

        # the nodes say what is degraded, and stay ready: the cluster still takes writes
        last: list[dict[str, Any]] = []

        def degraded(node: Cami) -> dict[str, Any] | None:
            ready = region.ready(node)
            last[:] = [ready]
            checks = ready["checks"]
            both = checks["event_log"]["status"] == "degraded" and checks["blobs"]["status"] == "degraded"
            return ready if both else None

        for node in region.nodes:
            try:
                ready = wait_for("the degradation in /readyz", partial(degraded, node), timeout=120, every=1)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; last answer {last}") from None
            assert ready["http_status"] == 200 and ready["status"] == "degraded", ready
        status = cami_status(region, region.nodes[0], "--json")
        assert status.returncode == 0, status.stderr[-3000:]
        health = json.loads(status.stdout)["health"]
        assert health["event_log"]["status"] == "degraded" and health["blobs"]["status"] == "degraded", health
        shown = " ".join(cami_status(region, region.nodes[1]).stdout.split())
        assert "event log: DEGRADED" in shown and "blob store: DEGRADED" in shown, shown

        # every instance told Success: in the log once, in the archive index once, byte-identical
        events = region.received()
        for sop in stored:
            assert [(v, n) for (s, v), n in events.items() if s == sop] == [(1, 1)], sop
        warehouse = open_warehouse(region.env["CAMI_CLICKHOUSE"])

        def indexed() -> dict[str, int]:
            rows = warehouse.query(
                "SELECT sop_uid, count() FROM archive_instances FINAL"
                " WHERE sop_uid IN {sops:Array(String)} GROUP BY sop_uid",
                {"sops": sorted(stored)},
            ).rows
            return {str(sop): int(n) for sop, n in rows}

        wait_for("the stored instances in the archive index", lambda: len(indexed()) == len(stored), timeout=180)
        assert set(indexed().values()) == {1}
        by_uid = {f.sop_instance_uid: f for f in sent}
        client = httpx.Client(base_url=region.balancer.http_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        for sop in sorted(stored):
            original = by_uid[sop].path.read_bytes()
            split = split_part10(original)
            study, series = _study_series(original)
            answer = client.get(
                f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
                headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                timeout=60,
            )
            assert answer.status_code == 200, answer.text[:500]
            [(_, body)] = split_multipart(answer)
            assert _data_set(body) == (split.transfer_syntax, original[split.dataset_offset :]), sop
    finally:
        bring_back(region, BROKER, DRIVE)

    # the broker and the drive are back: the nodes say so
    for node in region.nodes:
        wait_for("/readyz ready again", partial(is_ready, region, node), timeout=240, every=1)
    health = json.loads(cami_status(region, region.nodes[1], "--json").stdout)["health"]
    assert {health["event_log"]["status"], health["blobs"]["status"]} == {"ok"}, health

    # the hospital sends both studies again: what was stored is a duplicate, the rest is stored now
    for i, half in enumerate(halves):
        again = studies.storescu("127.0.0.1", region.balancer.port, [f.path for f in half], calling=f"CT{i}")
        assert set(studies.outcomes(again.stdout + again.stderr).values()) == {"Success"}, again.stdout[-3000:]
    events = region.received()
    for f in sent:
        assert [(v, n) for (s, v), n in events.items() if s == f.sop_instance_uid] == [(1, 1)], f.sop_instance_uid
    everything = {f.sop_instance_uid for f in sent}
    stored = everything
    wait_for("every instance in the archive index", lambda: len(indexed()) == len(everything), timeout=180)
    assert set(indexed().values()) == {1}
    for number, half in enumerate(halves, start=1):
        study, _ = _study_series(half[0].path.read_bytes())
        found = client.get(f"/dicomweb/studies/{study}/instances", timeout=60)
        uids = [item["00080018"]["Value"][0] for item in found.json()]
        assert sorted(uids) == sorted(f.sop_instance_uid for f in half), f"study {number}"


def _study_series(part10: bytes) -> tuple[str, str]:
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(DicomBytesIO(part10), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def _instance(study: str, series: str, sop: str, comment: str = "") -> Dataset:
    ds = studies.instance(study, series, 1, sop_uid=sop, patient_id="PILOT-SAME")
    if comment:
        ds.ImageComments = comment
    return ds


def test_the_same_instance_sent_to_both_nodes_at_once_50_times_is_recorded_once(region: Region) -> None:
    """Two associations, one per node (not through the balancer), each C-STORE started at the
    same moment on both."""
    ae = AE(ae_title="CT_SAME")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    associations = [ae.associate("127.0.0.1", node.dicom_port, ae_title="CAMI") for node in region.nodes]
    assert all(a.is_established for a in associations)
    study, series = generate_uid(prefix=ROOT_UID), generate_uid(prefix=ROOT_UID)

    def at_once(objects: list[Dataset]) -> list[int]:
        start = threading.Barrier(2)
        statuses = [-1, -1]

        def send(i: int) -> None:
            start.wait()
            answer = associations[i].send_c_store(objects[i])
            statuses[i] = int(answer.Status) if "Status" in answer else -2

        threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        return statuses

    try:
        same = []
        for _ in range(50):
            sop = generate_uid(prefix=ROOT_UID)
            ds = _instance(study, series, sop)
            assert at_once([ds, ds]) == [0, 0]
            same.append(sop)
        different = []
        for _ in range(5):
            sop = generate_uid(prefix=ROOT_UID)
            assert at_once([_instance(study, series, sop), _instance(study, series, sop, "corrected")]) == [0, 0]
            different.append(sop)
    finally:
        for association in associations:
            association.release()
    events = region.received()
    for sop in same:  # one event for the one content, whichever node recorded it
        assert [(v, n) for (s, v), n in events.items() if s == sop] == [(1, 1)], sop
    for sop in different:  # one event per content: versions 1 and 2, never two of version 1
        assert sorted((v, n) for (s, v), n in events.items() if s == sop) == [(1, 1), (2, 1)], sop


def test_storage_commitment_asked_of_the_node_that_did_not_store_the_instance(region: Region) -> None:
    first, second = region.nodes
    ds = studies.instance(generate_uid(prefix=ROOT_UID), generate_uid(prefix=ROOT_UID), 1, patient_id="PILOT-SC")
    waiter = CommitmentWaiter()
    with CommitmentReceiver(AGENT, waiter, port=second.agent_port):
        ae = AE(ae_title=AGENT)
        ae.add_requested_context(CT, ExplicitVRLittleEndian)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
        stored = ae.associate("127.0.0.1", first.dicom_port, ae_title="CAMI")
        assert int(stored.send_c_store(ds).Status) == 0x0000
        stored.release()
        # at once, of the other node, whose SOP index has not read the log since
        request = Dataset()
        request.TransactionUID = generate_uid(prefix=ROOT_UID)
        item = Dataset()
        item.ReferencedSOPClassUID = CT
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        request.ReferencedSOPSequence = [item]
        asked = ae.associate("127.0.0.1", second.dicom_port, ae_title="CAMI")
        status, _ = asked.send_n_action(
            request, REQUEST_STORAGE_COMMITMENT, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE
        )
        asked.release()
        assert int(status.Status) == 0x0000
        report = waiter.wait(str(request.TransactionUID), 60)
    assert report is not None, second.process.tail()
    assert report.committed == ((CT, str(ds.SOPInstanceUID)),) and report.failed == ()


def test_a_replay_goes_on_while_a_broker_and_a_drive_fail(region: Region) -> None:
    """The read models are rebuilt from the log while the cluster is degraded: the same rows."""
    warehouse = open_warehouse(region.env["CAMI_CLICKHOUSE"])
    fingerprint = (
        "SELECT count(), groupBitXor(cityHash64(sop_uid, version, patient_id, study_uid)) FROM archive_instances FINAL"
    )
    before = warehouse.query(fingerprint).rows
    assert before[0][0] > 0  # the studies of the tests before
    region.workers.stop()  # the rebuild drops and refills the tables the workers write
    replay = subprocess.Popen(
        [str(CAMI), "replay", "--projection", "archive-index", "--projection", "audit", "--json", "--no-progress"],
        env=region.workers.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)  # the replay has started (reading the log's metadata)
        fail(region, 1, 1)
        out, err = replay.communicate(timeout=600)
        assert replay.returncode == 0, err[-3000:]
        assert warehouse.query(fingerprint).rows == before
        rebuilt = json.loads(out)
        assert rebuilt, out
    finally:
        if replay.poll() is None:
            replay.kill()
        bring_back(region, 1, 1)
        region.workers.start()


def test_the_workers_log_one_json_object_per_line(region: Region) -> None:
    lines = [line for line in region.workers.log.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= set(entry), line
    assert any(json.loads(line)["logger"].startswith(("faust", "mode", "aiokafka", "cami")) for line in lines)


def test_a_procedure_step_begun_at_one_node_is_completed_at_the_other(region: Region) -> None:
    """A modality's MPPS messages each on an association of its own, the balancer sending them to
    either node: the N-SET finds the step wherever its N-CREATE went, in its latest state."""
    ae = AE(ae_title=AGENT)  # a [[sender]]: only senders report steps
    ae.add_requested_context(MPPS)
    uid = generate_uid(prefix=ROOT_UID)

    def send(node: Cami, message: str, ds: Dataset) -> int:
        association = ae.associate("127.0.0.1", node.dicom_port, ae_title="CAMI")
        assert association.is_established
        try:
            if message == "create":
                status, _ = association.send_n_create(ds, MPPS, uid)
            else:
                status, _ = association.send_n_set(ds, MPPS, uid)
            return int(status.Status)
        finally:
            association.release()

    first, second = region.nodes
    assert send(first, "create", step("IN PROGRESS", Modality="CT")) == 0x0000
    assert send(second, "create", step("IN PROGRESS", Modality="CT")) == 0x0111  # known there too
    assert send(second, "set", step("COMPLETED")) == 0x0000
    assert send(first, "set", step("DISCONTINUED")) == 0xC310  # the first node knows it is completed
    with open_event_log(region.env["CAMI_EVENT_LOG"]) as log:
        steps = [
            decode(r.value)
            for p in log.partitions(ORDERS)
            for r in log.read(ORDERS, p, 0, 1_000_000)
        ]  # fmt: skip
    recorded = [e.payload for e in steps if e.type == "ProcedureStepChanged" and e.envelope.aggregate_id == uid]
    assert [p["PerformedProcedureStepStatus"] for p in recorded] == ["IN PROGRESS", "COMPLETED"]
    assert recorded[-1]["Modality"] == "CT"  # the N-SET was laid over the state the other node recorded
