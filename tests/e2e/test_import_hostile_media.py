"""`cami import` of hostile media, run as a subprocess: zip bombs are refused before inflating,
symbolic links never lead out of the media, zip member names cannot climb out."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.support.media import CAMI, ORG, cami_env, dicom_file, received_events, run_import

MiB = 1 << 20


def wide_env(tmp_path: Path) -> dict[str, str]:
    """The import's environment, with a console wide enough that each error stays on one line."""
    return {**cami_env(tmp_path), "COLUMNS": "500"}


#: runs argv[2:] as its child and writes the child's peak RSS (KiB) to argv[1]. A small process
#: forks the child: a child spawned straight from the test process (vfork/exec) would report the
#: test process's own, much larger, resident set as its peak.
MEASURE = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(env: dict[str, str], tmp_path: Path, *args: str) -> tuple[int, str, str, int]:
    """Run ``cami import`` and return (exit code, stdout, stderr, the child's peak RSS in bytes)."""
    out, err, peak = tmp_path / "stdout.txt", tmp_path / "stderr.txt", tmp_path / "peak-kib.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        code = subprocess.call(
            [sys.executable, "-c", MEASURE, str(peak), str(CAMI), "import", *args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    text = (out.read_text(encoding="utf-8"), err.read_text(encoding="utf-8"))
    return code, text[0], text[1], int(peak.read_text()) * 1024


def write_bomb(path: Path, inflated: int = 400 * MiB) -> None:
    """A zip with one valid DICOM file and one member of ``inflated`` bytes (a few hundred KB
    compressed): a Part-10 header, so it looks like DICOM when sniffed, then zeros."""
    _, good = dicom_file(1)
    _, looks_good = dicom_file(2)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("study/IM0001", good)
        with archive.open("study/IM0002", "w") as member:
            member.write(looks_good)
            block = bytes(4 * MiB)
            for _ in range(inflated // len(block)):
                member.write(block)


def test_a_zip_bomb_is_refused_before_inflating_and_memory_stays_bounded(tmp_path: Path) -> None:
    bomb = tmp_path / "media" / "export.zip"
    bomb.parent.mkdir()
    write_bomb(bomb)
    assert bomb.stat().st_size < 2 * MiB
    code, _, stderr, peak = run_measured(wide_env(tmp_path), tmp_path, str(bomb), "--organisation", ORG)
    assert code == 1, stderr
    lines = [line for line in stderr.splitlines() if "IM0002" in line]
    assert lines and "zip bomb" in lines[0], stderr
    assert peak < 300 * MiB, f"cami import peaked at {peak / MiB:.0f} MiB"
    # the valid member was still imported
    assert [e.type for e in received_events(tmp_path / "home")] == ["InstanceReceived"]


def test_a_bomb_of_many_members_is_refused_by_the_total(tmp_path: Path) -> None:
    _, good = dicom_file(1)
    packed = tmp_path / "many.zip"
    with zipfile.ZipFile(packed, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(20):
            archive.writestr(f"IM{i:04d}", good)
    env = {**cami_env(tmp_path), "CAMI_IMPORT_MAX_ZIP_TOTAL": str(10 * len(good))}
    result = run_import(env, str(packed), "--organisation", ORG, "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["stored"] == 0 and "CAMI_IMPORT_MAX_ZIP_TOTAL" in summary["error_list"][0]["error"]


def test_symbolic_links_out_of_the_media_are_refused_and_not_followed(tmp_path: Path) -> None:
    media, outside = tmp_path / "media", tmp_path / "private"
    (media / "series").mkdir(parents=True)
    outside.mkdir()
    inside_uid, inside = dicom_file(1)
    (media / "series" / "IM0001").write_bytes(inside)
    secret_uid, secret = dicom_file(2)
    (outside / "IM9999").write_bytes(secret)
    (media / "series" / "IM0002").symlink_to(outside / "IM9999")  # a file link out of the media
    (media / "other").symlink_to(outside, target_is_directory=True)  # a folder link out of the media
    (media / "series" / "again").symlink_to(media / "series" / "IM0001")  # a link inside: harmless
    result = run_import(wide_env(tmp_path), str(media), "--organisation", ORG)
    assert result.returncode == 1, result.stderr
    refused = [line for line in result.stderr.splitlines() if "outside the imported folder" in line]
    assert len(refused) == 2, result.stderr
    assert any("IM0002" in line for line in refused)
    assert any(str(media / "other") + ":" in line for line in refused)
    stored = {e["SOPInstanceUID"] for e in received_events(tmp_path / "home") if e.type == "InstanceReceived"}
    assert stored == {inside_uid} and secret_uid not in stored


def test_zip_members_that_climb_out_or_are_links_are_refused(tmp_path: Path) -> None:
    uid, good = dicom_file(1)
    packed = tmp_path / "tricks.zip"
    with zipfile.ZipFile(packed, "w") as archive:
        archive.writestr("ok/IM0001", good)
        archive.writestr("../../etc/IM0002", good)
        archive.writestr("/abs/IM0003", good)
        link = zipfile.ZipInfo("ok/IM0004")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    result = run_import(cami_env(tmp_path), str(packed), "--organisation", ORG, "--json")
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    errors = {e["path"].split("!", 1)[1]: e["error"] for e in summary["error_list"]}
    assert set(errors) == {"../../etc/IM0002", "/abs/IM0003", "ok/IM0004"}, errors
    assert "climbs out" in errors["../../etc/IM0002"] and "symbolic link" in errors["ok/IM0004"]
    assert summary["stored"] == 1 and os.path.exists(packed)
    assert {e["SOPInstanceUID"] for e in received_events(tmp_path / "home")} == {uid}
