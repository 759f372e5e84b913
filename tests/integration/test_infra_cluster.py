"""The pilot's redundant infrastructure on loopback (issue 17), from the project's own scripts:

- a three-broker KRaft Kafka cluster (``infra/kafka.sh --nodes 3``: replication 3, ``min.insync.replicas`` 2)
  loses a broker under a stream of appends without losing or duplicating an acknowledged record, takes it back,
  and refuses appends rather than acknowledge them on a single broker;
- a MinIO erasure set of four drives (``infra/minio.sh --drives 4``) keeps reading and writing with a drive taken
  away, says so on its health probe and admin API, stops writing (but not reading) without a second drive, and
  heals the returned drive;
- haproxy (``infra/haproxy.sh``) spreads connections over two nodes, sends every new one to the survivor the
  moment a node dies, leaves out a node whose ``/healthz`` fails, and carries DICOM associations.

The servers are this module's own (they are killed), each started once for the module.
"""

from __future__ import annotations

import contextlib
import http.server
import socket
import socketserver
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, cast

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from streams import open_event_log
from streams.blobs.s3 import S3BlobStore
from streams.publisher import publish_many
from streams.topics import DICOM, archive_topics, topic_for
from tests.support.events import synthetic_sequence
from tests.support.kafka_topics import consume_all
from tests.support.servers import HaproxyServer, KafkaCluster, MinioServer, free_ports

pytestmark = [pytest.mark.slow]

T = TypeVar("T")


