"""A region in miniature for the transfer agent's end-to-end tests: CAMI (``cami serve`` on the
embedded backends) and a hospital's agent (``cami agent run``), both real processes that a test
can start, kill -9 and restart, with the files that introduce them to each other (CAMI's users
and senders files, the agent's ``agent.toml``), and readers of what CAMI's log then holds.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from api.auth import token_hash
from schemas.codec import decode
from schemas.events import Event
from streams import open_event_log
from streams.topics import DICOM, TRANSFERS
from tests.support.cli import CAMI
from tests.support.servers import free_ports

T = TypeVar("T")

ORGANISATION = "1.2.643.5.1.13.13.12.2.50.1001"
AGENT_USER = "okb-agent"
AGENT_TOKEN = "agent-token-" + "a" * 32
ADMIN_USER = "admin"
ADMIN_TOKEN = "admin-token-" + "b" * 32
IT_USER = "it"
IT_TOKEN = "it-token-" + "c" * 32


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0, every: float = 0.3) -> T:
    """``probe()``'s first truthy answer; AssertionError naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    env["TCP_NODELAY"] = "1"
    env.update(extra)
    return env


@dataclass
class Process:
    """A ``cami`` subprocess with its output in a log file."""

    args: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(
            [str(CAMI), *self.args], env=self.env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        handle.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill9()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@dataclass
class Cami:
    """``cami serve`` on the embedded defaults under ``home``: DICOM and HTTP on loopback."""

    home: Path
    dicom_port: int
    http_port: int
    agent_ae_title: str
    agent_port: int
    #: more settings (CAMI_HL7_PORT...) and more senders.toml entries ([[qr_caller]]...)
    env_extra: dict[str, str] = field(default_factory=dict)
    senders_extra: str = ""
    process: Process = field(init=False)

    def __post_init__(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "users.toml").write_text(
            "".join(
                f'[[user]]\nname = "{name}"\nrole = "{role}"\norganisation = "{ORGANISATION}"\n'
                f'token_sha256 = "{token_hash(token)}"\n\n'
                for name, role, token in (
                    (AGENT_USER, "agent", AGENT_TOKEN),
                    (ADMIN_USER, "administrator", ADMIN_TOKEN),
                    (IT_USER, "regional-it", IT_TOKEN),
                )
            ),
            encoding="utf-8",
        )
        # the agent is a sender of its organisation; host/port: where CAMI sends commitment reports
        (self.home / "senders.toml").write_text(
            '[archive]\nae_title = "CAMI"\nemergency_ae_title = "CAMI_URGENT"\naccept_unknown = false\n\n'
            f'[[sender]]\nae_title = "{self.agent_ae_title}"\norganisation = "{ORGANISATION}"\n'
            f'name = "hospital agent"\nhost = "127.0.0.1"\nport = {self.agent_port}\n\n' + self.senders_extra,
            encoding="utf-8",
        )
        env = _clean_env(
            {
                "CAMI_HOME": str(self.home),
                "CAMI_DICOM_PORT": str(self.dicom_port),
                "CAMI_HTTP_PORT": str(self.http_port),
                "CAMI_HL7_PORT": "off",
                **self.env_extra,
            }
        )
        self.process = Process(["serve"], env, self.home / "serve.log")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        self.process.start()
        wait_for("cami serve to answer", self._answers, timeout=180)

    def _answers(self) -> bool:
        if not self.process.running():
            raise AssertionError(f"cami serve exited: {self.process.tail()}")
        try:
            return httpx.get(self.base_url + "/openapi.json", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def restart(self) -> None:
        self.process.stop()
        self.start()

    def events(self, topic: str) -> list[Event]:
        """Every event on ``topic`` in CAMI's embedded log (read beside the running server)."""
        log = open_event_log(f"sqlite://{self.home}/events.db")
        try:
            events: list[Event] = []
            for partition in log.partitions(topic):
                offset = 0
                while records := log.read(topic, partition, offset, 1000):
                    events.extend(decode(r.value) for r in records)
                    offset = records[-1].offset + 1
            return events
        finally:
            log.close()

    def received(self) -> list[dict[str, Any]]:
        """Payloads of every InstanceReceived."""
        return [dict(e.payload) for e in self.events(DICOM) if e.type == "InstanceReceived"]

    def transfers(self, *types: str) -> list[Event]:
        return [e for e in self.events(TRANSFERS) if not types or e.type in types]

    def blob(self, sha256: str) -> bytes:
        """A stored object's bytes, from the embedded blob store (content-addressed by SHA-256)."""
        matches = [p for p in (self.home / "blobs").rglob(f"*{sha256}*") if p.is_file()]
        assert matches, f"no blob {sha256} under {self.home / 'blobs'}"
        return matches[0].read_bytes()

    def api(self, method: str, path: str, token: str = ADMIN_TOKEN, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, self.base_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60, **kw
        )


@dataclass
class Agent:
    """``cami agent run`` for one hospital, configured by the ``agent.toml`` it writes."""

    root: Path
    ae_title: str
    port: int
    cami_dicom: tuple[str, int]
    cami_url: str
    token: str = AGENT_TOKEN
    emergency_ae_title: str = "AGENT_URGENT"
    windows: Iterable[str] = ()
    bandwidth_kbps: float | None = None
    delivery: str = "dicom"
    polls: list[dict[str, Any]] = field(default_factory=list)
    folder: Path | None = None
    mis_port: int | None = None
    allowed_callers: Iterable[str] = ()
    heartbeat: float = 2.0
    process: Process = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.write_config()
        self.process = Process(["agent", "run", "--config", str(self.config)], _clean_env({}), self.root / "agent.log")

    @property
    def config(self) -> Path:
        return self.root / "agent.toml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def write_config(self) -> None:
        windows = ", ".join(f'"{w}"' for w in self.windows)
        cap = f"bandwidth_kbps = {self.bandwidth_kbps}\n" if self.bandwidth_kbps is not None else ""
        host, port = self.cami_dicom
        callers = ", ".join(f'"{ae_title}"' for ae_title in self.allowed_callers)
        text = (
            f'[agent]\norganisation = "{ORGANISATION}"\nagent_id = "okb-agent-1"\ndata_dir = "data"\n'
            f"heartbeat_seconds = {self.heartbeat}\nrequest_poll_seconds = 1\n\n"
            f'[cami]\nae_title = "CAMI"\nemergency_ae_title = "CAMI_URGENT"\nhost = "{host}"\nport = {port}\n'
            f'base_url = "{self.cami_url}"\ntoken = "{self.token}"\ndelivery = "{self.delivery}"\n'
            "commitment_timeout_seconds = 30\n\n"
            f'[router]\nae_title = "{self.ae_title}"\nemergency_ae_title = "{self.emergency_ae_title}"\n'
            f'host = "127.0.0.1"\nport = {self.port}\n'
            f"allowed_callers = [{callers}]\n\n"
            f"[schedule]\nwindows = [{windows}]\n{cap}\n"
        )
        for poll in self.polls:
            text += "[[poll]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in poll.items()) + "\n"
        if self.folder is not None:
            text += f'[folder]\npath = "{self.folder}"\nsettle_seconds = 1\n\n'
        if self.mis_port is not None:
            text += f'[mis]\nhost = "127.0.0.1"\nport = {self.mis_port}\ntoken = "mis-token"\n\n'
        self.config.write_text(text, encoding="utf-8")

    def start(self) -> None:
        self.process.start()
        wait_for("the agent's router to answer C-ECHO", self._echoes, timeout=120)

    def _echoes(self) -> bool:
        if not self.process.running():
            raise AssertionError(f"cami agent exited: {self.process.tail()}")
        result = subprocess.run(
            ["/usr/bin/echoscu", "-aet", "PROBE", "-aec", self.ae_title, "127.0.0.1", str(self.port)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        return result.returncode == 0

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(CAMI), "agent", *args, "--config", str(self.config)],
            env=_clean_env({}),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )

    def status(self) -> dict[str, Any]:
        import json

        result = self.cli("status", "--json")
        assert result.returncode == 0, result.stderr
        answer: dict[str, Any] = json.loads(result.stdout)
        return answer

    def study_state(self, study_uid: str) -> str | None:
        import sqlite3

        db = sqlite3.connect(self.data_dir / "agent.db", timeout=30)
        try:
            row = db.execute("SELECT state FROM studies WHERE study_instance_uid = ?", (study_uid,)).fetchone()
        finally:
            db.close()
        return str(row[0]) if row else None


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return f'"{value}"'


@contextmanager
def cami_with_hl7(home: Path, senders_extra: str = "", agent_ae_title: str = "OKB_AGENT") -> Iterator[tuple[Cami, int]]:
    """``cami serve`` with its HL7 port open (the region's time zone Moscow); yields it and the port."""
    dicom_port, http_port, agent_port, hl7_port = ports(4)
    server = Cami(
        home,
        dicom_port,
        http_port,
        agent_ae_title,
        agent_port,
        env_extra={"CAMI_HL7_PORT": str(hl7_port), "CAMI_TIMEZONE": "Europe/Moscow"},
        senders_extra=senders_extra,
    )
    server.start()
    try:
        yield server, hl7_port
    finally:
        server.process.stop()


def ports(count: int) -> list[int]:
    return free_ports(count)


def storescu(
    ae_title: str, called: str, port: int, files: Iterable[Path], timeout: float = 300, *, ok: bool = True
) -> str:
    """dcmtk's storescu sends the files to ``called`` at 127.0.0.1:``port``; fails the test on any error
    (``ok=False``: expects one and returns storescu's output)."""
    result = subprocess.run(
        ["/usr/bin/storescu", "-v", "-aet", ae_title, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "TCP_NODELAY": "1"},
    )
    output = result.stdout + result.stderr
    if ok:
        assert result.returncode == 0, output
    return output
