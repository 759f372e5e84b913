"""Real Kafka, MinIO, Orthanc and haproxy servers on loopback for tests and benchmarks.

Thin drivers over ``infra/kafka.sh``, ``infra/minio.sh``, ``infra/orthanc.sh`` and ``infra/haproxy.sh``: the
scripts install (cached under ``$CAMI_CACHE``), start detached servers and record their pids in the data directory;
these classes only choose ports, call the scripts and turn failures into exceptions that carry the server log.
The redundant pilot's pieces: :class:`KafkaCluster` (three brokers), ``MinioServer(..., drives=4)`` (an erasure
set whose drives can be taken away) and :class:`HaproxyServer` (the load balancer in front of several nodes).

    kafka = KafkaServer(tmp_path / "kafka")
    kafka.start()          # installs on first use, then waits until the broker answers
    ...                    # use kafka.bootstrap
    kafka.kill()           # SIGKILL (crash)
    kafka.restart()        # same data dir and ports
    kafka.stop()
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

INFRA_DIR = Path(__file__).resolve().parents[2] / "infra"

# Scripts already installed by this process (install is idempotent, but skip even the cheap check).
_installed: set[str] = set()

_INSTALL_TIMEOUT_S = 1800.0
_START_TIMEOUT_S = 180.0
_STOP_TIMEOUT_S = 90.0
_LOG_TAIL_LINES = 60


class ServerError(RuntimeError):
    """A server script failed; the message carries the script's stderr and the server log tail."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all bound at once, so they cannot repeat)."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _tail(path: Path, lines: int = _LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class _ScriptServer:
    """Common driver for an ``infra/<name>.sh`` server script."""

    script: ClassVar[str]
    # Files in the data dir whose tails go into error messages.
    log_files: ClassVar[tuple[str, ...]]

    def __init__(self, data_dir: Path, port: int, second_port_option: str, second_port: int) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self._second_port_option = second_port_option
        self.second_port = second_port

    # -- script plumbing ---------------------------------------------------------------------------

    @property
    def script_path(self) -> Path:
        return INFRA_DIR / self.script

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _run(self, *args: str, timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = ["bash", str(self.script_path), *args]
        try:
            proc = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=self._env(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ServerError(self._describe(f"{' '.join(cmd)} timed out after {timeout:.0f}s", "")) from exc
        if check and proc.returncode != 0:
            raise ServerError(self._describe(f"{' '.join(cmd)} exited with {proc.returncode}", proc.stderr))
        return proc

    def _describe(self, what: str, stderr: str) -> str:
        parts = [what]
        if stderr.strip():
            parts.append(f"--- script stderr ---\n{stderr.rstrip()}")
        if "----- last " in stderr:  # the script already showed the server log tails
            return "\n".join(parts)
        for name in self.log_files:
            tail = _tail(self.data_dir / name)
            if tail:
                parts.append(f"--- tail of {self.data_dir / name} ---\n{tail}")
        return "\n".join(parts)

    def _dir_args(self) -> list[str]:
        return ["--dir", str(self.data_dir)]

    # -- lifecycle ---------------------------------------------------------------------------------

    def install(self) -> None:
        if self.script in _installed:
            return
        self._run("install", timeout=_INSTALL_TIMEOUT_S)
        _installed.add(self.script)

    def start(self) -> None:
        """Install if needed, start on ``data_dir`` and wait until the server answers."""
        self.install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            "start",
            *self._dir_args(),
            "--port",
            str(self.port),
            self._second_port_option,
            str(self.second_port),
            *self._extra_start_args(),
        ]
        proc = self._run(*args, timeout=_START_TIMEOUT_S)
        address = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if address != self.address:
            raise ServerError(
                self._describe(
                    f"{self.script} start printed {address!r}, expected {self.address!r} "
                    f"(another server already running on {self.data_dir}?)",
                    proc.stderr,
                )
            )

    def _extra_start_args(self) -> list[str]:
        """Options a subclass adds to ``start`` (none by default)."""
        return []

    @property
    def address(self) -> str:
        """What the script prints on a successful start."""
        raise NotImplementedError

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s; returns once the process is gone. No-op when not running."""
        self._run("stop", *self._dir_args(), timeout=_STOP_TIMEOUT_S)

    def kill(self) -> None:
        """SIGKILL (crash simulation); returns once the process is gone."""
        self._run("kill", *self._dir_args(), timeout=_STOP_TIMEOUT_S)

    def restart(self) -> None:
        """Start again on the same data dir and ports (stopping first if still running)."""
        if self.is_running():
            self.stop()
        self.start()

    def is_running(self) -> bool:
        return self._run("status", *self._dir_args(), timeout=30.0, check=False).returncode == 0

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class KafkaServer(_ScriptServer):
    """Single-node KRaft Apache Kafka broker started by ``infra/kafka.sh``."""

    script = "kafka.sh"
    log_files = ("logs/server.log", "kafka.out")

    def __init__(self, data_dir: Path, port: int | None = None, controller_port: int | None = None) -> None:
        if port is None or controller_port is None:
            picked = free_ports(2)
            port = port if port is not None else picked[0]
            if controller_port is None:
                controller_port = picked[1] if picked[1] != port else picked[0]
        super().__init__(data_dir, port, "--controller-port", controller_port)
        self.controller_port = controller_port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap.servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.bootstrap


class KafkaCluster(_ScriptServer):
    """A KRaft Kafka cluster on loopback started by ``infra/kafka.sh --nodes``: each node a combined
    broker+controller, replication factor 3 and ``min.insync.replicas`` 2 with three nodes::

        cluster = KafkaCluster(tmp_path / "kafka", nodes=3)
        cluster.start()          # every node in the metadata; cluster.bootstrap lists them all
        cluster.kill_node(2)     # SIGKILL one broker (a crash)
        cluster.start_node(2)    # back on its data and ports, once it answers listing itself
        cluster.stop()           # every node at once
    """

    script = "kafka.sh"
    log_files = ()

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 3,
        ports: list[int] | None = None,
        controller_ports: list[int] | None = None,
    ) -> None:
        if ports is None or controller_ports is None:
            picked = free_ports(2 * nodes)
            ports = ports if ports is not None else picked[:nodes]
            controller_ports = controller_ports if controller_ports is not None else picked[nodes:]
        if len(ports) != nodes or len(controller_ports) != nodes:
            raise ValueError(f"{nodes} node(s) need {nodes} port(s) and {nodes} controller port(s)")
        super().__init__(data_dir, ports[0], "--controller-ports", 0)
        self.nodes = nodes
        self.ports = list(ports)
        self.controller_ports = list(controller_ports)

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,...`` for ``bootstrap.servers``."""
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def address(self) -> str:
        return self.bootstrap

    def node_address(self, node: int) -> str:
        """``127.0.0.1:PORT`` of node ``node`` (1-based; its ``node.id``)."""
        return f"127.0.0.1:{self.ports[node - 1]}"

    def _describe(self, what: str, stderr: str) -> str:
        text = super()._describe(what, stderr)
        if "----- last " in stderr:
            return text
        parts = [text]
        for node in range(1, self.nodes + 1):
            for name in ("logs/server.log", "kafka.out"):
                path = self.data_dir / f"node{node}" / name
                tail = _tail(path, 20)
                if tail:
                    parts.append(f"--- tail of {path} ---\n{tail}")
        return "\n".join(parts)

    def start(self) -> None:
        """Install if needed, start every node that is not running and wait until all are in the metadata."""
        self.install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["start", *self._dir_args(), "--nodes", str(self.nodes)]
        args += ["--ports", ",".join(map(str, self.ports))]
        args += ["--controller-ports", ",".join(map(str, self.controller_ports))]
        proc = self._run(*args, timeout=_START_TIMEOUT_S)
        printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if printed != self.bootstrap:
            raise ServerError(
                self._describe(f"kafka.sh start printed {printed!r}, expected {self.bootstrap!r}", proc.stderr)
            )

    def start_node(self, node: int) -> None:
        """Start node ``node`` again (after :meth:`kill_node` or :meth:`stop_node`); returns once it answers
        metadata requests listing itself."""
        proc = self._run("start", *self._dir_args(), "--node", str(node), timeout=_START_TIMEOUT_S)
        printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if printed != self.node_address(node):
            raise ServerError(self._describe(f"kafka.sh start --node {node} printed {printed!r}", proc.stderr))

    def kill_node(self, node: int) -> None:
        """SIGKILL node ``node`` (a broker and controller crashing); returns once the process is gone."""
        self._run("kill", *self._dir_args(), "--node", str(node), timeout=_STOP_TIMEOUT_S)

    def stop_node(self, node: int) -> None:
        """SIGTERM node ``node`` (a controlled shutdown: its leaderships move first)."""
        self._run("stop", *self._dir_args(), "--node", str(node), timeout=_STOP_TIMEOUT_S)

    def node_running(self, node: int) -> bool:
        return self._run("status", *self._dir_args(), "--node", str(node), timeout=30.0, check=False).returncode == 0

    def status(self) -> int:
        """The script's ``status`` exit code: 0 every node runs, 3 some do (degraded), 1 none."""
        return self._run("status", *self._dir_args(), timeout=30.0, check=False).returncode


class MinioServer(_ScriptServer):
    """MinIO S3 server started by ``infra/minio.sh``: one drive, or with ``drives=4`` one erasure set over
    ``data_dir/data1..data4`` whose drives a test can take away and give back::

        minio = MinioServer(tmp_path / "minio", drives=4)
        minio.start()
        minio.fail_drive(2)          # data2 moved away: MinIO reads and writes on the other three
        minio.drive_states()         # {"/.../data1": "ok", "/.../data2": "unformatted", ...}
        minio.restore_drive(2)       # back; MinIO reconnects it within 15 s and heals it
    """

    script = "minio.sh"
    log_files = ("minio.out",)

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        console_port: int | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        drives: int = 1,
    ) -> None:
        if port is None or console_port is None:
            picked = free_ports(2)
            port = port if port is not None else picked[0]
            if console_port is None:
                console_port = picked[1] if picked[1] != port else picked[0]
        super().__init__(data_dir, port, "--console-port", console_port)
        self.console_port = console_port
        self.access_key = access_key or os.environ.get("CAMI_S3_ACCESS_KEY", "cami-test")
        self.secret_key = secret_key or os.environ.get("CAMI_S3_SECRET_KEY", "cami-test-secret")
        self.drives = drives

    @property
    def endpoint(self) -> str:
        """``http://127.0.0.1:PORT`` for ``endpoint_url``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.endpoint

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env["CAMI_S3_ACCESS_KEY"] = self.access_key
        env["CAMI_S3_SECRET_KEY"] = self.secret_key
        return env

    def _extra_start_args(self) -> list[str]:
        return ["--drives", str(self.drives)] if self.drives > 1 else []

    # -- an erasure set's drives -------------------------------------------------------------------

    def drive_path(self, drive: int) -> Path:
        """Where drive ``drive`` (1-based) of the erasure set lives while it is in place."""
        return self.data_dir / f"data{drive}"

    def fail_drive(self, drive: int) -> None:
        """Take drive ``drive`` away (its directory moved aside), the server running on."""
        self._run("fail-drive", *self._dir_args(), "--drive", str(drive), timeout=30.0)

    def restore_drive(self, drive: int) -> None:
        """Put drive ``drive`` back; MinIO reconnects it within 15 s (see :meth:`wait_drives`)."""
        self._run("restore-drive", *self._dir_args(), "--drive", str(drive), timeout=30.0)

    def health(self, probe: str = "cluster") -> tuple[int, dict[str, str]]:
        """MinIO's unauthenticated probe ``/minio/health/<probe>`` (``cluster``: write quorum, ``cluster/read``:
        read quorum, ``live``, ``ready``): the HTTP status and the headers (``X-Minio-Write-Quorum``,
        ``X-Minio-Healing-Drives``...)."""
        try:
            with urllib.request.urlopen(f"{self.endpoint}/minio/health/{probe}", timeout=10) as answer:
                return answer.status, dict(answer.headers.items())
        except urllib.error.HTTPError as exc:
            exc.close()
            return exc.code, dict(exc.headers.items())

    def admin(self, method: str, path: str) -> Any:
        """A call to MinIO's admin API (``/minio/admin/v3/...``), signed with the root credentials; JSON out."""
        from botocore.auth import S3SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        url = f"{self.endpoint}/minio/admin/v3/{path.lstrip('/')}"
        signed = AWSRequest(method=method, url=url, data=b"")
        S3SigV4Auth(Credentials(self.access_key, self.secret_key), "s3", "us-east-1").add_auth(signed)
        request = urllib.request.Request(url, method=method, headers=dict(signed.headers.items()))
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return json.load(answer)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise ServerError(f"MinIO admin {method} {path}: HTTP {exc.code}: {detail}") from None

    def drive_states(self) -> dict[str, str]:
        """Each drive's path and state as the admin API reports it: ``ok``, ``unformatted`` (gone),
        ``offline``..."""
        info = self.admin("GET", "info")
        return {drive["endpoint"]: drive["state"] for server in info["servers"] for drive in server.get("drives", [])}

    def wait_drives(self, expected: dict[int, str], timeout: float = 60.0) -> dict[str, str]:
        """Poll :meth:`drive_states` until drive ``i`` is in state ``expected[i]`` for each given drive."""
        deadline = time.monotonic() + timeout
        wanted = {str(self.drive_path(i)): state for i, state in expected.items()}
        while True:
            states = self.drive_states()
            if all(states.get(path) == state for path, state in wanted.items()):
                return states
            if time.monotonic() > deadline:
                raise ServerError(self._describe(f"MinIO drives {states}, expected {wanted} after {timeout:.0f}s", ""))
            time.sleep(0.5)


