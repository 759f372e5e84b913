"""docs/pilot.md, run: the guide's rehearsal of a pilot region on one machine.

Which blocks run: a fenced code block whose info string is exactly ``bash pilot-test`` (the opening
line is ```` ```bash pilot-test ````). Every other block -- ``sh`` for commands that only make sense on
real hosts (systemctl, package installs), ``ini``/``toml`` for files -- is left alone. The marked
blocks are joined, in the guide's order, into one bash script under ``set -euo pipefail``, so what
one block sets (variables, the helper functions) the next one has, as in one terminal; before each
block the script prints where it starts in the guide, so a failure names its block.

The script runs from the repository root in a fresh temporary directory (``PILOT``) with free
loopback ports in the variables the guide's first block reads (``KAFKA_PORTS``, ``NODE_HTTP_PORT``...),
and no ``CAMI_*`` variable of the caller's. It starts the pilot's pieces as the guide says: three
Kafka brokers (``infra/kafka.sh --nodes 3``), MinIO over four drives (``infra/minio.sh --drives 4``),
``cami serve`` on them with TLS, haproxy in front (``infra/haproxy.sh``), a hospital's ``cami agent``;
it stores a study with dcmtk's storescu and another through the agent, finds them with QIDO-RS and
``cami status``, takes a cold backup, throws everything away, restores it and rebuilds the read
models with ``cami replay``, provokes the troubleshooting list's errors, and stops everything.

Two blocks for real hosts are checked as files: the haproxy.cfg for the balancer passes
``haproxy -c`` (the node's host name replaced by an address, as haproxy resolves names when it
reads the file), and the cami.toml for the node passes ``cami config check`` (with certificate files
where it names them).

Whatever happens, nothing is left running: the script runs in a session of its own whose process
group (its background ``cami serve`` and ``cami agent``) is ended afterwards, and Kafka, MinIO and
haproxy, which the infra scripts detach, are stopped through their drivers in tests/support/servers.py;
then no process may remain whose environment names this run's ``PILOT``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.cli import CAMI
from tests.support.servers import HaproxyServer, KafkaCluster, MinioServer, ServerError, free_ports
from tests.support.tls import TestCA

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "pilot.md"
MARK = "```bash pilot-test"
#: how long the whole rehearsal may take before it is stopped (it takes about 100 s on two cores)
RUN_TIMEOUT_S = 420
#: what the rehearsal must keep doing, whatever else changes in the guide
MUST_RUN = (
    "infra/kafka.sh start",
    "--nodes 3",
    "infra/minio.sh start",
    "--drives 4",
    "cami config check",
    "cami users add",
    "cami serve",
    "infra/haproxy.sh start",
    "/readyz",
    "/usr/bin/storescu",
    "/dicomweb/studies",
    "cami status",
    "cami agent run",
    "tar -C",
    "cami replay",
)


@dataclass(frozen=True)
class Block:
    line: int  # the first line of the block's text in the guide (1-based)
    text: str


def rehearsal_blocks(guide: str) -> list[Block]:
    """The marked blocks, in order."""
    blocks: list[Block] = []
    lines = guide.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARK:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
            assert end is not None, f"docs/pilot.md line {i + 1}: the block is not closed"
            blocks.append(Block(i + 2, "\n".join(lines[i + 1 : end])))
            i = end
        i += 1
    return blocks


def file_block(guide: str, first_line: str) -> str:
    """The text of the fenced block whose first line is ``first_line``."""
    lines = guide.splitlines()
    start = lines.index(first_line)
    assert lines[start - 1].startswith("```"), f"{first_line!r} does not open a block"
    end = lines.index("```", start)
    return "\n".join(lines[start:end]) + "\n"


def script(blocks: list[Block]) -> str:
    parts = ["set -euo pipefail"]
    for block in blocks:
        parts.append(f"echo '::: docs/pilot.md line {block.line}' >&2")
        parts.append(block.text)
    return "\n".join(parts) + "\n"


@dataclass(frozen=True)
class Ports:
    kafka: list[int]
    kafka_controllers: list[int]
    minio: int
    minio_console: int
    node_dicom: int
    node_dicom_tls: int
    node_http: int
    node_hl7: int
    balancer_dicom: int
    balancer_http: int
    agent_router: int

    @classmethod
    def free(cls) -> Ports:
        p = free_ports(15)
        return cls(p[0:3], p[3:6], *p[6:15])

    def environment(self) -> dict[str, str]:
        """The variables the guide's first block reads."""
        return {
            "KAFKA_PORTS": ",".join(map(str, self.kafka)),
            "KAFKA_CONTROLLER_PORTS": ",".join(map(str, self.kafka_controllers)),
            "MINIO_PORT": str(self.minio),
            "MINIO_CONSOLE_PORT": str(self.minio_console),
            "NODE_DICOM_PORT": str(self.node_dicom),
            "NODE_DICOM_TLS_PORT": str(self.node_dicom_tls),
            "NODE_HTTP_PORT": str(self.node_http),
            "NODE_HL7_PORT": str(self.node_hl7),
            "BALANCER_DICOM_PORT": str(self.balancer_dicom),
            "BALANCER_HTTP_PORT": str(self.balancer_http),
            "AGENT_ROUTER_PORT": str(self.agent_router),
        }


