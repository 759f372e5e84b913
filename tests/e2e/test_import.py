"""`cami import` run as a person runs it: a real console script, a pseudo-terminal, kill -9, re-run."""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import sqlite3
import subprocess
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid

from tests.support.media import CAMI, ORG, UID_ROOT, cami_env, dicom_file, received_events, run_import, write_media


def journal_rows(home: Path) -> int:
    journals = list((home / "imports").glob("*.db"))
    if not journals:
        return 0
    try:
        with sqlite3.connect(f"file:{journals[0]}?mode=ro", uri=True, timeout=5) as conn:
            return int(conn.execute("SELECT count(*) FROM files").fetchone()[0])
    except sqlite3.OperationalError:  # created but the table not yet there
        return 0


# -- the acceptance scenario -------------------------------------------------------------------
DICOM_ON_DISK = 946
DICOM_IN_ZIP = 40
COPIES = 5


def build_folder(root: Path) -> dict[str, Any]:
    """1,000 files: DICOM in nested folders and a zip, exact copies, non-DICOM and bad objects."""
    uids: list[str] = []
    originals: list[bytes] = []
    studies = [generate_uid(UID_ROOT) for _ in range(3)]
    series = {(s, n): generate_uid(UID_ROOT) for s in range(3) for n in range(8)}
    for i in range(DICOM_ON_DISK):
        study = studies[i % 3]
        folder = root / f"study{i % 3}" / f"series{i % 7}" / ("deep/er" if i % 5 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        uid, data = dicom_file(i, study, series[(i % 3, i % 7)])
        (folder / f"IM{i:05d}.dcm").write_bytes(data)
        uids.append(uid)
        originals.append(data)
    with zipfile.ZipFile(root / "study0" / "from-pacs.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for i in range(DICOM_IN_ZIP):
            uid, data = dicom_file(i, studies[0], series[(0, 7)])
            archive.writestr(f"zipped/IM{i:03d}", data)
            uids.append(uid)
        archive.writestr("zipped/README.txt", "exported by a local PACS\n")
        archive.writestr("zipped/thumbs.db", b"\x00\x01" * 40)
    copies = root / "copies"
    copies.mkdir()
    for i in range(COPIES):
        (copies / f"copy{i}.dcm").write_bytes(originals[i * 100])
    other = root / "other"
    other.mkdir()
    (other / "notes.txt").write_text("not an image\n" * 20)
    (other / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(range(256)) * 8)
    (other / "empty.dat").write_bytes(b"")
    (other / "index.html").write_text("<html></html>")
    (other / "short.bin").write_bytes(b"DICM")
    _, bad = dicom_file(1, studies[1], series[(1, 0)])
    (other / "truncated.dcm").write_bytes(bad[: len(bad) - 60])
    _, anonymous = dicom_file(2, studies[1], series[(1, 0)], patient_id=None)
    (other / "no-patient-id.dcm").write_bytes(anonymous)
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".zip"]
    assert len(files) + DICOM_IN_ZIP + 2 == 1000
    return {"uids": uids, "bytes": sum(p.stat().st_size for p in files)}


def spawn_in_terminal(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[bytes], list[bytes]]:
    """Start `cami import` with its stderr on a pseudo-terminal, as in a person's shell."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(CAMI), "import", *args],
        env={**env, "TERM": "xterm-256color", "COLUMNS": "180"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=slave,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        os.close(master)

    threading.Thread(target=drain, daemon=True).start()
    return proc, chunks


@pytest.mark.slow
def test_import_of_1000_files_shows_progress_resumes_after_kill_and_reports_counts(tmp_path: Path) -> None:
    root = tmp_path / "export"
    data = build_folder(root)
    distinct = set(data["uids"])
    assert len(distinct) == DICOM_ON_DISK + DICOM_IN_ZIP
    env = cami_env(tmp_path)
    home = Path(env["CAMI_HOME"])
    args = [str(root), "--organisation", ORG, "--full-import"]

    # first run, in a terminal: progress bar; killed with SIGKILL once a third is journaled
    proc, output = spawn_in_terminal(env, *args)
    deadline = time.monotonic() + 120
    while journal_rows(home) < 330:
        assert proc.poll() is None, "the import finished before it could be interrupted"
        assert time.monotonic() < deadline, "the journal did not fill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    time.sleep(0.2)
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(output).decode("utf-8", "replace"))
    assert "/1000 files" in screen, screen[-2000:]
    assert " MB" in screen and "files/s" in screen and "MB/s" in screen and "ETA" in screen
    journaled_at_kill = journal_rows(home)
    assert 330 <= journaled_at_kill < 1000

    # the window between "stored" and "journaled": forget 10 stored files, as if killed right there
    journal = next((home / "imports").glob("*.db"))
    with sqlite3.connect(journal) as conn:
        forgotten = conn.execute("SELECT key FROM files WHERE outcome = 'stored' LIMIT 10").fetchall()
        assert len(forgotten) == 10
        conn.executemany("DELETE FROM files WHERE key = ?", forgotten)
    resumable = journaled_at_kill - 10

    # second run: resumes, finishes, machine-readable summary
    result = run_import(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    assert f"resumed: {resumable} of 1000 already imported" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["files_seen"] == 1000
    assert summary["resumed"] == resumable
    assert summary["this_run"]["files"] == 1000 - resumable
    assert summary["stored"] + summary["duplicates"] == DICOM_ON_DISK + DICOM_IN_ZIP + COPIES
    assert summary["duplicates"] >= COPIES + 10  # the copies, plus the forgotten files seen again
    assert summary["this_run"]["duplicate"] >= 10  # the forgotten files were held already
    assert summary["refused_by_reason"] == {"malformed": 1, "missing-patient-id": 1}
    assert summary["skipped_by_reason"] == {"empty": 1, "not-dicom": 6}
    assert summary["errors"] == 0 and summary["error_list"] == []
    assert summary["full_import"] is True and summary["organisation"] == ORG
    assert summary["complete"] is True and summary["exit_code"] == 0
    assert summary["this_run"]["files_per_second"] > 0

    # the event log: exactly one InstanceReceived per distinct instance, across both runs
    events = received_events(home)
    received = [e for e in events if e.type == "InstanceReceived"]
    per_uid = Counter(e["SOPInstanceUID"] for e in received)
    assert set(per_uid) == distinct
    assert max(per_uid.values()) == 1
    assert summary["stored"] + summary["duplicates"] - len(received) == COPIES  # copies never add events
    this_run = [e for e in received if e.envelope.correlation_id == summary["run_id"]]
    assert len(this_run) == summary["this_run"]["stored"]
    for event in received:
        assert event["channel"] == "import"
        assert event.envelope.organisation == ORG
        assert event.envelope.actor.role == "administrator"
        assert event.envelope.source_node.startswith("import:")
        assert event.envelope.correlation_id and event.envelope.correlation_id.startswith("import-")
    rejected = Counter(e["reason"] for e in events if e.type == "InstanceRejected")
    assert set(rejected) == {"malformed", "missing-patient-id"}

    # third run: nothing left to do, nothing new in the log
    again = run_import(env, *args, "--json")
    assert again.returncode == 0, again.stderr
    assert "resumed: 1000 of 1000 already imported" in again.stderr
    third = json.loads(again.stdout)
    assert third["this_run"]["files"] == 0
    assert (third["stored"], third["duplicates"]) == (summary["stored"], summary["duplicates"])
    assert len([e for e in received_events(home) if e.type == "InstanceReceived"]) == len(distinct)


def test_dicomdir_media_is_imported_once_with_unreferenced_files(tmp_path: Path) -> None:
    media = tmp_path / "cdrom"
    referenced = write_media(media, 6)
    assert (media / "DICOMDIR").exists()
    extra_uid, extra = dicom_file(1)
    (media / "EXTRA").mkdir()
    (media / "EXTRA" / "IMG0001").write_bytes(extra)
    (media / "README.TXT").write_text("Viewer for Windows on this disc\n")
    env = cami_env(tmp_path)

    # the media and a folder inside it: overlapping paths, still every file once
    sub = next(p for p in media.iterdir() if p.is_dir() and p.name != "EXTRA")
    args = [str(media), str(sub), "--organisation", ORG, "--emergency", "--pathology", "--no-progress"]
    result = run_import(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["files_seen"] == 6 + 1 + 1 + 1  # referenced, unreferenced, readme, DICOMDIR
    assert summary["dicomdir_referenced"] == 6
    assert summary["stored"] == 7 and summary["duplicates"] == 0
    assert summary["skipped_by_reason"] == {"dicomdir": 1, "not-dicom": 1}
    assert summary["full_import"] is False and summary["emergency"] is True

    received = [e for e in received_events(Path(env["CAMI_HOME"])) if e.type == "InstanceReceived"]
    assert sorted(e["SOPInstanceUID"] for e in received) == sorted([*referenced, extra_uid])
    assert all(e["emergency"] and e["pathology"] for e in received)

    # the human summary (no --json) on a re-run: nothing new
    human = run_import(env, *args)
    assert human.returncode == 0, human.stderr
    assert "resumed: 9 of 9 already imported" in human.stderr
    assert "stored (new)" in human.stdout and "already held" in human.stdout


def test_missing_files_of_a_dicomdir_and_unreadable_inputs_are_errors(tmp_path: Path) -> None:
    media = tmp_path / "usb"
    write_media(media, 3)
    victim = next(p for p in sorted(media.rglob("*")) if p.is_file() and p.name != "DICOMDIR")
    victim.unlink()
    (media / "broken.zip").write_bytes(b"PK\x03\x04 this is not really a zip")
    (media / "dangling").symlink_to(media / "nowhere")
    env = cami_env(tmp_path)
    result = run_import(env, str(media), "--organisation", ORG, "--json")
    assert result.returncode == 1, result.stderr
    summary = json.loads(result.stdout)
    assert summary["stored"] == 2
    assert summary["errors"] == 3
    errors = {Path(e["path"].split("!")[0]).name: e["error"] for e in summary["error_list"]}
    assert "missing on the media" in errors[victim.name]
    assert "zip" in errors["broken.zip"]
    assert "dangling" in errors
    assert summary["complete"] is False

    # errors are not journaled: the next run tries them again (and still reports them)
    again = run_import(env, str(media), "--organisation", ORG, "--json")
    assert again.returncode == 1
    assert json.loads(again.stdout)["errors"] == 3


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = cami_env(tmp_path)
    no_org = run_import(env, str(tmp_path))
    assert no_org.returncode == 2 and "--organisation" in no_org.stderr
    missing = run_import(env, str(tmp_path / "no-such-folder"), "--organisation", ORG)
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr
    workers = run_import(env, str(tmp_path), "--organisation", ORG, "--workers", "0")
    assert workers.returncode == 2


def test_ctrl_c_stops_cleanly_journals_what_finished_and_resumes(tmp_path: Path) -> None:
    root = tmp_path / "export"
    build_folder(root)
    env = cami_env(tmp_path)
    home = Path(env["CAMI_HOME"])
    args = [str(root), "--organisation", ORG, "--no-progress"]
    proc = subprocess.Popen(
        [str(CAMI), "import", *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while journal_rows(home) < 100:
        assert proc.poll() is None, "the import finished before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted: run the same command again to resume" in stderr
    assert "stored (new)" in stdout  # the partial summary
    done = journal_rows(home)
    assert 100 <= done < 1000

    result = run_import(env, *args, "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["resumed"] == done
    assert summary["stored"] + summary["duplicates"] == DICOM_ON_DISK + DICOM_IN_ZIP + COPIES
    received = [e for e in received_events(home) if e.type == "InstanceReceived"]
    assert len(received) == len({e["SOPInstanceUID"] for e in received}) == DICOM_ON_DISK + DICOM_IN_ZIP
