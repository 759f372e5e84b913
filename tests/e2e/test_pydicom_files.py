"""Every DICOM file shipped with pydicom (test_files and charset_files: third-party objects no one
here wrote) through `cami import`, as a user runs it, then back byte for byte over WADO-RS (the
stored file) and over C-MOVE (dcmtk's movescu asks; a pynetdicom Storage SCP, which accepts any
SOP class and transfer syntax, receives the data set bytes as they travel on the wire).

A file is expected to be stored when pydicom reads it and it carries the identifiers the regional
rules require (Study/Series/SOP Instance UIDs, SOP Class UID, PatientID). Two kinds of such files
are refused by rule, and the test checks they are, with the reason:

* pydicom's deliberately truncated files (it reads them silently, with a short value); the
  archive refuses what it could not send back as it claims to be;

Files whose file meta names another SOP instance or class than the data set (anonymised data sets
whose meta was left behind) are stored on import as they are (STOW-RS refuses them).

Several files are encodings of one SOP instance (MR_small in nine transfer syntaxes...); a re-sent
instance becomes a new version and WADO serves the newest, so the files are imported in rounds,
each round into a fresh archive and holding at most one file per SOP Instance UID.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import threading
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pydicom.data
import pytest
from pynetdicom import AE, evt

from ingest.dicom import split_part10
from tests.support.dicomweb import split_multipart
from tests.support.media import ORG, cami_env, received_events, run_import
from tests.support.readside import ReadSide

DATA = Path(pydicom.data.__file__).parent
REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "PatientID")
#: pydicom's own deliberately broken files that it still reads (a value shorter than declared)
TRUNCATED = {"MR_truncated.dcm", "rtplan_truncated.dcm"}


@dataclass(frozen=True)
class Candidate:
    path: Path
    name: str  # unique: folder/file
    study: str
    series: str
    sop: str
    sop_class: str


def classify() -> tuple[list[Candidate], dict[str, str], dict[str, str]]:
    """(files expected stored, files expected refused -> reason, files skipped -> why)."""
    stored: list[Candidate] = []
    refused: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for folder in ("test_files", "charset_files"):
        for path in sorted(p for p in (DATA / folder).rglob("*") if p.is_file()):
            name = str(path.relative_to(DATA))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as exc:
                skipped[name] = f"pydicom does not read it ({type(exc).__name__})"
                continue
            lacking = [k for k in REQUIRED if not str(ds.get(k, "") or "").strip()]
            if lacking:
                skipped[name] = f"lacks {', '.join(lacking)}"
                continue
            if path.name in TRUNCATED:
                refused[name] = "malformed"
            else:
                stored.append(
                    Candidate(
                        path,
                        name,
                        str(ds.StudyInstanceUID),
                        str(ds.SeriesInstanceUID),
                        str(ds.SOPInstanceUID),
                        str(ds.SOPClassUID),
                    )
                )
    return stored, refused, skipped


def rounds(candidates: list[Candidate]) -> list[list[Candidate]]:
    by_sop: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_sop[candidate.sop].append(candidate)
    out: list[list[Candidate]] = []
    for group in by_sop.values():
        for index, candidate in enumerate(group):
            while len(out) <= index:
                out.append([])
            out[index].append(candidate)
    return out


MOVER_AE, DESTINATION_AE = "PYDICOM_WS", "PYDICOM_DEST"


@contextmanager
def move_destination(batch: list[Candidate]) -> Iterator[tuple[int, dict[str, bytes]]]:
    """A Storage SCP for C-MOVE sub-operations that accepts each file's SOP class in its stored
    transfer syntax and keeps the data set bytes exactly as they arrived (SOPInstanceUID -> bytes)."""
    received: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_store(event: Any) -> int:
        with lock:
            received[str(event.request.AffectedSOPInstanceUID)] = event.request.DataSet.getvalue()
        return 0x0000

    ae = AE(ae_title=DESTINATION_AE)
    pairs = {(c.sop_class, split_part10(c.path.read_bytes()).transfer_syntax) for c in batch}
    for sop_class in {sop for sop, _ in pairs}:
        ae.add_supported_context(sop_class, sorted(ts for sop, ts in pairs if sop == sop_class))
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.server_address[1], received
    finally:
        server.shutdown()


def movescu(port: int, study: str) -> str:
    result = subprocess.run(
        ["/usr/bin/movescu", "-S", "-aet", MOVER_AE, "-aec", "CAMI", "-aem", DESTINATION_AE,
         "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}", "127.0.0.1", str(port)],
        capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"}, timeout=300, check=False,
    )  # fmt: skip
    return result.stdout + result.stderr


def _copy(path: Path, folder: Path, name: str) -> None:
    target = folder / name.replace("/", "__")
    shutil.copyfile(path, target)


@pytest.mark.slow
def test_every_pydicom_file_with_the_regional_identifiers_is_stored_and_comes_back_byte_identical(
    tmp_path: Path,
) -> None:
    expected, refused, skipped = classify()
    summary = (
        f"{len(expected)} expected stored; refused by rule: {json.dumps(refused, indent=1)}; "
        f"skipped: {json.dumps(skipped, indent=1)}"
    )
    print(summary)
    assert len(expected) >= 100, summary  # the corpus is what it claims to be

    all_paths = {str(p.relative_to(DATA)): p for f in ("test_files", "charset_files") for p in (DATA / f).rglob("*")}
    for number, batch in enumerate(rounds(expected)):
        workdir = tmp_path / f"round-{number}"
        folder = workdir / "media"
        folder.mkdir(parents=True)
        for candidate in batch:
            _copy(candidate.path, folder, candidate.name)
        if number == 0:  # the refused ones go with the first round, the skipped ones too (counted)
            for name in [*refused, *skipped]:
                _copy(all_paths[name], folder, name)
        env = cami_env(workdir)
        env["CAMI_HOME"] = str(workdir / "cami")
        result = run_import(env, str(folder), "--organisation", ORG, "--json", "--no-progress")
        assert result.returncode == 0, f"round {number}: {result.stdout[-3000:]}{result.stderr[-3000:]}"

        events = received_events(workdir / "cami")
        received = {e["blob"]["sha256"]: e for e in events if e.type == "InstanceReceived"}
        for candidate in batch:
            digest = hashlib.sha256(candidate.path.read_bytes()).hexdigest()
            assert digest in received, f"{candidate.name} was not stored; {summary}\n{result.stdout[-3000:]}"
        if number == 0:
            rejections = {e["received_sha256"]: e["reason"] for e in events if e.type == "InstanceRejected"}
            for name, reason in refused.items():
                digest = hashlib.sha256(all_paths[name].read_bytes()).hexdigest()
                assert rejections.get(digest) == reason, f"{name} not refused as {reason}; {summary}"

        with move_destination(batch) as (destination_port, moved):
            extra = (
                f'[[qr_caller]]\nae_title = "{MOVER_AE}"\norganisation = "{ORG}"\nrole = "radiologist"\n\n'
                f'[[destination]]\nae_title = "{DESTINATION_AE}"\nhost = "127.0.0.1"\nport = {destination_port}\n'
            )
            with ReadSide.start(workdir, senders_extra=extra) as side:
                per_study = Counter(c.study for c in batch)
                for study, count in per_study.items():
                    side.wait_indexed(study, count, timeout=120)
                with side.client("dr.petrov") as http:
                    for candidate in batch:
                        response = http.get(
                            f"/dicomweb/studies/{candidate.study}/series/{candidate.series}/instances/{candidate.sop}",
                            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
                        )
                        assert response.status_code == 200, f"{candidate.name}: {response.status_code} {response.text}"
                        ((_, data),) = split_multipart(response)
                        assert data == candidate.path.read_bytes(), f"{candidate.name} came back changed over WADO"
                outputs = {study: movescu(side.dicom_port, study) for study in per_study}
            for candidate in batch:
                sent = split_part10(candidate.path.read_bytes())
                assert candidate.sop in moved, (
                    f"{candidate.name} did not arrive over C-MOVE: {outputs[candidate.study]}"
                )
                assert moved[candidate.sop] == sent.part10[sent.dataset_offset :], (
                    f"{candidate.name} came back changed over C-MOVE"
                )
