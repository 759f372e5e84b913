"""`cami import` as a person runs it: small CT files, a media folder, the environment, the run,
and the events it left in the log."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from schemas.codec import decode
from schemas.events import Event
from streams import open_event_log
from streams.topics import DICOM
from tests.support import studies
from tests.support.cli import CAMI

ORG = "1.2.643.5.1.13.13.12.2.50.1001"
UID_ROOT = "1.2.826.0.1.3680043.8.498."


# -- test data ---------------------------------------------------------------------------------
def instance(
    study: str, series: str, number: int, *, patient_id: str | None = "P-0001", sop_uid: str | None = None
) -> Dataset:
    """A small but complete CT image (8x8 pixels) as a Part-10 data set."""
    return studies.instance(study, series, number, patient_id=patient_id, sop_uid=sop_uid, size=8)


part10 = studies.part10_bytes


def dicom_file(number: int, study: str | None = None, series: str | None = None, **kw: Any) -> tuple[str, bytes]:
    ds = instance(study or generate_uid(UID_ROOT), series or generate_uid(UID_ROOT), number, **kw)
    return str(ds.SOPInstanceUID), part10(ds)


# -- running the command -----------------------------------------------------------------------
def cami_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMI_")}
    env["CAMI_HOME"] = str(tmp_path / "home")
    return env


def run_import(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CAMI), "import", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def received_events(home: Path) -> list[Event]:
    """Every event on the cami.dicom topic, decoded from the embedded log file."""
    log = open_event_log(f"sqlite://{home}/events.db")
    try:
        events: list[Event] = []
        for partition in log.partitions(DICOM):
            offset = 0
            while True:
                records = log.read(DICOM, partition, offset, 1000)
                if not records:
                    break
                events.extend(decode(r.value) for r in records)
                offset = records[-1].offset + 1
        return events
    finally:
        log.close()


# -- DICOMDIR media ----------------------------------------------------------------------------
def write_media(media: Path, count: int) -> list[str]:
    from pydicom.fileset import FileSet

    fileset = FileSet()
    study, series = generate_uid(UID_ROOT), generate_uid(UID_ROOT)
    uids = []
    for i in range(count):
        ds = instance(study, series, i + 1)
        fileset.add(ds)
        uids.append(str(ds.SOPInstanceUID))
    fileset.write(media)
    return uids
