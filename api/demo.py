"""``cami demo``: bring the backbone up and push a small synthetic region through it.

For now the demo writes DICOM instances straight through the write path (blob first, then the
event), then lets the embedded runner project every event into ClickHouse. The Storage SCP and
the full synthetic-region generator replace the direct write in the ingest issue.
"""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from rich.console import Console
from rich.progress import Progress

from api.bootstrap import bootstrap
from api.config import Settings
from schemas.events import Actor, new_event
from streams.processing import EmbeddedRunner
from streams.publisher import publish, publish_async

#: regional organisations (codes in the style of the federal register of medical organisations)
ORGANISATIONS = [
    ("1.2.643.5.1.13.13.12.2.50.1001", "ГБУЗ Областная клиническая больница", "OKB_CT1", "CT"),
    ("1.2.643.5.1.13.13.12.2.50.1002", "ГБУЗ Городская больница №2", "GB2_MR1", "MR"),
    ("1.2.643.5.1.13.13.12.2.50.1003", "ГБУЗ Районная больница", "CRB_DX1", "DX"),
]
SOP_CLASSES = {
    "CT": "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "MR": "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
}
PATIENTS = [("Иванов^Иван^Иванович", "M"), ("Петрова^Анна^Сергеевна", "F"), ("Сидоров^Пётр", "M")]


def synthetic_instance(
    modality: str, study_uid: str, series_uid: str, sop_uid: str, number: int, patient: tuple[str, str], patient_id: str
) -> bytes:
    """A small but valid DICOM Part 10 object (explicit VR little endian, Cyrillic in ISO_IR 192)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASSES.get(modality, SOP_CLASSES["DX"])
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientName, ds.PatientSex = patient
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.Modality = modality
    ds.InstanceNumber = number
    ds.StudyDate = datetime.now(UTC).strftime("%Y%m%d")
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = random.randbytes(64 * 64 * 2)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def run_demo(settings: Settings, console: Console, instances_per_study: int = 12) -> dict[str, Any]:
    archive = bootstrap(settings)
    stored = 0
    try:
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("storing synthetic studies", total=len(ORGANISATIONS) * instances_per_study)
            for (org, _name, ae_title, modality), patient in zip(ORGANISATIONS, PATIENTS, strict=True):
                study_uid, series_uid = generate_uid(), generate_uid()
                patient_id = f"{org.rsplit('.', 1)[-1]}-{random.randint(10000, 99999)}"
                pending = []
                for number in range(1, instances_per_study + 1):
                    sop_uid = generate_uid()
                    data = synthetic_instance(modality, study_uid, series_uid, sop_uid, number, patient, patient_id)
                    blob = archive.blobs.put(data)  # blob first...
                    event = new_event(
                        "InstanceReceived",
                        {
                            "StudyInstanceUID": study_uid,
                            "SeriesInstanceUID": series_uid,
                            "SOPInstanceUID": sop_uid,
                            "SOPClassUID": SOP_CLASSES.get(modality, SOP_CLASSES["DX"]),
                            "TransferSyntaxUID": ExplicitVRLittleEndian,
                            "PatientID": patient_id,
                            "PatientName": patient[0],
                            "PatientSex": patient[1],
                            "Modality": modality,
                            "InstanceNumber": number,
                            "PerformingPhysician": {},
                            "blob": {"sha256": blob.sha256, "size": blob.size, "store": archive.blobs.backend},
                            "missing": ["PerformingPhysician", "ProcedureCode"],
                            "channel": "import",
                            "calling_ae_title": ae_title,
                        },
                        aggregate_id=study_uid,
                        source_node=ae_title,
                        organisation=org,
                    )
                    pending.append(publish_async(archive.event_log, event))  # ...then the event
                    progress.advance(task)
                for future in pending:
                    future.result(timeout=30)
                    stored += 1
                publish(
                    archive.event_log,
                    new_event(
                        "AgentHeartbeat",
                        {
                            "agent_id": f"agent-{ae_title.lower()}",
                            "queue_depth": 0,
                            "queue_bytes": 0,
                            "in_flight": 0,
                            "last_success_at": datetime.now(UTC) - timedelta(seconds=5),
                        },
                        aggregate_id=org,
                        source_node=ae_title,
                        organisation=org,
                        actor=Actor("agent", "system"),
                    ),
                )
        runner = EmbeddedRunner(archive.event_log, archive.bindings())
        projected = runner.catch_up()
    finally:
        archive.close()
    console.print(f"stored {stored} instances from {len(ORGANISATIONS)} organisations; projected {projected}")
    return {"instances_stored": stored, "organisations": len(ORGANISATIONS), "projected": projected}