def test_the_marked_blocks_are_the_rehearsal() -> None:
    blocks = rehearsal_blocks(GUIDE.read_text(encoding="utf-8"))
    assert len(blocks) >= 10
    first = blocks[0].text
    for name in [*Ports.free().environment(), "PILOT"]:
        assert f'"${{{name}:-' in first, f"the guide's first block does not let the test set {name}"
    joined = "\n".join(b.text for b in blocks)
    missing = [command for command in MUST_RUN if command not in joined]
    assert not missing, f"docs/pilot.md no longer runs {missing} in its rehearsal"
    # commands for real hosts stay out of the rehearsal
    assert not re.search(r"\b(systemctl|apt-get|cami-admin)\b", joined)


def test_the_balancers_configuration_passes_haproxy_check(tmp_path: Path) -> None:
    config = file_block(GUIDE.read_text(encoding="utf-8"), "global")
    assert "option tcp-check" in config and "uri /readyz" in config
    path = tmp_path / "haproxy.cfg"
    path.write_text(config.replace("cami1:", "127.0.0.1:"), encoding="utf-8")
    balancer = HaproxyServer(tmp_path / "haproxy", ["127.0.0.1:1"])
    balancer.install()  # Debian's package, as on lb1
    checked = subprocess.run(
        ["/usr/sbin/haproxy", "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_nodes_settings_file_passes_config_check(tmp_path: Path) -> None:
    config = file_block(GUIDE.read_text(encoding="utf-8"), "# /etc/cami/cami.toml on cami1")
    ca = TestCA.create(tmp_path / "tls", "Region CA")
    node = ca.issue("cami1", server=True)
    for name, path in {"cami.pem": node.cert, "cami.key": node.key, "region-ca.pem": ca.cert}.items():
        config = config.replace(f"/etc/cami/tls/{name}", str(path))
    assert "/etc/cami/tls/" not in config
    path = tmp_path / "cami.toml"
    path.write_text(config, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    # the secrets come from /etc/cami/cami.env, as the guide's next block shows
    env.update(
        CAMI_S3_ACCESS_KEY="cami-archive",
        CAMI_S3_SECRET_KEY="s" * 40,
        CAMI_PSEUDONYM_KEY="p" * 64,
        CAMI_SESSION_KEY="k" * 64,
    )
    checked = subprocess.run(
        [str(CAMI), "config", "check", "--json", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    answer = json.loads(checked.stdout)
    assert (checked.returncode, answer["problems"], answer["warnings"]) == (0, [], []), answer
    settings = {row["key"]: row["value"] for row in answer["settings"]}
    assert settings["event_log"].startswith("kafka://kafka1:9092,kafka2:9092,kafka3:9092")
    assert settings["env"] == "production"


@pytest.fixture()
def pilot(tmp_path: Path) -> Iterator[tuple[Path, Ports]]:
    """A fresh PILOT directory and free ports; afterwards every server the guide may have started is stopped."""
    directory = tmp_path / "pilot"
    ports = Ports.free()
    try:
        yield directory, ports
    finally:
        _stop_servers(directory, ports)
        _assert_nothing_left(directory)


@pytest.mark.kafka
@pytest.mark.s3
@pytest.mark.slow
def test_the_pilot_guide_runs_on_one_machine(pilot: tuple[Path, Ports]) -> None:
    directory, ports = pilot
    blocks = rehearsal_blocks(GUIDE.read_text(encoding="utf-8"))
    path = directory.parent / "rehearsal.sh"
    path.write_text(script(blocks), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_") or k == "CAMI_CACHE"}
    env.update(ports.environment(), PILOT=str(directory), TCP_NODELAY="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    log = directory.parent / "rehearsal.log"
    started = time.monotonic()
    with log.open("wb") as output:
        process = subprocess.Popen(
            ["bash", str(path)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its background processes share its process group, ended below
        )
        try:
            code = process.wait(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            _end_group(process)
    elapsed = time.monotonic() - started
    said = log.read_text(encoding="utf-8", errors="replace")
    where = re.findall(r"::: docs/pilot\.md line \d+", said)
    failed_at = where[-1].removeprefix("::: ") if where else "before its first block"
    outcome = "timed out" if code is None else f"exited {code}"
    assert code == 0, f"the rehearsal {outcome} after {elapsed:.0f} s, in {failed_at}:\n{said[-6000:]}"
    assert len(where) == len(blocks)

    # what the rehearsal left says it ran on the pilot's servers and found its studies
    assert "PILOT-0001" in (directory / "found.json").read_text(encoding="utf-8")
    before = json.loads((directory / "status.json").read_text(encoding="utf-8"))
    after = json.loads((directory / "status-restored.json").read_text(encoding="utf-8"))
    for state in (before, after):
        assert (state["event_log"]["backend"], state["blobs"]["backend"]) == ("kafka", "s3")
        assert state["clickhouse"]["backend"] == "chdb"
    assert before["query_store"]["rows"]["instances"] == 1
    assert after["query_store"]["rows"]["instances"] == 2  # the first study and the agent's, rebuilt
    assert "3 broker(s) up" in (directory / "readyz.json").read_text(encoding="utf-8")
    print(f"the rehearsal ran {len(blocks)} blocks in {elapsed:.0f} s")


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the script's process group (cami serve, cami agent), then SIGKILL after 60 s."""
    group = process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=0.2)
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)
    process.wait(timeout=30)


def _stop_servers(directory: Path, ports: Ports) -> None:
    """Stop what the infra scripts started on ``directory`` (a no-op for what is not running)."""
    servers = [
        HaproxyServer(
            directory / "haproxy",
            [f"127.0.0.1:{ports.node_dicom}"],
            ports.balancer_dicom,
            http_backends=[f"127.0.0.1:{ports.node_http}"],
            http_listen_port=ports.balancer_http,
        ),
        KafkaCluster(directory / "kafka", 3, ports.kafka, ports.kafka_controllers),
        MinioServer(directory / "minio", ports.minio, ports.minio_console, drives=4),
    ]
    failures = []
    for server in servers:
        try:
            server.stop()
        except ServerError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


def _processes_of(directory: Path) -> list[str]:
    """Processes whose environment names this run's PILOT directory: pid and command line."""
    marker = f"PILOT={directory}\0".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes():
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                found.append(f"{entry.name}: {command.strip()}")
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _assert_nothing_left(directory: Path) -> None:
    deadline = time.monotonic() + 15
    while (left := _processes_of(directory)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"the rehearsal left processes behind: {left}"
