"""``cami monitor`` as regional IT runs it: against a real ``cami serve`` (embedded defaults) fed by
dcmtk's storescu. The live view runs in a pseudo-terminal (as in a terminal window) and must
redraw with the new counts, say so when the archive goes away, and come back when it returns;
``--once --json`` gives the snapshot for scripts; a token of another role is refused."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.demo.synthetic import region, synthetic_study, write_study
from tests.support.agent_region import AGENT_TOKEN, IT_TOKEN, ORGANISATION, Cami, ports, storescu, wait_for
from tests.support.cli import CAMI

pytestmark = pytest.mark.slow

SENDER_AE = "OKB_AGENT"  # the sender senders.toml knows for the organisation
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")


@pytest.fixture()
def cami(tmp_path: Path) -> Iterator[Cami]:
    dicom_port, http_port, agent_port = ports(3)
    server = Cami(tmp_path / "cami", dicom_port, http_port, SENDER_AE, agent_port)
    server.start()
    try:
        yield server
    finally:
        server.process.stop()


def token_file(tmp_path: Path, token: str) -> Path:
    path = tmp_path / "token"
    path.write_text(token + "\n", encoding="utf-8")
    return path


def send(tmp_path: Path, cami: Cami, seed: int, instances: int) -> None:
    study = synthetic_study(region()[0], "CT", instances=instances, seed=seed)
    files = write_study(study, tmp_path / f"study-{seed}")
    storescu(SENDER_AE, "CAMI", cami.dicom_port, files)


def once(cami: Cami, token: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAMI), "monitor", "--url", cami.base_url, "--token-file", str(token), "--once", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def organisation_row(snapshot: dict[str, object]) -> dict[str, object] | None:
    rows = snapshot["organisations"]
    assert isinstance(rows, list)
    return next((r for r in rows if r["organisation"] == ORGANISATION), None)


def test_once_json_gives_the_dashboard_snapshot_and_another_role_is_refused(tmp_path: Path, cami: Cami) -> None:
    send(tmp_path, cami, seed=801, instances=3)

    def counted() -> dict[str, object] | None:
        result = once(cami, token_file(tmp_path, IT_TOKEN))
        assert result.returncode == 0, result.stderr
        row = organisation_row(json.loads(result.stdout))
        return row if row is not None and row["today"]["instances"] == 3 else None  # type: ignore[index]

    row = wait_for("the three instances in cami monitor --once", counted, timeout=60, every=1)
    assert row["organisation_name"] == "hospital agent"  # the directory's name, not the OID
    assert row["today"]["studies"] == 1  # type: ignore[index]

    refused = once(cami, token_file(tmp_path, AGENT_TOKEN))
    assert refused.returncode == 1
    assert "403" in refused.stderr and "regional-it or administrator" in refused.stderr
    assert refused.stdout == ""


class Terminal:
    """``cami monitor`` in a pseudo-terminal; everything it draws is kept (ANSI codes removed)."""

    def __init__(self, args: list[str]) -> None:
        master, slave = os.openpty()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
        env.update({"TERM": "xterm-256color", "COLUMNS": "400", "LINES": "60"})
        self.proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.master = master
        self.screen = ""
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        # poll, not select: a long session can hold more than FD_SETSIZE (1024) descriptors,
        # and select() refuses a descriptor numbered above that
        poller = select.poll()
        poller.register(self.master, select.POLLIN)
        while True:
            ready = poller.poll(500)
            if not ready:
                if self.proc.poll() is not None:
                    return
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            with self.lock:
                self.screen += ANSI.sub("", chunk.decode("utf-8", errors="replace"))

    def since(self, mark: int) -> str:
        with self.lock:
            return self.screen[mark:]

    def mark(self) -> int:
        with self.lock:
            return len(self.screen)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        self.reader.join(timeout=5)
        os.close(self.master)
        return code


def test_live_view_redraws_with_new_counts_and_survives_the_archive_restarting(tmp_path: Path, cami: Cami) -> None:
    token = token_file(tmp_path, IT_TOKEN)
    terminal = Terminal([str(CAMI), "monitor", "--url", cami.base_url, "--token-file", str(token)])
    try:
        wait_for("the dashboard drawn", lambda: "CAMI regional dashboard" in terminal.since(0), timeout=60)
        before = terminal.mark()
        send(tmp_path, cami, seed=802, instances=4)
        # the row of the organisation, by name, with today's "studies / instances / bytes"
        wait_for(
            "the new counts redrawn",
            lambda: re.search(r"hospital agent.*?\b1 / 4 / ", terminal.since(before)),
            timeout=60,
        )

        cami.process.stop()
        gone = terminal.mark()
        wait_for("the lost connection shown", lambda: "trying again" in terminal.since(gone), timeout=60)
        cami.start()
        back = terminal.mark()
        send(tmp_path, cami, seed=803, instances=2)
        wait_for(
            "the counts after the restart",
            lambda: re.search(r"hospital agent.*?\b2 / 6 / ", terminal.since(back)),
            timeout=90,
        )
        assert terminal.proc.poll() is None, terminal.since(0)[-3000:]
    finally:
        code = terminal.stop()
    assert code == 0, terminal.since(0)[-3000:]
