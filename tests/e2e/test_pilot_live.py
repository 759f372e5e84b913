"""The pilot's combination, live: Kafka and MinIO started from the project's scripts, ClickHouse
embedded (no server at hand), ``cami serve`` as a real process.

``cami serve`` runs the projections itself whenever it holds the embedded warehouse, on either log:
an instance sent with storescu is found by QIDO-RS within 2 s without restarting anything. While
it runs, ``cami status`` and ``cami audit history|verify`` answer (they ask the server, which holds
the warehouse), and a second process that needs the warehouse (``cami workers``) is told what to
do instead of failing on a lock.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.agent_region import ADMIN_TOKEN, Cami, _clean_env, wait_for
from tests.support.cli import CAMI
from tests.support.readside import ROOT_UID
from tests.support.servers import KafkaServer, MinioServer, free_ports

PATIENT = "PILOT-0001"


@pytest.fixture(scope="module")
def pilot(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cami]:
    root = tmp_path_factory.mktemp("pilot")
    with KafkaServer(root / "kafka") as kafka, MinioServer(root / "minio") as minio:
        dicom, http, agent = free_ports(3)
        env = {
            "CAMI_EVENT_LOG": f"kafka://{kafka.bootstrap}",
            "CAMI_BLOBS": f"s3://pilot?endpoint={minio.endpoint}",
            "AWS_ACCESS_KEY_ID": minio.access_key,
            "AWS_SECRET_ACCESS_KEY": minio.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        cami = Cami(root / "cami", dicom, http, "PILOT_AGENT", agent, env_extra=env)
        (root / "cami" / "senders.toml").write_text(
            '[archive]\nae_title = "CAMI"\naccept_unknown = true\n', encoding="utf-8"
        )  # a pilot: any caller may send
        cami.start()
        try:
            yield cami
        finally:
            cami.process.stop()


def cami_cli(cami: Cami, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAMI), *args], env=cami.process.env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_an_instance_sent_is_found_by_qido_within_2_s_and_the_cli_works_beside_serve(
    pilot: Cami, tmp_path: Path
) -> None:
    study = generate_uid(prefix=ROOT_UID)
    [sent] = studies.write_study(tmp_path, 1, ["1.2.840.10008.1.2.1"], study_uid=study, patient_id=PATIENT)
    result = studies.storescu("127.0.0.1", pilot.dicom_port, [sent.path], calling="CT1")
    assert list(studies.outcomes(result.stdout + result.stderr).values()) == ["Success"], result.stderr
    stored_at = time.monotonic()

    def found() -> bool:
        answer = pilot.api("GET", "/dicomweb/studies", params={"StudyInstanceUID": study})
        return answer.status_code == 200 and len(answer.json()) == 1

    wait_for("the study in QIDO-RS", found, timeout=30, every=0.05)
    assert time.monotonic() - stored_at < 2.0
    assert pilot.process.running()  # nothing was restarted

    # cami status while serve holds the warehouse: asked of the server, the lag and rows in it
    status = cami_cli(pilot, "status", "--json")
    assert status.returncode == 0, status.stderr[-2000:]
    state = json.loads(status.stdout)
    assert state["event_log"]["backend"] == "kafka" and state["clickhouse"]["backend"] == "chdb"
    assert state["query_store"]["rows"]["instances"] >= 1
    assert "asked it at" in status.stderr and "Traceback" not in status.stderr

    # the audit trail of the study, and its check against the log, the same way
    wait_for(
        "the study's audit entries",
        lambda: cami_cli(pilot, "audit", "history", study, "--json").returncode == 0,
        timeout=30,
        every=0.5,
    )
    history = cami_cli(pilot, "audit", "history", study, "--json")
    entries = json.loads(history.stdout)
    assert [e["event_type"] for e in entries][:1] == ["InstanceReceived"]
    verify = cami_cli(pilot, "audit", "verify", "--record", study)
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    # what the command line read was recorded, under its own name
    accessed = pilot.api("GET", f"/api/audit/records/{study}").json()["entries"]
    assert any(e["actor_user"] == "cami-cli" for e in accessed)

    # a second process that needs the embedded warehouse is told what to do
    workers = cami_cli(pilot, "workers", timeout=120)
    assert workers.returncode != 0
    said = " ".join((workers.stderr + workers.stdout).split())  # the console wraps long lines
    assert "in use by another CAMI process" in said and "CAMI_CLICKHOUSE" in said, said[-2000:]
    assert f"pid {pilot.process.proc.pid if pilot.process.proc else '?'}" in said  # which process holds it
    assert "Cannot lock file" not in said  # the engine's own line is not printed first
    assert "Traceback" not in said

    # the local token is the server's, written for the command line only
    token = pilot.home / "local.token"
    assert token.stat().st_mode & 0o077 == 0
    assert pilot.api("GET", "/api/status", token=ADMIN_TOKEN).status_code == 200


def test_status_on_the_embedded_defaults_while_serve_runs(tmp_path: Path) -> None:
    dicom, http, agent = free_ports(3)
    cami = Cami(tmp_path / "cami", dicom, http, "AGENT", agent)
    cami.start()
    try:
        status = subprocess.run(
            [str(CAMI), "status"], env=cami.process.env, capture_output=True, text=True, timeout=120, check=False
        )
        assert status.returncode == 0, status.stderr[-2000:]
        assert "CAMI backbone" in status.stdout and "asked it at" in status.stderr
    finally:
        cami.process.stop()
    # once serve has stopped, status reads the backends itself
    alone = subprocess.run(
        [str(CAMI), "status"], env=_clean_env({"CAMI_HOME": str(tmp_path / "cami")}), capture_output=True,
        text=True, timeout=120, check=False,
    )  # fmt: skip
    assert alone.returncode == 0 and "asked it at" not in alone.stderr, alone.stderr[-2000:]