class OrthancServer(_ScriptServer):
    """Orthanc (Debian package) as a hospital's local PACS, started by ``infra/orthanc.sh``.

    ``modalities`` maps the names Orthanc's REST API uses to ``(aet, host, port)``::

        pacs = OrthancServer(tmp_path / "orthanc", modalities={"cami": ("CAMI", "127.0.0.1", 11112)})
        pacs.start()
        pacs.upload(path)                                   # POST /instances
        pacs.store("cami", [study_id])                      # C-STORE by Orthanc to CAMI
        tx = pacs.request_commitment("cami", [(sop_class, sop_instance)])
        report = pacs.wait_commitment(tx)                   # GET /storage-commitment/{tx}
    """

    script = "orthanc.sh"
    log_files = ("orthanc.out",)

    def __init__(
        self,
        data_dir: Path,
        http_port: int | None = None,
        dicom_port: int | None = None,
        aet: str = "HOSPITAL_PACS",
        modalities: dict[str, tuple[str, str, int]] | None = None,
    ) -> None:
        if http_port is None or dicom_port is None:
            picked = free_ports(2)
            http_port = http_port if http_port is not None else picked[0]
            if dicom_port is None:
                dicom_port = picked[1] if picked[1] != http_port else picked[0]
        super().__init__(data_dir, http_port, "--dicom-port", dicom_port)
        self.http_port = http_port
        self.dicom_port = dicom_port
        self.aet = aet
        self.modalities = dict(modalities or {})

    @property
    def url(self) -> str:
        """``http://127.0.0.1:HTTP_PORT``, the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def address(self) -> str:
        return self.url

    def install(self) -> None:
        if self.script in _installed:
            return
        proc = subprocess.run(
            ["bash", str(INFRA_DIR / "dicom-peers.sh"), "install"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_INSTALL_TIMEOUT_S,
            check=False,
        )
        if proc.returncode != 0:
            raise ServerError(self._describe("infra/dicom-peers.sh install failed", proc.stderr))
        _installed.add(self.script)

    def start(self) -> None:
        """Install if needed, write the config, start on ``data_dir`` and wait for ``/system``."""
        self.install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["start", *self._dir_args(), "--http-port", str(self.http_port), "--dicom-port", str(self.dicom_port)]
        args += ["--aet", self.aet]
        for name, (aet, host, port) in self.modalities.items():
            args += ["--modality", f"{name}={aet}@{host}:{port}"]
        proc = self._run(*args, timeout=_START_TIMEOUT_S)
        printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if printed != self.url:
            raise ServerError(
                self._describe(f"orthanc.sh start printed {printed!r}, expected {self.url!r}", proc.stderr)
            )

    # -- REST helpers ------------------------------------------------------------------------------

    def rest(
        self, method: str, path: str, body: bytes | dict[str, Any] | list[Any] | None = None, timeout: float = 120.0
    ) -> Any:
        """Call the REST API; JSON in (dict/list) or raw bytes, JSON out. HTTP errors raise ServerError."""
        data: bytes | None
        headers = {}
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        else:
            data = body
            if body is not None:
                headers["Content-Type"] = "application/dicom"
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise ServerError(f"Orthanc {method} {path}: HTTP {exc.code}: {detail}") from None
        return json.loads(raw) if raw.strip() else None

    def upload(self, path: Path) -> dict[str, Any]:
        """POST /instances with one DICOM file; returns Orthanc's answer (ID, ParentStudy, Status...)."""
        answer: dict[str, Any] = self.rest("POST", "/instances", Path(path).read_bytes())
        return answer

    def studies(self) -> list[str]:
        """Orthanc IDs of the studies it holds."""
        ids: list[str] = self.rest("GET", "/studies")
        return ids

    def instances(self) -> list[str]:
        """Orthanc IDs of every instance it holds."""
        ids: list[str] = self.rest("GET", "/instances")
        return ids

    def store(self, modality: str, resources: list[str], timeout: float = 300.0) -> dict[str, Any]:
        """Orthanc sends the resources (Orthanc IDs of studies/series/instances) to ``modality`` with
        its own C-STORE, synchronously; raises if the job fails."""
        body = {"Resources": resources, "Synchronous": True, "Timeout": int(timeout)}
        answer: dict[str, Any] = self.rest("POST", f"/modalities/{modality}/store", body, timeout=timeout + 10)
        return answer

    def request_commitment(self, modality: str, references: list[tuple[str, str]], timeout: int = 30) -> str:
        """Ask ``modality`` (N-ACTION) to commit these (SOP class UID, SOP instance UID); returns the
        transaction UID. The answer arrives later as an N-EVENT-REPORT to Orthanc's DICOM port."""
        body = {
            "DicomInstances": [{"SOPClassUID": c, "SOPInstanceUID": i} for c, i in references],
            "Timeout": timeout,
        }
        answer = self.rest("POST", f"/modalities/{modality}/storage-commitment", body)
        return str(answer["ID"])

    def commitment_report(self, transaction_uid: str) -> dict[str, Any]:
        """GET /storage-commitment/{uid}: Status is Pending, Success or Failure; Success and Failures list
        the instances."""
        report: dict[str, Any] = self.rest("GET", f"/storage-commitment/{transaction_uid}")
        return report

    def wait_commitment(self, transaction_uid: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the report until it is no longer Pending (ServerError after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.commitment_report(transaction_uid)
            if report.get("Status") != "Pending":
                return report
            if time.monotonic() > deadline:
                raise ServerError(
                    self._describe(f"storage commitment {transaction_uid} still pending after {timeout:.0f}s", "")
                )
            time.sleep(0.1)


class PrometheusServer(_ScriptServer):
    """Prometheus (Debian package) scraping a CAMI ``/metrics``, started by ``infra/prometheus.sh``::

    prometheus = PrometheusServer(tmp_path / "prometheus", target="127.0.0.1:8080", interval="1s")
    prometheus.start()
    prometheus.query('cami_ingest_objects_total{channel="dicom"}')   # the PromQL result vector
    """

    script = "prometheus.sh"
    log_files = ("prometheus.out",)

    def __init__(
        self,
        data_dir: Path,
        target: str,
        port: int | None = None,
        *,
        token_file: Path | None = None,
        rules: tuple[Path, ...] = (),
        interval: str = "1s",
    ) -> None:
        super().__init__(data_dir, port if port is not None else free_ports(1)[0], "--port", 0)
        self.target = target
        self.token_file = token_file
        self.rules = rules
        self.interval = interval

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def start(self) -> None:
        """Install if needed, write the scrape config, start on ``data_dir`` and wait for ``/-/ready``."""
        self.install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["start", *self._dir_args(), "--port", str(self.port), "--target", self.target]
        args += ["--interval", self.interval]
        if self.token_file is not None:
            args += ["--token-file", str(self.token_file)]
        for rule in self.rules:
            args += ["--rules", str(rule)]
        proc = self._run(*args, timeout=_START_TIMEOUT_S)
        printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if printed != self.url:
            raise ServerError(
                self._describe(f"prometheus.sh start printed {printed!r}, expected {self.url!r}", proc.stderr)
            )

    def _api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:
            body = json.load(response)
        if body.get("status") != "success":
            raise ServerError(self._describe(f"Prometheus /api/v1/{path} answered {body}", ""))
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant PromQL query: the result vector (``[{"metric": {...}, "value": [t, "v"]}]``)."""
        return list(self._api("query", query=promql)["result"])

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets with their health and last error."""
        return list(self._api("targets")["activeTargets"])

    def rules_loaded(self) -> list[dict[str, Any]]:
        """The rule groups Prometheus loaded."""
        return list(self._api("rules")["groups"])


class HaproxyServer(_ScriptServer):
    """haproxy (Debian package) as the TCP load balancer in front of several nodes, started by
    ``infra/haproxy.sh``: a ``dicom`` frontend over ``backends`` (connection health checks) and, with
    ``http_backends``, an ``http`` frontend over those (``GET /healthz`` checks)::

        balancer = HaproxyServer(tmp_path / "haproxy", backends=["127.0.0.1:11112", "127.0.0.1:11113"])
        balancer.start()                       # balancer.port takes the DICOM connections
        balancer.servers()                     # {"dicom/dicom1": "UP", "dicom/dicom2": "UP"}
        balancer.wait_server("dicom/dicom1", "DOWN")
    """

    script = "haproxy.sh"
    log_files = ("haproxy.out",)

    def __init__(
        self,
        data_dir: Path,
        backends: list[str] | tuple[str, ...] = (),
        listen_port: int | None = None,
        *,
        http_backends: list[str] | tuple[str, ...] = (),
        http_listen_port: int | None = None,
        balance: str = "leastconn",
        check_interval: str = "2s",
        http_check_path: str = "/healthz",
        send_proxy: bool = False,
    ) -> None:
        picked = free_ports(2)
        self.listen_port = (listen_port if listen_port is not None else picked[0]) if backends else None
        self.http_listen_port = (
            (http_listen_port if http_listen_port is not None else picked[1]) if http_backends else None
        )
        first = self.listen_port if self.listen_port is not None else self.http_listen_port
        if first is None:
            raise ValueError("haproxy needs backends, http_backends or both")
        super().__init__(data_dir, first, "--http-listen", self.http_listen_port or 0)
        self.backends = list(backends)
        self.http_backends = list(http_backends)
        self.balance = balance
        self.check_interval = check_interval
        self.http_check_path = http_check_path
        #: DICOM connections (and checks) begin with a PROXY protocol v2 header naming the sender
        self.send_proxy = send_proxy

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT`` of the first frontend (DICOM when there is one, else HTTP)."""
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        """``http://127.0.0.1:HTTP_LISTEN_PORT``, the HTTP frontend."""
        if self.http_listen_port is None:
            raise ValueError("no HTTP frontend (no http_backends)")
        return f"http://127.0.0.1:{self.http_listen_port}"

    def start(self) -> None:
        """Install if needed, write the configuration and start; returns once every frontend listens."""
        self.install()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = ["start", *self._dir_args(), "--balance", self.balance, "--check-interval", self.check_interval]
        if self.listen_port is not None:
            args += ["--listen", str(self.listen_port)]
            for backend in self.backends:
                args += ["--backend", backend]
            if self.send_proxy:
                args.append("--send-proxy")
        if self.http_listen_port is not None:
            args += ["--http-listen", str(self.http_listen_port), "--http-check-path", self.http_check_path]
            for backend in self.http_backends:
                args += ["--http-backend", backend]
        proc = self._run(*args, timeout=_START_TIMEOUT_S)
        printed = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
        if printed != self.address:
            raise ServerError(
                self._describe(f"haproxy.sh start printed {printed!r}, expected {self.address!r}", proc.stderr)
            )

    def servers(self) -> dict[str, str]:
        """Each server's state as haproxy's admin socket shows it: ``{"dicom/dicom1": "UP", ...}`` (``DOWN``,
        ``UP 1/2`` while going down, ``DOWN 1/2`` while coming up, ``MAINT``)."""
        proc = self._run("servers", *self._dir_args(), timeout=30.0)
        states: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            name, _address, status = line.split(" ", 2)
            states[name] = status
        return states

    def wait_server(self, name: str, status: str, timeout: float = 30.0) -> None:
        """Poll :meth:`servers` until ``name`` (``dicom/dicom1``, ``http/http2``...) is in ``status``."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.servers()
            if states.get(name) == status:
                return
            if time.monotonic() > deadline:
                raise ServerError(self._describe(f"haproxy {name} is {states.get(name)!r}, not {status!r}", ""))
            time.sleep(0.2)