def _eventually(probe: Callable[[], T | None], what: str, timeout: float = 60.0, every: float = 0.25) -> T:
    """``probe()`` once it returns something other than None (an AssertionError naming ``what`` after
    ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(every)


# ---- Kafka: three brokers ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    with KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), nodes=3) as running:
        yield running


def _admin(cluster: KafkaCluster) -> AdminClient:
    return AdminClient({"bootstrap.servers": cluster.bootstrap, "socket.timeout.ms": 3000})


def _create_topic(cluster: KafkaCluster, topic: str, partitions: int) -> None:
    admin = _admin(cluster)
    # the broker defaults decide the replication (-1): what `cami` gets when it names none
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=-1)])[topic].result(timeout=30)

    def led() -> bool | None:  # the metadata a broker answers with may lag the controller a moment
        listed = admin.list_topics(topic, timeout=10).topics.get(topic)
        leaders = [p.leader for p in listed.partitions.values()] if listed is not None else []
        return True if len(leaders) == partitions and min(leaders) >= 0 else None

    _eventually(led, f"topic {topic} with a leader for each of its {partitions} partitions")


def _isr_sizes(cluster: KafkaCluster, topic: str) -> list[int]:
    listed = _admin(cluster).list_topics(topic, timeout=10).topics.get(topic)
    partitions = listed.partitions if listed is not None else {}  # a lagging broker may not list it yet
    return [len(partitions[p].isrs) for p in sorted(partitions)]


class _Appender:
    """Appends numbered records (acks=all, idempotent, as the archive's producer) until stopped, keeping
    which ones were acknowledged and which failed."""

    def __init__(self, cluster: KafkaCluster, topic: str) -> None:
        self.topic = topic
        self.acknowledged: list[bytes] = []
        self.failed: list[KafkaError] = []
        self._producer = Producer(
            {
                "bootstrap.servers": cluster.bootstrap,
                "acks": "all",
                "enable.idempotence": True,
                "delivery.timeout.ms": 30000,
                "linger.ms": 5,
            }
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="appender", daemon=True)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.failed.append(err)
        else:
            value = msg.value()
            assert isinstance(value, bytes)
            self.acknowledged.append(value)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key, value = f"study-{n % 7}".encode(), b"%08d" % n
            self._producer.produce(self.topic, key=key, value=value, on_delivery=self._on_delivery)
            n += 1
            self._producer.poll(0)
            time.sleep(0.005)
        self._producer.flush(60)

    def __enter__(self) -> _Appender:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(90)

    def wait_for_more(self, count: int, timeout: float = 30.0) -> None:
        target = len(self.acknowledged) + count
        _eventually(lambda: True if len(self.acknowledged) >= target else None, f"{count} more acks", timeout)


@pytest.mark.kafka
def test_three_brokers_replicate_every_partition_three_times(cluster: KafkaCluster) -> None:
    assert cluster.status() == 0
    assert cluster.bootstrap == ",".join(f"127.0.0.1:{p}" for p in cluster.ports)
    admin = _admin(cluster)
    brokers = admin.list_topics(timeout=10).brokers
    assert {b.id: b.port for b in brokers.values()} == {1: cluster.ports[0], 2: cluster.ports[1], 3: cluster.ports[2]}

    _create_topic(cluster, "pilot-defaults", partitions=6)
    partitions = admin.list_topics("pilot-defaults", timeout=10).topics["pilot-defaults"].partitions
    assert len(partitions) == 6
    assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions.values())
    assert len({p.leader for p in partitions.values()}) == 3, "leaderships spread over the brokers"

    resource = ConfigResource("BROKER", "2")
    config = admin.describe_configs([resource])[resource].result(timeout=30)
    settings = {name: config[name].value for name in config}
    assert settings["default.replication.factor"] == "3"
    assert settings["min.insync.replicas"] == "2"
    assert settings["offsets.topic.replication.factor"] == "3"
    assert settings["transaction.state.log.replication.factor"] == "3"
    assert settings["transaction.state.log.min.isr"] == "2"
    assert settings["unclean.leader.election.enable"] == "false"


@pytest.mark.kafka
def test_a_broker_killed_under_appends_loses_nothing_acknowledged(cluster: KafkaCluster) -> None:
    topic = "pilot-durability"
    _create_topic(cluster, topic, partitions=3)
    admin = _admin(cluster)

    def leader() -> int | None:  # another broker's metadata may lag the controller a moment
        listed = admin.list_topics(topic, timeout=10).topics.get(topic)
        first = listed.partitions.get(0) if listed is not None else None
        return first.leader if first is not None and first.leader >= 0 else None

    victim = _eventually(leader, f"a leader for partition 0 of {topic}")  # of a partition being written

    with _Appender(cluster, topic) as appender:
        appender.wait_for_more(200)
        cluster.kill_node(victim)
        assert not cluster.node_running(victim)
        assert cluster.status() == 3  # degraded: some nodes run
        # the controller fences the dead broker (session 3 s) and the partitions carry on with two
        _eventually(lambda: True if set(_isr_sizes(cluster, topic)) == {2} else None, "ISR down to 2", 30)
        appender.wait_for_more(200)  # appends keep being acknowledged on two brokers

        cluster.start_node(victim)
        assert cluster.status() == 0
        _eventually(lambda: True if set(_isr_sizes(cluster, topic)) == {3} else None, "ISR back to 3", 60)
        appender.wait_for_more(100)

    assert not appender.failed, appender.failed[:3]
    records = consume_all(cluster.bootstrap, topic, len(appender.acknowledged), commit=True)
    consumed = [value for _, value in records]
    counts = Counter(consumed)
    assert set(appender.acknowledged) <= set(counts), "an acknowledged record is missing"
    assert max(counts.values()) == 1, "a record was written twice"
    offsets = _admin(cluster).list_topics("__consumer_offsets", timeout=10).topics["__consumer_offsets"]
    assert all(len(p.replicas) == 3 for p in offsets.partitions.values())


@pytest.mark.kafka
def test_a_partition_without_a_leader_is_never_read_as_empty(cluster: KafkaCluster) -> None:
    """Right after a broker dies, its partitions have no leader for a few seconds, and Kafka then
    answers their end offset as "invalid" rather than with an error: the archive's log waits for
    the new leaders, so a replay never skips a partition (it once rebuilt without them)."""
    url = f"kafka://{cluster.bootstrap}?replication=3&min_insync=2&topic_prefix=leaderless"
    with open_event_log(url) as log:
        log.ensure_topics(archive_topics())
        events = synthetic_sequence(7, studies=20)
        publish_many(log, events)
        ends = log.end_offsets(DICOM)
        on_dicom = sum(ends.values())
        assert on_dicom == sum(1 for e in events if topic_for(e.type) == DICOM) > 0
    victim = 1
    cluster.kill_node(victim)
    try:
        with open_event_log(url) as log:  # a new client, as `cami replay` starts
            assert log.end_offsets(DICOM) == ends
            assert sum(len(batch) for batch in log.scan({DICOM: ends})) == on_dicom
    finally:
        cluster.start_node(victim)


@pytest.mark.kafka
def test_appends_are_refused_with_one_broker_left_and_resume_when_two_are_back(cluster: KafkaCluster) -> None:
    topic = "pilot-min-insync"
    _create_topic(cluster, topic, partitions=1)
    cluster.kill_node(2)
    cluster.kill_node(3)
    assert cluster.status() == 3

    reports: list[KafkaError | None] = []
    producer = Producer(
        {"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True, "message.timeout.ms": 4000}
    )
    producer.produce(topic, b"alone", on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(20)
    assert len(reports) == 1 and reports[0] is not None, "acknowledged by a single broker"

    cluster.start()  # both at once, as an operator would
    assert cluster.status() == 0
    reports.clear()
    producer = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "enable.idempotence": True})
    producer.produce(topic, b"together", on_delivery=lambda err, _msg: reports.append(err))
    producer.flush(60)
    assert reports == [None]


# ---- MinIO: an erasure set of four drives -------------------------------------------------------------


@pytest.fixture(scope="module")
def erasure_set(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MinioServer]:
    with MinioServer(tmp_path_factory.mktemp("minio-erasure"), drives=4) as running:
        yield running


def _s3(server: MinioServer) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )


def _drive_state(server: MinioServer, drive: int) -> str:
    return server.drive_states()[str(server.drive_path(drive))]


def _heal_states(server: MinioServer) -> dict[str, str]:
    """The drives as MinIO's background heal status lists them (what `mc admin heal` shows)."""
    status = server.admin("POST", "background-heal/status")
    return {disk["endpoint"]: disk["state"] for erasure_set in status["sets"] for disk in erasure_set["disks"]}


@pytest.mark.s3
def test_erasure_set_reads_and_writes_with_a_drive_away(erasure_set: MinioServer) -> None:
    minio = erasure_set
    states = minio.drive_states()
    assert states == {str(minio.drive_path(i)): "ok" for i in range(1, 5)}
    status, headers = minio.health("cluster")
    assert status == 200 and headers["X-Minio-Write-Quorum"] == "3"
    s3 = _s3(minio)
    s3.create_bucket(Bucket="pilot-blobs")
    before, during = uuid.uuid4().bytes * 20_000, uuid.uuid4().bytes * 20_000  # 320 KB each
    s3.put_object(Bucket="pilot-blobs", Key="sha256/before", Body=before)
    # what /readyz and `cami status` ask of the archive's blob store
    store = S3BlobStore("pilot-blobs", minio.endpoint, access_key=minio.access_key, secret_key=minio.secret_key)
    assert store.health().status == "ok", store.health()

    minio.fail_drive(2)
    assert not minio.drive_path(2).exists()
    gone = _eventually(lambda: _drive_state(minio, 2).replace("ok", "") or None, "drive 2 reported gone", 30)
    assert gone in ("unformatted", "offline", "faulty"), gone
    seen = store.health()
    assert seen.status == "degraded" and str(minio.drive_path(2)) in seen.detail, seen
    assert _heal_states(minio)[str(minio.drive_path(2))] != "ok"
    s3.put_object(Bucket="pilot-blobs", Key="sha256/during", Body=during)
    assert s3.get_object(Bucket="pilot-blobs", Key="sha256/during")["Body"].read() == during
    assert s3.get_object(Bucket="pilot-blobs", Key="sha256/before")["Body"].read() == before
    assert minio.health("cluster")[0] == 200  # three of four drives: still write quorum

    # a second drive away: reads go on, writes are refused and the cluster probe says so
    minio.fail_drive(3)
    _eventually(lambda: True if minio.health("cluster")[0] == 503 else None, "cluster probe 503", 30)
    assert store.health().status == "down"
    assert minio.health("cluster/read")[0] == 200
    assert s3.get_object(Bucket="pilot-blobs", Key="sha256/during")["Body"].read() == during
    with pytest.raises(ClientError) as refused:
        s3.put_object(Bucket="pilot-blobs", Key="sha256/refused", Body=b"x")
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503

    minio.restore_drive(3)
    minio.restore_drive(2)
    # MinIO finds returned drives (looking every 15 s at most)
    minio.wait_drives({1: "ok", 2: "ok", 3: "ok", 4: "ok"}, timeout=60)
    _eventually(lambda: True if minio.health("cluster")[0] == 200 else None, "cluster probe 200", 30)
    assert set(_heal_states(minio).values()) == {"ok"}
    assert store.health().status == "ok", store.health()
    # a read that finds the object's shard missing on a drive has it healed there
    assert s3.get_object(Bucket="pilot-blobs", Key="sha256/during")["Body"].read() == during
    healed = minio.drive_path(2) / "pilot-blobs" / "sha256" / "during" / "xl.meta"
    _eventually(lambda: True if healed.exists() else None, "the object written meanwhile healed onto drive 2", 60)
    s3.put_object(Bucket="pilot-blobs", Key="sha256/after", Body=b"after")
    assert s3.get_object(Bucket="pilot-blobs", Key="sha256/after")["Body"].read() == b"after"


# ---- haproxy: two nodes behind one address -------------------------------------------------------------


class _NameServer(socketserver.ThreadingTCPServer):
    """A node stand-in: answers every connection with its name."""

    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, port: int, name: bytes) -> None:
        self.name = name
        super().__init__(("127.0.0.1", port), _NameHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


class _NameHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(cast(_NameServer, self.server).name + b"\n")


class _HealthServer(http.server.ThreadingHTTPServer):
    """An HTTP node stand-in: ``/healthz`` 200 or 503 as ``healthy`` says; any other path its name."""

    daemon_threads = True

    def __init__(self, port: int, name: str) -> None:
        self.name = name
        self.healthy = True
        super().__init__(("127.0.0.1", port), _HealthHandler)
        threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


class _HealthHandler(http.server.BaseHTTPRequestHandler):
    server: _HealthServer

    def do_GET(self) -> None:
        if self.path == "/healthz":
            status, body = (200, b'{"status": "alive"}') if self.server.healthy else (503, b"{}")
        else:
            status, body = 200, self.server.name.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(ConnectionError):  # haproxy's check hangs up once it has the status line
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Nodes:
    def __init__(self) -> None:
        self.ports = free_ports(4)
        self.dicom = {1: _NameServer(self.ports[0], b"node1"), 2: _NameServer(self.ports[1], b"node2")}
        self.http = {1: _HealthServer(self.ports[2], "node1"), 2: _HealthServer(self.ports[3], "node2")}


@pytest.fixture(scope="module")
def nodes() -> Iterator[_Nodes]:
    running = _Nodes()
    yield running
    for server in running.dicom.values():
        server.close()
    for http_server in running.http.values():
        http_server.shutdown()
        http_server.server_close()


@pytest.fixture(scope="module")
def balancer(tmp_path_factory: pytest.TempPathFactory, nodes: _Nodes) -> Iterator[HaproxyServer]:
    server = HaproxyServer(
        tmp_path_factory.mktemp("haproxy"),
        backends=[f"127.0.0.1:{p}" for p in nodes.ports[:2]],
        http_backends=[f"127.0.0.1:{p}" for p in nodes.ports[2:]],
        check_interval="300ms",
    )
    with server:
        for name in ("dicom/dicom1", "dicom/dicom2", "http/http1", "http/http2"):
            server.wait_server(name, "UP", timeout=10)  # checks passed, not only assumed
        yield server


def _who(port: int) -> str:
    """The name of the node a new connection through the balancer reaches."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.settimeout(5)
        return conn.recv(64).decode().strip()


def _http_who(balancer: HaproxyServer) -> str:
    with urllib.request.urlopen(balancer.http_url + "/", timeout=5) as answer:
        return str(answer.read().decode())


def test_haproxy_spreads_connections_over_both_nodes(balancer: HaproxyServer, nodes: _Nodes) -> None:
    assert balancer.is_running()
    assert balancer.servers() == {"dicom/dicom1": "UP", "dicom/dicom2": "UP", "http/http1": "UP", "http/http2": "UP"}
    reached = Counter(_who(balancer.port) for _ in range(10))
    assert set(reached) == {"node1", "node2"} and min(reached.values()) >= 3, reached
    reached_http = Counter(_http_who(balancer) for _ in range(10))
    assert set(reached_http) == {"node1", "node2"}, reached_http


def test_haproxy_sends_every_new_connection_to_the_survivor(balancer: HaproxyServer, nodes: _Nodes) -> None:
    nodes.dicom[1].close()
    # before the health checks notice, a connection that finds node 1 dead is sent to node 2
    assert [_who(balancer.port) for _ in range(10)] == ["node2"] * 10
    balancer.wait_server("dicom/dicom1", "DOWN", timeout=10)
    assert {_who(balancer.port) for _ in range(10)} == {"node2"}
    log = (balancer.data_dir / "haproxy.out").read_text()
    assert "dicom/dicom1 is DOWN" in log

    nodes.dicom[1] = _NameServer(nodes.ports[0], b"node1")  # back on its port
    balancer.wait_server("dicom/dicom1", "UP", timeout=10)
    assert {_who(balancer.port) for _ in range(10)} == {"node1", "node2"}


def test_haproxy_leaves_out_a_node_whose_healthz_fails(balancer: HaproxyServer, nodes: _Nodes) -> None:
    nodes.http[2].healthy = False  # the port still accepts connections
    balancer.wait_server("http/http2", "DOWN", timeout=10)
    assert {_http_who(balancer) for _ in range(10)} == {"node1"}
    nodes.http[2].healthy = True
    balancer.wait_server("http/http2", "UP", timeout=10)
    assert {_http_who(balancer) for _ in range(10)} == {"node1", "node2"}


def test_haproxy_carries_dicom_associations_to_both_storescp(tmp_path: Path) -> None:
    ports = free_ports(2)
    peers = [
        subprocess.Popen(
            ["/usr/bin/storescp", "-v", "-aet", "CAMI", "--output-directory", str(tmp_path), str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port in ports
    ]
    try:
        _eventually(lambda: True if all(map(_accepts, ports)) else None, "both storescp listening", 10, 0.05)
        with HaproxyServer(tmp_path / "haproxy", backends=[f"127.0.0.1:{p}" for p in ports]) as dicom_balancer:
            for _ in range(4):
                echo = subprocess.run(
                    ["/usr/bin/echoscu", "-aet", "PROBE", "-aec", "CAMI", "127.0.0.1", str(dicom_balancer.port)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                assert echo.returncode == 0, echo.stderr
    finally:
        for peer in peers:
            peer.terminate()
    outputs = [peer.communicate(timeout=10)[0] for peer in peers]
    # (the balancer's connection checks show as associations received too, never as requests)
    echoed = [out.count("Received Echo Request") for out in outputs]
    assert sum(echoed) == 4 and min(echoed) >= 1, outputs


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
