"""Several hospitals sending at once, and the archive killed in the middle (``kill -9``).

Four dcmtk storescu processes send four CT studies to ``cami serve`` (embedded backends) over four
concurrent associations. Once some instances are in the log, the archive is killed without warning.
Every instance storescu was told "Success" for must be there after the restart, exactly once, its
bytes in the blob store; what was cut off may or may not have been recorded, never twice. The
senders then send everything again, as a modality retries: every instance ends up held exactly
once (the re-sent ones already held are recognised, not recorded again).
"""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from pydicom import dcmread

from api.demo.synthetic import region, synthetic_study, write_study
from ingest.dicom import split_part10
from tests.support.agent_region import Cami, ports, wait_for

pytestmark = pytest.mark.slow

SENDER_AE = "OKB_CT1"
ASSOCIATIONS = 4
INSTANCES_PER_STUDY = 40


def storescu(files: list[Path], port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["/usr/bin/storescu", "-v", "-aet", SENDER_AE, "-aec", "CAMI", "127.0.0.1", str(port), *map(str, files)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"},
    )


def acknowledged(output: str) -> list[Path]:
    """The files storescu was told "Success" for (its ``-v`` log pairs each file with a response)."""
    done: list[Path] = []
    current: Path | None = None
    for line in output.splitlines():
        if match := re.search(r"Sending file: (.+\.dcm)$", line):
            current = Path(match.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            done.append(current)
            current = None
    return done


def test_four_associations_and_a_kill_9_lose_nothing_acknowledged_and_record_nothing_twice(tmp_path: Path) -> None:
    dicom_port, http_port, agent_port = ports(3)
    cami = Cami(tmp_path / "cami", dicom_port, http_port, SENDER_AE, agent_port)
    org = region()[0]
    studies = [
        synthetic_study(org, "CT", instances=INSTANCES_PER_STUDY, seed=4400 + n, report=False)
        for n in range(ASSOCIATIONS)
    ]
    files = [write_study(study, tmp_path / "studies" / str(n)) for n, study in enumerate(studies)]
    uid_of = {path: str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for share in files for path in share}
    cami.start()
    try:
        senders = [storescu(share, dicom_port) for share in files]
        # some instances from every association are in before the archive dies
        wait_for("instances arriving", lambda: len(cami.received()) >= 2 * ASSOCIATIONS, timeout=120, every=0.05)
        cami.process.kill9()
        outputs = [sender.communicate(timeout=120)[0] for sender in senders]
        told_success = [path for output in outputs for path in acknowledged(output)]
        assert 0 < len(told_success) < len(uid_of), "the kill must fall in the middle of the sending"

        cami.start()
        received = cami.received()
        per_instance = Counter(str(p["SOPInstanceUID"]) for p in received)
        assert all(n == 1 for n in per_instance.values()), "an instance recorded twice"
        for path in told_success:
            uid = uid_of[path]
            assert per_instance[uid] == 1, f"{path.name} was acknowledged but is not held"
            [payload] = [p for p in received if p["SOPInstanceUID"] == uid]
            blob = cami.blob(str(payload["blob"]["sha256"]))
            data = path.read_bytes()
            assert blob.endswith(data[split_part10(data).dataset_offset :]), f"{path.name}: stored bytes differ"

        # the senders retry everything: what was held is recognised, the rest is stored, once each
        for sender, share in zip([storescu(share, dicom_port) for share in files], files, strict=True):
            output = sender.communicate(timeout=300)[0]
            assert sender.returncode == 0, output[-3000:]
            assert len(acknowledged(output)) == len(share), output[-3000:]
        final = Counter(str(p["SOPInstanceUID"]) for p in cami.received())
        assert final == Counter(uid_of.values()), "after the retry every instance is held exactly once"
    finally:
        cami.process.stop()
