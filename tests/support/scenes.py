"""The study page's scene: a running archive with a CT series, a multi-frame object and a signed
report, sent with dcmtk's storescu, and the MIS study URL that opens it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from projections.archive_index.views import study_report
from tests.support import studies
from tests.support.readside import ORG, ORG_B, ROOT_UID, SENDER_AE, ReadSide

PATIENT = "SP-0001"
OTHER_PATIENT = "SP-0002"
PROTOCOL = "КТ органов грудной клетки без контрастирования. Срезы 1 мм."
CONCLUSION = "Очаговых и инфильтративных изменений в лёгких не выявлено."
MULTIFRAME_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word Secondary Capture


# -- data: studies sent with storescu, reports through the reports API -------------------------
def ct_series(
    study_uid: str,
    count: int,
    patient_id: str,
    *,
    patient: tuple[str, str] = studies.PATIENTS[0],
    study_date: str = "20261124",
    description: str = "КТ ОГК",
) -> list[Dataset]:
    series_uid = generate_uid(prefix=ROOT_UID)
    out = []
    for number in range(1, count + 1):
        ds = studies.instance(study_uid, series_uid, number, patient=patient, patient_id=patient_id, size=128)
        ds.StudyDate = study_date
        ds.StudyDescription = description
        ds.SeriesDescription = "Аксиальные 1 мм"
        # a ramp plus a bright disc that moves with the instance number: each slice looks different
        y, x = np.mgrid[0:128, 0:128].astype(np.int32)
        disc = ((x - 30 - 8 * number) ** 2 + (y - 64) ** 2) < 18**2
        pixels = (x * 8 + y * 4 + disc * 1500).astype("uint16")
        ds.PixelData = pixels.tobytes()
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        out.append(ds)
    return out


def multiframe(study_uid: str, patient_id: str, frames: int = 3, *, study_date: str = "20261124") -> Dataset:
    """A multi-frame grayscale object (secondary capture) in the same study: 3 frames, 64x64."""
    ds = studies.instance(study_uid, generate_uid(prefix=ROOT_UID), 1, patient_id=patient_id)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_SOP_CLASS
    ds.Modality = "OT"
    ds.StudyDate = study_date
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Многокадровый объект"
    ds.NumberOfFrames = frames
    y, x = np.mgrid[0:64, 0:64]
    ds.PixelData = b"".join(((x * 40 + y * 20 + f * 900) % 4096).astype(np.uint16).tobytes() for f in range(frames))
    return ds


def send(side: ReadSide, datasets: list[Dataset], organisation: str = ORG) -> None:
    """Write the objects as Part-10 files and send them with dcmtk's storescu."""
    folder = side.home.parent / "sent" / generate_uid(prefix=ROOT_UID)
    folder.mkdir(parents=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    profile = studies.storescu_profile(folder / "storescu.cfg", classes)
    result = studies.storescu("127.0.0.1", side.dicom_port, paths, calling=SENDER_AE[organisation], profile=profile)
    outcomes = studies.outcomes(result.stdout + result.stderr)
    assert result.returncode == 0 and len(outcomes) == len(paths), result.stdout[-2000:] + result.stderr[-2000:]
    assert set(outcomes.values()) == {"Success"}, outcomes


def sign_report(side: ReadSide, study_uid: str, protocol: str = PROTOCOL, conclusion: str = CONCLUSION) -> str:
    """A report written and signed by dr.petrov through the reports API; waits for the read model."""
    with side.client("dr.petrov") as client:
        created = client.post(
            "/api/reports",
            json={"study_instance_uid": study_uid, "protocol_text": protocol, "conclusion_text": conclusion},
        )
        assert created.status_code == 201, created.text
        report_id = str(created.json()["report_id"])
        signed = client.post(f"/api/reports/{report_id}/sign")
        assert signed.status_code == 200, signed.text
    wait_report(side, study_uid, "signed")
    return report_id


def draft_report(side: ReadSide, study_uid: str, protocol: str) -> str:
    with side.client("dr.petrov") as client:
        created = client.post(
            "/api/reports", json={"study_instance_uid": study_uid, "protocol_text": protocol, "conclusion_text": ""}
        )
        assert created.status_code == 201, created.text
    wait_report(side, study_uid, "draft")
    return str(created.json()["report_id"])


def wait_report(side: ReadSide, study_uid: str, status: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while study_report(side.archive.warehouse, study_uid)["status"] != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"the report of {study_uid} did not become {status} in {timeout} s")
        time.sleep(0.05)


@dataclass
class Scene:
    side: ReadSide
    study: str  # SP-0001's current study: 4 CT slices + a 3-frame object, signed report
    prior: str  # SP-0001's earlier study, from the other organisation, no report
    draft: str  # SP-0001's study with a draft report only
    other: str  # SP-0002's study
    ct_sops: list[str]


def build_scene(tmp_path: Path) -> Scene:
    side = ReadSide.start(tmp_path)
    try:
        study, prior, draft, other = (generate_uid(prefix=ROOT_UID) for _ in range(4))
        ct = ct_series(study, 4, PATIENT)
        send(side, [*ct, multiframe(study, PATIENT)])
        send(side, ct_series(prior, 2, PATIENT, study_date="20250310", description="КТ ОГК (первичное)"), ORG_B)
        send(side, ct_series(draft, 1, PATIENT, study_date="20260101", description="КТ ГМ"))
        send(side, ct_series(other, 1, OTHER_PATIENT, patient=studies.PATIENTS[1], study_date="20261001"))
        for uid, count in ((study, 5), (prior, 2), (draft, 1), (other, 1)):
            side.wait_indexed(uid, count)
        sign_report(side, study)
        draft_report(side, draft, "Черновой протокол: КТ головного мозга.")
        return Scene(side, study, prior, draft, other, [str(ds.SOPInstanceUID) for ds in ct])
    except BaseException:
        side.stop()
        raise


# -- browser-like helpers --------------------------------------------------------------------
def study_url(patient: str, study: str) -> str:
    return f"/study?patient={quote(patient, safe='')}&study={study}"
