"""One organisation may not rewrite another's records, nor move a study to another patient.

Organisation A's study is sent by dcmtk's ``storescu`` under A's calling AE title; the same UIDs
then come from organisation B (``storescu`` under B's AE title, STOW-RS as B's user) with another
PatientID, and from A itself under another patient or study. Each conflict is refused (0xC409,
HTTP 409) with an InstanceRejected event that monitoring counts by reason, no blob is written,
and A's original stays what QIDO-RS finds by the real PatientID and WADO-RS serves. The rule
holds after a restart whose SOP index is rebuilt from the log from offset 0. Everything runs on
both event-log backends (the embedded SQLite log and a real Kafka broker).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid

from api.auth import add_user
from api.bootstrap import bootstrap
from api.config import Settings
from api.http import serve_http
from schemas.events import Event
from streams.processing import EmbeddedRunner, group_id
from streams.topics import DICOM
from tests.support import studies
from tests.support.dicomweb import split_multipart
from tests.support.paths import ROOT
from tests.support.readside import ORG, ORG_B, ROOT_UID, SENDER_AE, USERS, ReadSide, senders_toml
from tests.support.stow import multipart

CONFLICT = 0xC409  # Status.CONFLICTS_WITH_HELD, as the sender sees it
EXPLICIT_LE = "1.2.840.10008.1.2.1"
#: organisation B's own system sending over STOW-RS
B_PACS = "gb2-pacs"


@pytest.fixture(params=["embedded", pytest.param("kafka", marks=pytest.mark.kafka)])
def event_log_url(request: pytest.FixtureRequest) -> str:
    if request.param == "embedded":
        return ""  # the default: $CAMI_HOME/events.db
    server: Any = request.getfixturevalue("kafka_server")
    return f"kafka://{server.bootstrap}?delivery_timeout_ms=10000"


@dataclass
class Rig:
    """``cami serve`` on one CAMI_HOME and event log; ``restart`` keeps both."""

    home: Path
    event_log_url: str
    side: ReadSide | None = None
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def running(self) -> ReadSide:
        assert self.side is not None
        return self.side

    def env(self) -> dict[str, str]:
        env = {"CAMI_HOME": str(self.home), "CAMI_PARTITIONS": "3"}
        if self.event_log_url:
            env["CAMI_EVENT_LOG"] = self.event_log_url
        return env

    def start(self) -> ReadSide:
        """What :meth:`ReadSide.start` does, on this rig's event log."""
        self.home.mkdir(parents=True, exist_ok=True)
        if not (self.home / "senders.toml").exists():
            (self.home / "senders.toml").write_text(senders_toml(), encoding="utf-8")
            users = {**USERS, B_PACS: {"role": "modality", "organisation": ORG_B}}
            self.tokens = {name: add_user(self.home / "users.toml", name, **spec)[1] for name, spec in users.items()}
        archive = bootstrap(Settings.from_env(self.env()))
        runner = EmbeddedRunner(archive.event_log, archive.bindings())
        runner.start()
        scp = archive.storage_scp(port=0)
        scp.start()
        http = serve_http(archive, host="127.0.0.1", port=0)
        self.side = ReadSide(self.home, archive, runner, scp, http, self.tokens)
        return self.side

    def stop(self) -> None:
        if self.side is not None:
            self.side.stop()
            self.side = None

    def restart_with_the_index_rebuilt_from_the_log(self) -> ReadSide:
        self.stop()
        for name in ("sop-index.db", "sop-index.db-wal", "sop-index.db-shm"):
            (self.home / name).unlink(missing_ok=True)
        return self.start()


@pytest.fixture
def rig(tmp_path: Path, event_log_url: str) -> Iterator[Rig]:
    rig = Rig(tmp_path / "cami", event_log_url)
    rig.start()
    yield rig
    rig.stop()


# -- helpers -----------------------------------------------------------------------------------
def new_patient() -> str:
    return f"P-{uuid.uuid4().hex[:10]}"


