"""The `cami` console script, run as a person or a script would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CAMI = Path(sys.executable).parent / "cami"


def run_cami(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    assert CAMI.exists(), f"{CAMI} missing: install the project (bash infra/python.sh)"
    return subprocess.run(
        [str(CAMI), *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def embedded_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    env["CAMI_HOME"] = str(tmp_path / "home")
    return env


def test_help_lists_the_subcommands() -> None:
    result = run_cami("--help")
    assert result.returncode == 0
    for command in ("demo", "status", "schemas", "workers"):
        assert command in result.stdout


def test_unknown_subcommand_is_a_usage_error() -> None:
    result = run_cami("teleport")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_demo_on_embedded_defaults_stores_and_projects_studies(tmp_path: Path) -> None:
    env = embedded_env(tmp_path)
    result = subprocess.run(
        [str(CAMI), "demo", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    stored = report["demo"]["instances_stored"]
    assert stored >= 30
    state = report["state"]
    assert state["event_log"]["backend"] == "embedded"
    assert state["blobs"]["backend"] == "local"
    assert state["clickhouse"]["backend"] == "chdb"
    assert state["event_log"]["events_per_topic"]["cami.dicom"] == stored
    assert state["clickhouse"]["catalogue_rows"]["InstanceReceived"] == stored
    assert (tmp_path / "home" / "events.db").exists()

    # status in a new process sees the same archive; a second demo adds to it
    status = subprocess.run(
        [str(CAMI), "status", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["event_log"]["events_per_topic"]["cami.dicom"] == stored


def test_schemas_lists_every_event_type_with_fingerprints() -> None:
    result = run_cami("schemas", "--json")
    assert result.returncode == 0
    rows = json.loads(result.stdout)
    names = {r["event_type"] for r in rows}
    assert {"InstanceReceived", "InstanceRejected", "ReportSigned", "PatientsMerged", "RecordAccessed"} <= names
    assert all(len(r["fingerprint"]) == 16 and r["released"] for r in rows)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("CAMI_EVENT_LOG", "ftp://example/events", "unsupported event log URL scheme"),
        ("CAMI_BLOBS", "gopher://x", "gopher"),
    ],
)
def test_bad_configuration_fails_with_one_clear_line(tmp_path: Path, variable: str, value: str, message: str) -> None:
    env = embedded_env(tmp_path)
    env[variable] = value
    result = subprocess.run(
        [str(CAMI), "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
