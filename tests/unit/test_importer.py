"""The pure parts of the bulk import: discovery, sniffing, the journal, the summary."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from ingest.dicom import split_part10
from ingest.importer import (
    DUPLICATE,
    ERROR,
    REFUSED,
    SKIPPED,
    STORED,
    Candidate,
    FileResult,
    ImportFailed,
    ImportOptions,
    Journal,
    Problem,
    discover,
    new_summary,
    prepare,
    resolve_case_insensitive,
    run_key,
    sniff,
)
from tests.support.media import UID_ROOT, dicom_file, write_media


def candidates(paths: list[Path]) -> list[Candidate]:
    found = list(discover(paths))
    assert all(isinstance(c, Candidate) for c in found), found
    return [c for c in found if isinstance(c, Candidate)]


# -- sniffing ----------------------------------------------------------------------------------
def test_sniff_accepts_part10_only() -> None:
    _, data = dicom_file(1)
    assert sniff(data[:132]) is None
    assert sniff(b"") == "empty"
    assert sniff(b"DICM") == "not-dicom"
    assert sniff(b"\xff\xd8\xff\xe0" + bytes(200)) == "not-dicom"
    assert sniff(b"hello world, not an image" * 10) == "not-dicom"
    assert sniff(b"\x00" * 128 + b"DICX") == "not-dicom"


def test_sniff_recognises_a_data_set_without_part10_header() -> None:
    _, data = dicom_file(1)
    start = split_part10(data).dataset_offset
    assert sniff(data[start : start + 132]) == "no-part10-header"  # explicit VR, as written
    implicit = b"\x08\x00\x16\x00" + (26).to_bytes(4, "little") + b"1.2.840.10008.5.1.4.1.1.2\x00"
    assert sniff(implicit) == "no-part10-header"


# -- discovery ---------------------------------------------------------------------------------
def test_discovery_walks_folders_and_zips_without_reading_and_never_twice(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    _, one = dicom_file(1)
    (tmp_path / "a" / "one.dcm").write_bytes(one)
    (tmp_path / "a" / "b" / "two.txt").write_text("x")
    (tmp_path / "link.dcm").symlink_to(tmp_path / "a" / "one.dcm")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)  # not followed
    with zipfile.ZipFile(tmp_path / "a" / "pack.ZIP", "w") as archive:
        archive.writestr("x/IM1", one)
        archive.writestr("x/inner.zip", b"PK")
        archive.writestr("x/", b"")  # a folder entry: not a file
    found = candidates([tmp_path, tmp_path / "a", tmp_path / "a" / "one.dcm"])
    names = sorted(c.display.split("/")[-1] for c in found)
    assert names == ["IM1", "inner.zip", "link.dcm", "two.txt"]  # one.dcm was reached first by its link
    zipped = {c.member: c for c in found if c.member}
    assert zipped["x/IM1"].size == len(one) and zipped["x/IM1"].skip is None
    assert zipped["x/inner.zip"].skip == "nested-zip"
    assert zipped["x/IM1"].key.endswith("pack.ZIP!x/IM1")
    plain = next(c for c in found if c.display.endswith("link.dcm"))
    assert plain.key == os.path.realpath(tmp_path / "a" / "one.dcm")
    assert plain.stamp == (tmp_path / "a" / "one.dcm").stat().st_mtime_ns


def test_unreadable_inputs_are_problems_not_crashes(tmp_path: Path) -> None:
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 broken")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    found = list(discover([tmp_path, tmp_path / "missing"]))
    problems = {Path(p.display).name: p.error for p in found if isinstance(p, Problem)}
    assert set(problems) == {"bad.zip", "dangling", "missing"}
    assert "zip" in problems["bad.zip"]
    assert "No such file" in problems["missing"]


def test_dicomdir_references_come_first_and_are_found_regardless_of_case(tmp_path: Path) -> None:
    media = tmp_path / "cd"
    uids = write_media(media, 4)
    # a CD mounted with lower-case names: the DICOMDIR still says PT000000/ST000000/...
    for path in sorted(media.rglob("*"), key=lambda p: -len(p.parts)):
        if path.name != "DICOMDIR":
            path.rename(path.with_name(path.name.lower()))
    _, extra = dicom_file(9)
    (media / "aaa-first-by-name.dcm").write_bytes(extra)
    found = candidates([media])
    assert [c.referenced for c in found[:4]] == [True] * 4
    assert sum(c.referenced for c in found) == 4
    assert {c.skip for c in found} == {None, "dicomdir"}
    assert len(found) == 6 and len({c.key for c in found}) == 6
    assert len(uids) == 4


def test_a_file_listed_in_dicomdir_but_missing_is_a_problem(tmp_path: Path) -> None:
    media = tmp_path / "usb"
    write_media(media, 2)
    victim = next(p for p in sorted(media.rglob("*")) if p.is_file() and p.name != "DICOMDIR")
    victim.unlink()
    found = list(discover([media]))
    problems = [p for p in found if isinstance(p, Problem)]
    assert len(problems) == 1 and "missing on the media" in problems[0].error
    assert sum(1 for c in found if isinstance(c, Candidate) and c.referenced) == 1


def test_resolve_case_insensitive(tmp_path: Path) -> None:
    (tmp_path / "Dir").mkdir()
    (tmp_path / "Dir" / "file1").write_text("x")
    assert resolve_case_insensitive(tmp_path, ("DIR", "FILE1")) == tmp_path / "Dir" / "file1"
    assert resolve_case_insensitive(tmp_path, ("Dir", "file1")) == tmp_path / "Dir" / "file1"
    assert resolve_case_insensitive(tmp_path, ("DIR", "FILE2")) is None
    assert resolve_case_insensitive(tmp_path, ("DIR",)) is None  # a folder is not a file


# -- journal -----------------------------------------------------------------------------------
def test_run_key_depends_on_resolved_paths_only(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    key = run_key([tmp_path / "a", tmp_path / "b"])
    assert key == run_key([tmp_path / "b", tmp_path / "a" / ".." / "a", tmp_path / "a"])
    assert key != run_key([tmp_path / "a"])


def _candidate(name: str, stamp: int = 1, size: int = 10) -> Candidate:
    return Candidate(f"/x/{name}", name, size, stamp, Path(f"/x/{name}"))


def test_journal_keeps_final_outcomes_and_forgets_nothing_else(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    files = {n: _candidate(n) for n in ("a", "b", "c", "d", "e")}
    journal.record(files["a"], FileResult("/x/a", "a", STORED, 10, sop_instance_uid=generate_uid(UID_ROOT)), "r1")
    journal.record(files["b"], FileResult("/x/b", "b", DUPLICATE, 10), "r1")
    journal.record(files["c"], FileResult("/x/c", "c", REFUSED, 10, reason="missing-patient-id"), "r1")
    journal.record(files["d"], FileResult("/x/d", "d", SKIPPED, 10, reason="not-dicom"), "r1")
    journal.record(files["e"], FileResult("/x/e", "e", ERROR, 10, error="Permission denied"), "r1")
    assert set(journal.done()) == {"/x/a", "/x/b", "/x/c", "/x/d"}
    journal.close()

    reopened = Journal(tmp_path / "j.db")  # survives the process
    counts, dicom_bytes = reopened.totals(c.key for c in files.values())
    assert counts == {
        (STORED, ""): 1,
        (DUPLICATE, ""): 1,
        (REFUSED, "missing-patient-id"): 1,
        (SKIPPED, "not-dicom"): 1,
    }
    assert dicom_bytes == 30
    assert reopened.totals(["/x/a"])[0] == {(STORED, ""): 1}
    reopened.forget()
    assert reopened.done() == {}
    reopened.close()


def test_journal_lock_refuses_a_second_import_of_the_same_paths(tmp_path: Path) -> None:
    first = Journal(tmp_path / "j.db")
    first.lock()
    second = Journal(tmp_path / "j.db")
    with pytest.raises(ImportFailed, match="another import"):
        second.lock()
    first.close()
    second.lock()  # released with the first holder
    second.close()


def test_summary_counts_and_exit_code(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.db")
    found, problems = prepare([tmp_path])
    options = ImportOptions(organisation="ORG", full_import=True)
    summary = new_summary("run-1", [tmp_path], options, found, problems, journal)
    assert summary.exit_code == 0 and summary.to_dict()["full_import"] is True
    summary.outcomes.update({(STORED, ""): 3, (REFUSED, "malformed"): 1, (SKIPPED, "empty"): 2})
    data = summary.to_dict()
    assert (data["stored"], data["refused"], data["skipped"]) == (3, 1, 2)
    assert data["refused_by_reason"] == {"malformed": 1}
    assert data["exit_code"] == 0
    summary.errors.append({"path": "p", "error": "Permission denied"})
    assert summary.exit_code == 1 and summary.to_dict()["complete"] is False
    journal.close()
