"""Every kind of read leaves exactly one record-accessed event, and the auditor sees it.

One study is stored by storescu; then it is read once in each way a region's doctors and
systems read it — QIDO-RS and WADO-RS through the unmodified ``dicomweb-client``, WADO-URI and
the MIS study page over HTTP, C-FIND, C-MOVE and C-GET with dcmtk — and after each read exactly
one new RecordAccessed event exists, naming the reader, the channel and the study. Finally the
audit trail (the projection, as ``cami audit history`` shows it) holds those same accesses in the
study's hash chain, and the chain checks out against the log.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.uid import generate_uid

from projections.audit.queries import history
from projections.audit.verify import verify_against_log
from schemas.events import Event
from tests.support.readside import ORG, ROOT_UID, ReadSide
from tests.support.studies import DCMTK_ENV

WORKSTATION = "RAD_WS9"
DESTINATION = "VIEWER9"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    out = tmp_path / "moved"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        ["/usr/bin/storescp", "+B", "-aet", DESTINATION, "-od", str(out), str(port)],
        env=DCMTK_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("storescp did not start") from None
            time.sleep(0.05)
    yield port, out
    proc.terminate()
    proc.wait(timeout=30)


def dcmtk(tool: str, side: ReadSide, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [f"/usr/bin/{tool}", "-aet", WORKSTATION, "-aec", "CAMI", *args, "127.0.0.1", str(side.dicom_port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def test_each_kind_of_read_leaves_one_access_event_in_the_audit_trail(
    tmp_path: Path, storescp: tuple[int, Path]
) -> None:
    port, moved = storescp
    extra = (
        f'[[qr_caller]]\nae_title = "{WORKSTATION}"\norganisation = "{ORG}"\nrole = "radiologist"\n\n'
        f'[[destination]]\nae_title = "{DESTINATION}"\nhost = "127.0.0.1"\nport = {port}\n'
    )
    with ReadSide.start(tmp_path, senders_extra=extra) as side:
        study = generate_uid(prefix=ROOT_UID)
        sent = side.store_study(study, 2, patient_id="AUDIT-READ-1")
        side.wait_indexed(study, 2)
        token = side.tokens["dr.petrov"]
        web = DICOMwebClient(url=f"{side.url}/dicomweb", headers={"Authorization": f"Bearer {token}"})
        series = str(dcmread(sent[0].path, stop_before_pixels=True).SeriesInstanceUID)
        sop = sent[0].sop_instance_uid
        seen: set[str] = {e.envelope.event_id for e in side.accesses()}

        def one_access(channel: str, read: Callable[[], object]) -> Event:
            read()
            new = [e for e in side.accesses() if e.envelope.event_id not in seen]
            seen.update(e.envelope.event_id for e in new)
            assert [e.payload["channel"] for e in new] == [channel], f"{channel}: {[e.payload for e in new]}"
            return new[0]

        def ok(result: subprocess.CompletedProcess[str]) -> None:
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]

        with side.client("dr.petrov") as http:
            accesses = [
                one_access("qido-rs", lambda: web.search_for_studies(search_filters={"StudyInstanceUID": study})),
                one_access("wado-rs", lambda: web.retrieve_study(study)),
                one_access(
                    "wado-uri",
                    lambda: http.get(
                        "/wado",
                        params={
                            "requestType": "WADO",
                            "studyUID": study,
                            "seriesUID": series,
                            "objectUID": sop,
                            "contentType": "application/dicom",
                        },
                    ).raise_for_status(),
                ),
                one_access(
                    "study-page",
                    lambda: http.get("/study", params={"patient": "AUDIT-READ-1", "study": study}).raise_for_status(),
                ),
                # the viewer's frames: every rendered frame of a series, in two sizes, is one series view
                one_access(
                    "wado-rs",
                    lambda: [
                        http.get(
                            f"/dicomweb/studies/{study}/series/{series}/instances/{f.sop_instance_uid}/rendered",
                            params=size,
                            headers={"Accept": "image/jpeg"},
                        ).raise_for_status()
                        for f in sent
                        for size in ({"viewport": "32,32", "quality": "60"}, {})
                    ],
                ),
            ]
        series_view = accesses[-1].payload
        assert series_view["SeriesInstanceUID"] == series and series_view["results"] == len(sent)
        assert series_view["action"] == "view" and series_view["SOPInstanceUID"] is None
        finds = tmp_path / "found"
        finds.mkdir()
        study_key = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}"]
        find = ["-S", "-X", "-od", str(finds), *study_key, "-k", "PatientName"]
        move = ["-S", "-aem", DESTINATION, *study_key]
        get = ["-S", "-od", str(tmp_path), *study_key]
        accesses += [
            one_access("c-find", lambda: ok(dcmtk("findscu", side, *find))),
            one_access("c-move", lambda: ok(dcmtk("movescu", side, *move))),
            one_access("c-get", lambda: ok(dcmtk("getscu", side, *get))),
        ]
        assert len(list(moved.iterdir())) == 2  # the move really sent the study

        # every event names the reader and the study, and says the read succeeded
        for event in accesses:
            assert event.payload["StudyInstanceUID"] == study, event.payload
            assert event.payload["outcome"] == "ok"
            assert event.envelope.actor.role == "radiologist"
            assert event.envelope.aggregate_id == study  # it joins the study's record

        # the auditor's view: the audit projection holds exactly these accesses in the study's chain
        ids = {str(e.envelope.event_id) for e in accesses}
        deadline = time.monotonic() + 30
        while True:
            entries = history(side.archive.warehouse, study)
            audited = [e for e in entries if e["event_type"] == "RecordAccessed"]
            if len(audited) >= len(accesses) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert {str(e["event_id"]) for e in audited} == ids
        assert {e["actor_user"] for e in audited} == {"dr.petrov", WORKSTATION}
        assert sum(e["event_type"] == "InstanceReceived" for e in entries) == 2
        report = verify_against_log(side.archive.warehouse, side.archive.event_log, study)
        assert report.ok, report.first_broken
