"""The DICOM services keep working when the process holds more than 1024 open files.

A long-running archive accumulates open descriptors (ClickHouse parts, the SQLite log, blobs, HTTP
connections). pynetdicom checks its sockets with select(), which cannot watch descriptors numbered
1024 or more; CAMI swaps in poll() (ingest/netio.py). Here the test process opens 1,100 extra
descriptors first, so every socket the SCP then accepts is numbered above 1023, and dcmtk's
echoscu and storescu, and a pynetdicom SCU in this same process, must still succeed.
"""

from __future__ import annotations

import gc
import os
import resource
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE

from ingest.scp import VERIFICATION
from tests.support.readside import ROOT_UID, ReadSide
from tests.support.studies import DCMTK_ENV

EXTRA_DESCRIPTORS = 1100


@pytest.fixture
def crowded() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, hard), hard))
    gc.collect()  # descriptors only garbage still holds are closed now, not below the crowd later
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(EXTRA_DESCRIPTORS)]
    assert max(held) >= 1024  # the next sockets will be numbered above select()'s limit
    try:
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_associations_work_with_descriptors_above_1023(crowded: None, tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        echo = subprocess.run(
            ["/usr/bin/echoscu", "-aet", "OKB_CT1", "-aec", "CAMI", "127.0.0.1", str(side.dicom_port)],
            capture_output=True,
            text=True,
            env=DCMTK_ENV,
            timeout=60,
            check=False,
        )
        assert echo.returncode == 0, echo.stdout + echo.stderr
        study = generate_uid(prefix=ROOT_UID)
        side.store_study(study, 3)  # raises unless storescu got Success for every file
        assert side.wait_indexed(study, 3)["instance_count"] == 3

        # this process's own SCU (its socket is above 1023 too)
        ae = AE(ae_title="OKB_CT1")
        ae.add_requested_context(VERIFICATION)
        assoc = ae.associate("127.0.0.1", side.dicom_port, ae_title="CAMI")
        try:
            assert assoc.is_established
            assert assoc.dul.socket is not None and assoc.dul.socket.socket.fileno() >= 1024
            status = assoc.send_c_echo()
            assert status.Status == 0x0000
        finally:
            assoc.release()
