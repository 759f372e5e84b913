"""The `cami` console script, run as a person or a script would run it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import CAMI, embedded_env, run_cami
from tests.support.servers import free_port


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
    demo = report["demo"]
    stored = demo["instances_stored"]
    # the synthetic region went through the real Storage SCP over the network: every instance
    # sent got a success and became exactly one event; the two deliberate mistakes were refused
    assert stored == demo["instances_sent"] >= 100
    assert demo["send_failures"] == []
    assert len(demo["organisations"]) >= 4
    assert {m for org in demo["organisations"] for m in org["modalities"]} == {"CT", "MR", "DX", "MG", "US"}
    assert sum(org["instances"] for org in demo["organisations"]) == stored
    assert demo["incomplete_packages"] and all(p["missing"] for p in demo["incomplete_packages"])
    [bad_object] = demo["refusals"]["object_without_patient_id"]
    assert bad_object["status"] == "0xA900" and "PatientID" in bad_object["error_comment"]
    [bad_caller] = demo["refusals"]["unknown_ae_title"]
    assert bad_caller["association"] == "rejected"
    assert {(r["event"], r["reason"]) for r in demo["rejections"]} == {
        ("InstanceRejected", "missing-patient-id"),
        ("AssociationRejected", "unknown-caller"),
    }
    assert demo["reports"]["signed"] == demo["reports"]["written"] > 0
    assert (tmp_path / "home" / "senders.toml").exists() and demo["senders_file"]["written"]
    state = report["state"]
    assert state["event_log"]["backend"] == "embedded"
    assert state["blobs"]["backend"] == "local"
    assert state["clickhouse"]["backend"] == "chdb"
    assert state["event_log"]["events_per_topic"]["cami.dicom"] == stored + 2
    assert state["event_log"]["events_per_topic"]["cami.reports"] == 2 * demo["reports"]["signed"]
    catalogue = state["clickhouse"]["catalogue_rows"]
    assert catalogue["InstanceReceived"] == stored
    assert catalogue["InstanceRejected"] == catalogue["AssociationRejected"] == 1
    assert catalogue["ReportSigned"] == demo["reports"]["signed"]
    assert (tmp_path / "home" / "events.db").exists()
    # the read side answers from the projections: every study sent is in the archive index, the
    # audit trail holds one chained entry per event, monitoring counts what arrived
    index = demo["index"]
    assert index["studies"] == demo["studies_sent"]
    assert sum(index["report_status"].values()) == index["studies"]
    assert index["report_status"].get("signed", 0) == demo["reports"]["signed"]
    assert all(s["report_status"] != "signed" or "Report" not in s["missing"] for s in index["newest"])
    events_total = sum(state["event_log"]["events_per_topic"].values())
    assert demo["audit"] == {"entries": events_total, "chains": demo["audit"]["chains"], "intact": True}
    assert sum(org["instances"] for org in demo["monitoring"]) == stored
    assert sum(org["rejections"] for org in demo["monitoring"]) == 2

    # status in a new process sees the same archive
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
    assert json.loads(status.stdout)["event_log"]["events_per_topic"]["cami.dicom"] == stored + 2
    query_store = json.loads(status.stdout)["query_store"]
    assert query_store["backend"] == "sqlite"
    assert query_store["rows"]["studies"] == index["studies"] and query_store["rows"]["instances"] == stored

    # a second demo re-sends the same (seeded) region: all acknowledged, no second event, no second report
    again = subprocess.run(
        [str(CAMI), "demo", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    second: dict[str, Any] = json.loads(again.stdout)
    assert second["demo"]["instances_stored"] == 0
    assert second["demo"]["duplicates"] == stored
    assert second["demo"]["send_failures"] == []
    assert second["demo"]["reports"]["already_reported"] == demo["reports"]["signed"]
    assert second["state"]["event_log"]["events_per_topic"]["cami.dicom"] == stored + 4


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


def test_status_with_the_clickhouse_server_down_says_so_and_shows_the_rest(tmp_path: Path) -> None:
    """The operator asks because something is down: the other backends are still shown."""
    env = {**embedded_env(tmp_path), "CAMI_CLICKHOUSE": f"clickhouse://default@127.0.0.1:{free_port()}/default"}
    shown = subprocess.run([str(CAMI), "status"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert shown.returncode == 0, shown.stderr[-2000:]
    said = " ".join(shown.stdout.split())
    assert "ClickHouse: DOWN" in said and "connection refused" in said and "CAMI_CLICKHOUSE" in said, said
    assert "event log" in said and "Traceback" not in shown.stdout + shown.stderr
    assert "urllib3" not in shown.stderr  # the HTTP client's retries are not repeated at the operator
    as_json = subprocess.run(
        [str(CAMI), "status", "--json"], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    health = json.loads(as_json.stdout)["health"]
    assert health["warehouse"]["status"] == "down" and health["event_log"]["status"] == "ok", health