def send(side: ReadSide, paths: list[Path], organisation: str) -> list[tuple[int, str]]:
    """dcmtk's storescu under the organisation's calling AE title, in debug mode so the store
    responses are dumped: (DICOM status, ErrorComment) per file, in order."""
    result = subprocess.run(
        [
            *("/usr/bin/storescu", "-d", "-nh", "-aet", SENDER_AE[organisation], "-aec", "CAMI", "127.0.0.1"),
            str(side.dicom_port),
            *map(str, paths),
        ],
        capture_output=True,
        text=True,
        env=studies.DCMTK_ENV,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    responses = output.split("Received Store Response")[1:]
    assert len(responses) == len(paths), output[-3000:]
    found = []
    for response in responses:
        block = response.split("Sending file")[0]
        status = re.search(r"DIMSE Status\s*: 0x([0-9a-fA-F]{4})", block)
        comment = re.search(r"\(0000,0902\) LO \[([^\]]*)\]", block)
        assert status is not None, block
        found.append((int(status.group(1), 16), comment.group(1) if comment else ""))
    return found


SUCCESS = (0, "")


def refused_as_conflict(response: tuple[int, str]) -> bool:
    status, comment = response
    return status == CONFLICT and bool(comment)


def variant(source: Path, target: Path, **changes: str) -> Path:
    """The file with some attributes changed (other bytes, same encoding)."""
    ds = dcmread(source)
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
    ds.save_as(target)
    return target


def events_of(side: ReadSide, event_type: str, sop_instance_uid: str) -> list[Event]:
    return [e for e in side.events(DICOM) if e.type == event_type and e["SOPInstanceUID"] == sop_instance_uid]


def settle(side: ReadSide, timeout: float = 60.0) -> None:
    """Until every projection has applied the log as it is now (the read models are current)."""
    log = side.archive.event_log
    processors = side.archive.processors()
    targets = {(group_id(p), t): log.end_offsets(t) for p in processors for t in p.topics}
    deadline = time.monotonic() + timeout
    for (group, topic), ends in targets.items():
        while any(log.committed(group, topic).get(p, 0) < end for p, end in ends.items() if end > 0):
            assert time.monotonic() < deadline, f"{group} did not reach the end of {topic}"
            time.sleep(0.1)


def qido_studies(side: ReadSide, patient_id: str) -> list[str]:
    with side.client("dr.petrov") as http:
        response = http.get("/dicomweb/studies", params={"PatientID": patient_id})
    assert response.status_code in (200, 204), response.text
    return [item["0020000D"]["Value"][0] for item in (response.json() if response.status_code == 200 else [])]


def wado_instance(side: ReadSide, study: str, series: str, sop: str) -> bytes:
    with side.client("dr.petrov") as http:
        response = http.get(
            f"/dicomweb/studies/{study}/series/{series}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"'},
        )
    assert response.status_code == 200, response.text
    ((_, data),) = split_multipart(response)
    return data


def rejections_by_reason(side: ReadSide, organisation: str) -> dict[str, int]:
    with side.client("it") as http:
        response = http.get("/api/monitoring/organisations", params={"minutes": 60})
    assert response.status_code == 200, response.text
    for entry in response.json()["organisations"]:
        if entry["organisation"] == organisation:
            return dict(entry["rejections_by_reason"])
    return {}


def stow(side: ReadSide, user: str, data: bytes) -> httpx.Response:
    body, content_type = multipart([data])
    with side.client(user) as http:
        return http.post(
            "/dicomweb/studies",
            content=body,
            headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        )


@dataclass
class HeldStudy:
    patient_id: str
    study: str
    series: str
    files: list[studies.SentFile]


def store_a_study(side: ReadSide, folder: Path, instances: int = 2) -> HeldStudy:
    patient_id = new_patient()
    study = ROOT_UID + str(uuid.uuid4().int)[:24]
    files = studies.write_study(folder, instances, [EXPLICIT_LE], study_uid=study, patient_id=patient_id)
    assert send(side, [f.path for f in files], ORG) == [SUCCESS] * instances
    first = dcmread(files[0].path, stop_before_pixels=True)
    side.wait_indexed(str(first.StudyInstanceUID), instances)
    return HeldStudy(patient_id, str(first.StudyInstanceUID), str(first.SeriesInstanceUID), files)


def assert_original_visible(side: ReadSide, held: HeldStudy, intruder_patient: str | None = None) -> None:
    settle(side)
    assert held.study in qido_studies(side, held.patient_id)
    if intruder_patient is not None:
        assert held.study not in qido_studies(side, intruder_patient)
    for sent in held.files:
        assert wado_instance(side, held.study, held.series, sent.sop_instance_uid) == sent.path.read_bytes()


# -- tests -------------------------------------------------------------------------------------
def test_another_organisation_cannot_rewrite_a_held_instance_under_another_patient(rig: Rig, tmp_path: Path) -> None:
    side = rig.running
    held = store_a_study(side, tmp_path / "a")
    target = held.files[0]
    intruder = new_patient()
    forged = variant(target.path, tmp_path / "forged.dcm", PatientID=intruder, PatientName="Чужой^Пациент")

    # C-STORE from organisation B's AE title
    [status] = send(side, [forged], ORG_B)
    assert refused_as_conflict(status), status
    [rejection] = events_of(side, "InstanceRejected", target.sop_instance_uid)
    assert rejection["reason"] == "conflict-organisation" and rejection["status"] == CONFLICT
    assert rejection["error_comment"] and rejection["calling_ae_title"] == SENDER_AE[ORG_B]
    assert rejection.envelope.organisation == ORG_B
    assert not side.archive.blobs.exists(rejection["received_sha256"])  # decided before the write
    assert [e["version"] for e in events_of(side, "InstanceReceived", target.sop_instance_uid)] == [1]

    # STOW-RS as organisation B's system: 409, the standard body with its FailureReason
    response = stow(side, B_PACS, forged.read_bytes())
    assert response.status_code == 409, response.text
    [failed] = response.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [CONFLICT]
    assert failed["00081155"]["Value"] == [target.sop_instance_uid]
    assert "conflict-organisation" in failed["00000902"]["Value"][0]
    rejections = events_of(side, "InstanceRejected", target.sop_instance_uid)
    assert [e["channel"] for e in rejections] == ["dicom", "stow-rs"]
    assert not side.archive.blobs.exists(rejections[1]["received_sha256"])

    # the real patient's study is still found by their PatientID and serves A's bytes
    assert_original_visible(side, held, intruder)
    assert rejections_by_reason(side, ORG_B).get("conflict-organisation", 0) >= 2


def test_the_owner_may_version_its_instance_but_not_move_it_to_another_patient_or_study(
    rig: Rig, tmp_path: Path
) -> None:
    side = rig.running
    held = store_a_study(side, tmp_path / "a")
    target = held.files[0]

    # a new instance in A's study, from A itself, under another patient
    stranger = new_patient()
    new_sop = str(generate_uid())
    other_patient = variant(target.path, tmp_path / "other-patient.dcm", PatientID=stranger, SOPInstanceUID=new_sop)
    # A's own instance re-sent under another study
    moved = variant(target.path, tmp_path / "moved.dcm", StudyInstanceUID=held.study + ".7")
    statuses = send(side, [other_patient, moved], ORG)
    assert all(refused_as_conflict(s) for s in statuses), statuses
    assert [e["reason"] for e in events_of(side, "InstanceRejected", new_sop)] == ["conflict-patient"]
    assert [e["reason"] for e in events_of(side, "InstanceRejected", target.sop_instance_uid)] == ["conflict-study"]
    assert events_of(side, "InstanceReceived", new_sop) == []

    # identical bytes, even from B: a harmless duplicate (no event)
    assert send(side, [target.path], ORG_B) == [SUCCESS]
    # changed bytes from the owner under the same identifiers: version 2, as before
    corrected = variant(target.path, tmp_path / "corrected.dcm", StudyDescription="КТ (исправлено)")
    assert send(side, [corrected], ORG) == [SUCCESS]
    versions = [e["version"] for e in events_of(side, "InstanceReceived", target.sop_instance_uid)]
    assert versions == [1, 2]

    # `cami import` as organisation A of the other-patient object: a refused line with the reason
    result = subprocess.run(
        [sys.executable, "-m", "api.cli", "import", str(other_patient), "--organisation", ORG, "--json"],
        cwd=ROOT,
        env={**os.environ, **rig.env(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["refused_by_reason"] == {"conflict-patient": 1}, summary

    settle(side)
    assert held.study in qido_studies(side, held.patient_id)
    assert held.study not in qido_studies(side, stranger)
    assert rejections_by_reason(side, ORG).get("conflict-patient", 0) >= 1
    assert rejections_by_reason(side, ORG).get("conflict-study", 0) >= 1


def test_the_rule_holds_after_a_restart_that_rebuilds_the_index_from_the_log(rig: Rig, tmp_path: Path) -> None:
    held = store_a_study(rig.running, tmp_path / "a")
    target = held.files[0]
    side = rig.restart_with_the_index_rebuilt_from_the_log()
    assert side.archive.sop_index.count() >= len(held.files)  # read again from offset 0

    intruder = new_patient()
    forged = variant(target.path, tmp_path / "forged.dcm", PatientID=intruder)
    stranger_sop = str(generate_uid())
    other_patient = variant(target.path, tmp_path / "other.dcm", PatientID=intruder, SOPInstanceUID=stranger_sop)
    [status] = send(side, [forged], ORG_B)
    assert refused_as_conflict(status), status
    [status] = send(side, [other_patient], ORG)
    assert refused_as_conflict(status), status
    reasons = [e["reason"] for e in side.events(DICOM) if e.type == "InstanceRejected"]
    assert "conflict-organisation" in reasons and "conflict-patient" in reasons

    corrected = variant(target.path, tmp_path / "corrected.dcm", StudyDescription="КТ (исправлено)")
    assert send(side, [corrected], ORG) == [SUCCESS]
    versions = [e["version"] for e in events_of(side, "InstanceReceived", target.sop_instance_uid)]
    assert versions == [1, 2]  # the rebuilt index knew version 1
    # files[0] is now A's version 2; the others are still served as first sent
    assert_original_visible(side, HeldStudy(held.patient_id, held.study, held.series, held.files[1:]), intruder)


def test_one_study_sent_at_once_over_two_associations_under_two_patients_is_held_under_one(
    rig: Rig, tmp_path: Path
) -> None:
    """Two associations send new instances of one study at the same moment, one under each of two
    PatientIDs: instances of the same patient are stored side by side, and the study ends up held
    under exactly one of the two; every instance of the other is refused as conflict-patient."""
    side = rig.running
    template = store_a_study(side, tmp_path / "template", instances=1).files[0].path
    study = str(generate_uid())
    patients = [new_patient(), new_patient()]
    series = [str(generate_uid()), str(generate_uid())]
    batches = [
        [
            variant(
                template,
                tmp_path / f"p{n}-{i}.dcm",
                PatientID=patient,
                StudyInstanceUID=study,
                SeriesInstanceUID=series[n],
                SOPInstanceUID=str(generate_uid()),
            )
            for i in range(12)
        ]
        for n, patient in enumerate(patients)
    ]
    with ThreadPoolExecutor(2) as pool:
        statuses = list(pool.map(lambda batch: send(side, batch, ORG), batches))
    received = [e for e in side.events(DICOM) if e.type == "InstanceReceived" and e["StudyInstanceUID"] == study]
    [holder] = {e["PatientID"] for e in received}
    winner = patients.index(holder)
    assert statuses[winner] == [SUCCESS] * 12, statuses[winner]
    assert all(refused_as_conflict(s) for s in statuses[1 - winner]), statuses[1 - winner]
    rejected = [e for e in side.events(DICOM) if e.type == "InstanceRejected" and e["StudyInstanceUID"] == study]
    assert sorted(e["reason"] for e in rejected) == ["conflict-patient"] * 12
    assert len(received) == 12
