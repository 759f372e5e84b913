"""Test studies on disk, in the transfer syntaxes modalities really send.

Files are made with pydicom and then written by dcmtk's own converters (dcmconv, dcmcjpeg,
dcmcjpls, dcmcrle), so they carry dcmtk's Part-10 header, exactly as a dcmtk-based sender
would hold them; dcmtk's storescu then sends them without changing a byte of the data set.
"""

from __future__ import annotations

import io
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

#: name -> (dcmtk command producing it, needs 8-bit pixels)
TRANSFER_SYNTAXES: dict[str, tuple[list[str], bool]] = {
    "1.2.840.10008.1.2.1": (["/usr/bin/dcmconv", "+te"], False),  # explicit VR little endian
    "1.2.840.10008.1.2": (["/usr/bin/dcmconv", "+ti"], False),  # implicit VR little endian
    "1.2.840.10008.1.2.1.99": (["/usr/bin/dcmconv", "+td"], False),  # deflated explicit VR LE
    "1.2.840.10008.1.2.4.70": (["/usr/bin/dcmcjpeg", "+e1"], False),  # JPEG lossless SV1
    "1.2.840.10008.1.2.4.50": (["/usr/bin/dcmcjpeg", "+eb"], True),  # JPEG baseline (8-bit)
    "1.2.840.10008.1.2.4.80": (["/usr/bin/dcmcjpls", "+el"], False),  # JPEG-LS lossless
    "1.2.840.10008.1.2.5": (["/usr/bin/dcmcrle"], False),  # RLE lossless
}

PATIENTS = [
    ("ISO_IR 192", "Кузнецова^Мария^Ильинична"),
    ("ISO_IR 144", "Смирнов^Олег^Петрович"),
    ("ISO 2022 IR 144", "Фёдоров^Юрий"),
]


@dataclass(frozen=True)
class SentFile:
    path: Path
    sop_instance_uid: str
    transfer_syntax: str


def instance(
    study_uid: str,
    series_uid: str,
    number: int,
    *,
    patient: tuple[str, str] = PATIENTS[0],
    patient_id: str | None = "TEST-0001",
    sop_uid: str | None = None,
    bits: int = 16,
    size: int = 64,
) -> Dataset:
    """A complete CT image carrying every regional attribute (``patient_id=None`` leaves it out)."""
    charset, name = patient
    ds = Dataset()
    ds.SpecificCharacterSet = charset
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName = name
    if patient_id is not None:
        ds.PatientID = patient_id
    ds.PatientBirthDate = "19720305"
    ds.PatientSex = "F"
    ds.StudyDate = "20261124"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC-77"
    ds.StudyID = "1"
    ds.Modality = "CT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PerformingPhysicianName = "Орлова^Анна"
    doctor = Dataset()
    code = Dataset()
    code.CodeValue = "D-1042"
    code.CodingSchemeDesignator = "RU-REGION-STAFF"
    code.CodeMeaning = "Орлова А."
    doctor.PersonIdentificationCodeSequence = [code]
    ds.PerformingPhysicianIdentificationSequence = [doctor]
    procedure = Dataset()
    procedure.CodeValue = "A06.09.005"
    procedure.CodingSchemeDesignator = "RU-MZ-NMU"
    procedure.CodeMeaning = "Компьютерная томография органов грудной полости"
    ds.ProcedureCodeSequence = [procedure]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    y, x = np.mgrid[0:size, 0:size]
    image = ((x + y + number) % (1 << ds.BitsStored)).astype(np.uint8 if bits == 8 else np.uint16)
    ds.PixelData = image.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def part10_bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_study(
    directory: Path,
    count: int,
    transfer_syntaxes: list[str] | None = None,
    *,
    study_uid: str | None = None,
    patient_id: str = "TEST-0001",
) -> list[SentFile]:
    """``count`` instances of one study, spread round-robin over ``transfer_syntaxes``."""
    syntaxes = transfer_syntaxes or list(TRANSFER_SYNTAXES)
    study_uid = study_uid or generate_uid()
    directory.mkdir(parents=True, exist_ok=True)
    series = {ts: generate_uid() for ts in syntaxes}
    files = []
    for i in range(count):
        ts = syntaxes[i % len(syntaxes)]
        command, eight_bit = TRANSFER_SYNTAXES[ts]
        ds = instance(
            study_uid,
            series[ts],
            i + 1,
            patient=PATIENTS[i % len(PATIENTS)],
            patient_id=patient_id,
            bits=8 if eight_bit else 16,
        )
        source = directory / f"src-{i:05d}.dcm"
        target = directory / f"{i:05d}.dcm"
        ds.save_as(source, enforce_file_format=True)
        subprocess.run([*command, str(source), str(target)], check=True, env=DCMTK_ENV, capture_output=True)
        source.unlink()
        if ts == "1.2.840.10008.1.2.1.99" and target.stat().st_size % 2:
            # PS3.5 A.5: an odd-length deflated stream is padded with one NUL; dcmtk pads when it
            # sends but not when it writes the file, so pad the file to what goes on the wire
            with target.open("ab") as fh:
                fh.write(b"\x00")
        # lossy JPEG makes a new instance (dcmcjpeg assigns a new SOPInstanceUID): read it back
        sop_uid = str(dcmread(target, stop_before_pixels=True).SOPInstanceUID)
        files.append(SentFile(target, sop_uid, ts))
    return files


STORAGE_CLASSES = ["1.2.840.10008.5.1.4.1.1.2"]  # CT Image Storage (what these studies hold)


def storescu_profile(path: Path, sop_classes: list[str] = STORAGE_CLASSES) -> Path:
    """A storescu config whose profile "Originals" offers one presentation context per (SOP class,
    transfer syntax): every file then travels in the syntax it is stored in, never converted."""
    groups = "\n".join(f"[TS{i}]\nTransferSyntax1 = {ts}\n" for i, ts in enumerate(TRANSFER_SYNTAXES))
    contexts = "\n".join(
        f"PresentationContext{n + 1} = {sop}\\TS{i}"
        for n, (sop, i) in enumerate((sop, i) for sop in sop_classes for i in range(len(TRANSFER_SYNTAXES)))
    )
    path.write_text(
        f"[[TransferSyntaxes]]\n{groups}\n[[PresentationContexts]]\n[Originals]\n{contexts}\n\n"
        "[[Profiles]]\n[Originals]\nPresentationContexts = Originals\n",
        encoding="ascii",
    )
    return path


def storescu(
    host: str,
    port: int,
    files: list[Path],
    *,
    calling: str,
    called: str = "CAMI",
    timeout: float = 600,
    profile: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu, verbose, not halting on failures (per-file outcome in the output). With a
    ``profile`` (see :func:`storescu_profile`) each file is sent in its own transfer syntax."""
    options = ["-xf", str(profile), "Originals"] if profile else []
    return subprocess.run(
        [
            "/usr/bin/storescu",
            "-v",
            "-nh",
            *options,
            "-aet",
            calling,
            "-aec",
            called,
            host,
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=timeout,
        check=False,
    )


def outcomes(storescu_output: str) -> dict[str, str]:
    """file path -> the status text storescu logged for it ("Success", "Error: ...")."""
    result: dict[str, str] = {}
    current = None
    for line in storescu_output.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response (" in line and current is not None:
            result[current] = line.split("Received Store Response (", 1)[1].rstrip(")")
            current = None
    return result
