"""`cami audit` run as an auditor would run it, on an archive filled by `cami demo`.

The demo runs once per module; every test that tampers with history works on its own copy of the
archive's directory, changing it the way someone with access to the files could: a row of the
ClickHouse table (opened from this process after the CLI exited) or an event in the SQLite log.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from projections.warehouse import open_warehouse

CAMI = Path(sys.executable).parent / "cami"


def cami(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    assert CAMI.exists(), f"{CAMI} missing: install the project (bash infra/python.sh)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    env["CAMI_HOME"] = str(home)  # embedded defaults: $CAMI_HOME/events.db, chdb://$CAMI_HOME/clickhouse
    return subprocess.run(
        [str(CAMI), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    home = tmp_path_factory.mktemp("audit-demo") / "home"
    result = cami(home, "demo", "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["demo"]["audit"]["intact"] is True
    return {"home": home, "report": report}


@pytest.fixture
def home(demo: dict[str, Any], tmp_path: Path) -> Path:
    """A copy of the demo archive this test may change."""
    copy = tmp_path / "home"
    shutil.copytree(demo["home"], copy, symlinks=True)  # ClickHouse links store/ relatively
    return copy


def signed_study(demo: dict[str, Any]) -> dict[str, Any]:
    study: dict[str, Any] = next(s for s in demo["report"]["demo"]["index"]["newest"] if s["report_status"] == "signed")
    return study


def verify(home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cami(home, "audit", "verify", "--json", *args)
    assert result.returncode in (0, 1), result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    return result.returncode, report


def history(home: Path, record: str) -> list[dict[str, Any]]:
    result = cami(home, "audit", "history", record, "--json")
    assert result.returncode == 0, result.stderr
    entries: list[dict[str, Any]] = json.loads(result.stdout)
    return entries


def test_the_demo_archive_verifies_intact(demo: dict[str, Any]) -> None:
    home = demo["home"]
    total = sum(demo["report"]["state"]["event_log"]["events_per_topic"].values())

    result = cami(home, "audit", "verify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("audit trail intact:")
    assert f"{total} entries" in result.stdout and f"{total} log events re-hashed" in result.stdout

    code, report = verify(home)
    assert code == 0
    assert report["ok"] is True and report["broken"] == 0 and report["first_broken"] is None
    assert report["entries"] == report["log_events"] == total == demo["report"]["demo"]["audit"]["entries"]
    assert report["unaudited"] == 0

    code, report = verify(home, "--table-only")
    assert code == 0 and report["entries"] == total and report["log_events"] == 0

    study = signed_study(demo)["study_uid"]
    code, report = verify(home, "--record", study)
    assert code == 0 and report["record"] == study
    assert report["entries"] == report["log_events"] < total
    # a record nobody knows (a typo) is not reported intact
    unknown = cami(home, "audit", "verify", "--record", "1.2.3.no.such.study")
    assert unknown.returncode == 1 and "no entries and no events" in unknown.stderr


def test_history_lists_a_study_in_order(demo: dict[str, Any]) -> None:
    study = signed_study(demo)
    entries = history(demo["home"], study["study_uid"])

    assert {e["aggregate_id"] for e in entries} == {study["study_uid"]}
    by_topic: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_topic.setdefault(e["topic"], []).append(e)
    assert len(by_topic["cami.dicom"]) == study["instances"]
    assert [e["event_type"] for e in by_topic["cami.reports"]] == ["ReportDrafted", "ReportSigned"]
    # in the order things happened, and each topic's entries form its chain, in offset order
    keys = [(e["occurred_at"], e["recorded_at"], e["topic"], e["partition"], e["offset"]) for e in entries]
    assert keys == sorted(keys)
    for chain in by_topic.values():
        assert chain[0]["prev_hash"] == "0" * 64
        assert [e["offset"] for e in chain] == sorted(e["offset"] for e in chain)
        for before, after in itertools.pairwise(chain):
            assert after["prev_hash"] == before["entry_hash"]
        assert all(len(e["entry_hash"]) == 64 and int(e["entry_hash"], 16) >= 0 for e in chain)
    assert all(e["summary"] and e["actor_user"] for e in entries)

    table = cami(demo["home"], "audit", "history", study["study_uid"])
    assert table.returncode == 0 and f"History of {study['study_uid']}" in table.stdout
    missing = cami(demo["home"], "audit", "history", "1.2.3.no.such.study")
    assert missing.returncode == 1 and "no entries" in missing.stderr


def tamper(home: Path, entry: dict[str, Any], column: str, value: str) -> None:
    warehouse = open_warehouse(f"chdb://{home}/clickhouse")  # the URL the CLI derives from CAMI_HOME
    try:
        warehouse.command(
            f"ALTER TABLE audit_trail UPDATE {column} = {{v:String}} WHERE topic = {{t:String}}"
            " AND partition = {p:UInt16} AND offset = {o:UInt64} SETTINGS mutations_sync = 2",
            {"v": value, "t": entry["topic"], "p": entry["partition"], "o": entry["offset"]},
        )
    finally:
        warehouse.close()


def position(entry: dict[str, Any]) -> tuple[str, str, int, int]:
    return (entry["aggregate_id"], entry["topic"], entry["partition"], entry["offset"])


def where(report: dict[str, Any]) -> tuple[str, str, int, int]:
    broken = report["first_broken"]
    return (broken["record"], broken["topic"], broken["partition"], broken["offset"])


@pytest.fixture
def tampered_home(home: Path, demo: dict[str, Any]) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    chain = [e for e in history(home, signed_study(demo)["study_uid"]) if e["topic"] == "cami.dicom"]
    assert len(chain) >= 3
    yield home, chain


def test_a_changed_audit_row_is_reported(tampered_home: tuple[Path, list[dict[str, Any]]]) -> None:
    home, chain = tampered_home
    tamper(home, chain[1], "summary", "nothing happened here")
    tamper(home, chain[2], "actor_user", "nobody")  # a later entry, broken too

    code, report = verify(home)
    assert code == 1 and report["ok"] is False and report["broken"] == 2
    assert where(report) == position(chain[1])
    assert report["first_broken"]["problem"] == "summary"
    assert report["first_broken"]["stored"] == "nothing happened here"
    assert report["first_broken"]["expected"] == chain[1]["summary"]
    # the summary is not part of the hash: only the check against the log sees it
    assert verify(home, "--table-only")[0] == 0

    text = cami(home, "audit", "verify")
    assert text.returncode == 1 and "BROKEN (2 entries)" in text.stdout
    assert f"first broken entry: record {chain[1]['aggregate_id']} (cami.dicom/" in text.stdout

    # a changed hash breaks the chain itself
    tamper(home, chain[1], "entry_hash", "f" * 64)
    code, report = verify(home, "--table-only")
    assert code == 1 and where(report) == position(chain[1]) and report["first_broken"]["problem"] == "entry_hash"
    code, report = verify(home, "--record", chain[1]["aggregate_id"])
    assert code == 1 and where(report) == position(chain[1])


def test_a_changed_event_in_the_log_is_reported(tampered_home: tuple[Path, list[dict[str, Any]]]) -> None:
    home, chain = tampered_home
    target, donor = chain[1], chain[2]
    with sqlite3.connect(home / "events.db") as conn:
        # valid encoded bytes: another real event's, written over this one's
        changed = conn.execute(
            "UPDATE events SET value = (SELECT value FROM events WHERE topic = ? AND partition = ? AND offset = ?)"
            " WHERE topic = ? AND partition = ? AND offset = ?",
            (
                donor["topic"],
                donor["partition"],
                donor["offset"],
                target["topic"],
                target["partition"],
                target["offset"],
            ),
        ).rowcount
    assert changed == 1

    code, report = verify(home)
    assert code == 1 and report["broken"] == 1
    assert where(report) == position(target)
    assert report["first_broken"]["problem"] == "event_sha256"
    assert report["first_broken"]["expected"] == target["event_sha256"]
    assert report["first_broken"]["stored"] == donor["event_sha256"]
    assert verify(home, "--table-only")[0] == 0  # the table is as it was
