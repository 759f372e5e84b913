"""Series of two patients, sent with dcmtk's storescu to a :class:`ReadSide`, for the find
tests (QIDO-RS and C-FIND)."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.readside import ORG, ROOT_UID, SENDER_AE, ReadSide

NAME_A = "Кузнецова^Мария^Ильинична"
NAME_B = "Smith^John"


def make_series(
    study_uid: str,
    count: int,
    *,
    patient_id: str,
    name: str,
    modality: str = "CT",
    series_number: int = 1,
    study_date: str = "20260110",
    accession: str = "ACC-A",
) -> list[Dataset]:
    series_uid = generate_uid(prefix=ROOT_UID)
    out = []
    for number in range(1, count + 1):
        ds = studies.instance(study_uid, series_uid, number, patient=("ISO_IR 192", name), patient_id=patient_id)
        ds.Modality = modality
        ds.SeriesNumber = series_number
        ds.StudyDate = study_date
        ds.StudyTime = "093000"
        ds.AccessionNumber = accession
        ds.StudyDescription = "КТ органов грудной клетки"
        ds.ReferringPhysicianName = "Смирнов^Олег"
        out.append(ds)
    return out


def send(side: ReadSide, datasets: list[Dataset], organisation: str = ORG) -> None:
    folder = side.home.parent / "sent" / generate_uid(prefix=ROOT_UID)
    folder.mkdir(parents=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    profile = studies.storescu_profile(folder / "storescu.cfg")
    result = studies.storescu("127.0.0.1", side.dicom_port, paths, calling=SENDER_AE[organisation], profile=profile)
    outcomes = studies.outcomes(result.stdout + result.stderr)
    assert result.returncode == 0 and set(outcomes.values()) == {"Success"}, result.stdout[-2000:]
