"""The modality's side of an order: the MIS places orders over HL7 (``mllp_send``), the device
asks its worklist with dcmtk's ``findscu -W`` and gets exactly its scheduled steps with the
Cyrillic names right in the character set it asked for; a cancelled order leaves the worklist;
the device reports the step with MPPS (a pynetdicom SCU, N-CREATE then N-SET COMPLETED), which
takes it off the worklist and is recorded as ProcedureStepChanged events. An order's status
(``GET /api/orders/{accession}``) walks through every stage as it happens -- placed, the step
begun, images stored with storescu, a draft and a final result over HL7 -- and a doctor's browser
sees it on the study page."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pynetdicom import AE
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from streams.topics import ORDERS
from tests.support.agent_region import ADMIN_TOKEN, ADMIN_USER, Cami, cami_with_hl7, storescu, wait_for
from tests.support.browser import WAIT, shot
from tests.support.hl7 import Mis, ack_fields, message, mllp_send, pid, segment

pytestmark = pytest.mark.slow

CT_AE, MR_AE = "CT_ROOM1", "MR_ROOM2"
MPPS = "1.2.840.10008.3.1.2.3.3"


@pytest.fixture()
def cami(tmp_path: Path) -> Iterator[tuple[Cami, int]]:
    modalities = "".join(
        f'[[sender]]\nae_title = "{ae}"\norganisation = "ORG01"\nname = "{ae}"\n\n' for ae in (CT_AE, MR_AE)
    )
    with cami_with_hl7(tmp_path / "cami", modalities) as served:
        yield served


def order(
    control: str, placer: str, accession: str, name: str, station: str, modality: str, start: str, study: str = ""
) -> bytes:
    return message(
        "OMI^O23",
        pid(f"P-{placer}", name, "19620704", "F"),
        segment("ORC", {1: control, 2: placer, 12: "D7^Терапевтов^Илья"}),
        segment("TQ1", {7: start, 9: "R"}),
        segment("OBR", {1: "1", 2: placer, 4: "A06.09.005^КТ органов грудной полости^RGC"}),
        segment("IPC", {1: accession, 2: f"RP{placer}", 3: study, 4: f"SPS{placer}", 5: modality, 9: station}),
        control_id=f"{control}-{placer}",
        charset="UNICODE UTF-8",
    ).encode()


def findscu(server: Cami, out: Path, station: str, charset: str) -> list[pydicom.Dataset]:
    """dcmtk's findscu -W as the device ``station``: its steps for 1-2 December 2026."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.iterdir():
        old.unlink()
    subprocess.run(
        ["/usr/bin/findscu", "-W", "-aet", station, "-aec", "CAMI", "-X", "-od", str(out),
         "-k", f"SpecificCharacterSet={charset}",
         "-k", "PatientName", "-k", "PatientID", "-k", "AccessionNumber", "-k", "StudyInstanceUID",
         "-k", f"ScheduledProcedureStepSequence[0].ScheduledStationAETitle={station}",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate=20261201-20261202",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
         "-k", "ScheduledProcedureStepSequence[0].Modality",
         "-k", "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID",
         "127.0.0.1", str(server.dicom_port)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return [pydicom.dcmread(p) for p in sorted(out.iterdir())]


def mpps(server: Cami, study: str, accession: str, status: str, uid: str | None = None) -> str:
    """N-CREATE (uid None) or N-SET of the step, as the CT modality reports it."""
    ae = AE(ae_title=CT_AE)
    ae.add_requested_context(MPPS)
    assoc = ae.associate("127.0.0.1", server.dicom_port, ae_title="CAMI")
    assert assoc.is_established
    try:
        ds = Dataset()
        ds.PerformedProcedureStepStatus = status
        if uid is None:
            scheduled = Dataset()
            scheduled.StudyInstanceUID = study
            scheduled.AccessionNumber = accession
            ds.ScheduledStepAttributesSequence = DicomSequence([scheduled])
            ds.PatientID = "P-PL1"
            ds.Modality = "CT"
            ds.PerformedStationAETitle = CT_AE
            ds.PerformedProcedureStepStartDate = "20261201"
            ds.PerformedProcedureStepStartTime = "093000"
            uid = pydicom.uid.generate_uid()
            answer, _ = assoc.send_n_create(ds, MPPS, uid)
        else:
            ds.PerformedProcedureStepEndDate = "20261201"
            ds.PerformedProcedureStepEndTime = "094500"
            series = Dataset()
            series.SeriesInstanceUID = pydicom.uid.generate_uid()
            images = []
            for _ in range(3):
                image = Dataset()
                image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
                image.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
                images.append(image)
            series.ReferencedImageSequence = DicomSequence(images)
            ds.PerformedSeriesSequence = DicomSequence([series])
            answer, _ = assoc.send_n_set(ds, MPPS, uid)
        assert answer.Status == 0x0000, hex(answer.Status)
        return uid
    finally:
        assoc.release()


def test_a_device_gets_its_worklist_and_reports_what_it_performed(cami: tuple[Cami, int], tmp_path: Path) -> None:
    server, hl7_port = cami
    placed = [
        order("NW", "PL1", "ACC-W1", "Смирнова^Ольга^Петровна", CT_AE, "CT", "20261201093000"),
        order("NW", "PL2", "ACC-W2", "Кузнецов^Иван", CT_AE, "CT", "20261201110000"),
        order("NW", "PL3", "ACC-W3", "Попов^Олег", MR_AE, "MR", "20261201100000"),
        order("NW", "PL4", "ACC-W4", "Лебедев^Пётр", CT_AE, "CT", "20261205100000"),  # another day
    ]
    acks = mllp_send(hl7_port, placed, tmp_path)
    assert [ack_fields(a)["MSA-1"] for a in acks] == ["AA"] * 4

    def ct_steps() -> list[pydicom.Dataset] | None:
        found = findscu(server, tmp_path / "ct", CT_AE, "ISO_IR 144")
        return found if len(found) == 2 else None

    found = wait_for("the CT room's two steps in its worklist", ct_steps, timeout=60)
    assert [str(d.AccessionNumber) for d in found] == ["ACC-W1", "ACC-W2"]  # earliest first
    assert [str(d.PatientName) for d in found] == ["Смирнова^Ольга^Петровна", "Кузнецов^Иван"]
    assert all(d.SpecificCharacterSet == "ISO_IR 144" for d in found)  # the set the device asked for
    step = found[0].ScheduledProcedureStepSequence[0]
    assert (step.ScheduledStationAETitle, step.Modality, step.ScheduledProcedureStepID) == (CT_AE, "CT", "SPSPL1")
    assert (step.ScheduledProcedureStepStartDate, step.ScheduledProcedureStepStartTime) == ("20261201", "093000")
    mr = findscu(server, tmp_path / "mr", MR_AE, "ISO_IR 192")
    assert [(str(d.AccessionNumber), str(d.PatientName)) for d in mr] == [("ACC-W3", "Попов^Олег")]

    # the MIS cancels the second CT order: it leaves the worklist
    (cancel_ack,) = mllp_send(hl7_port, [order("CA", "PL2", "ACC-W2", "", CT_AE, "CT", "")], tmp_path)
    assert ack_fields(cancel_ack)["MSA-1"] == "AA"
    after_cancel = wait_for(
        "the cancelled step gone",
        lambda: (lambda f: f if len(f) == 1 else None)(findscu(server, tmp_path / "ct", CT_AE, "ISO_IR 192")),
        timeout=60,
    )
    assert [str(d.AccessionNumber) for d in after_cancel] == ["ACC-W1"]

    # the device performs the first: MPPS IN PROGRESS, then COMPLETED
    study = str(after_cancel[0].StudyInstanceUID)
    uid = mpps(server, study, "ACC-W1", "IN PROGRESS")
    in_progress = wait_for(
        "the step shown as started",
        lambda: (lambda f: f if f and f[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"
                 else None)(findscu(server, tmp_path / "ct", CT_AE, "ISO_IR 192")),
        timeout=60,
    )  # fmt: skip
    assert str(in_progress[0].AccessionNumber) == "ACC-W1"
    mpps(server, study, "ACC-W1", "COMPLETED", uid)
    wait_for(
        "the completed step off the worklist",
        lambda: findscu(server, tmp_path / "ct", CT_AE, "ISO_IR 192") == [] or None,
        timeout=60,
    )
    changes = [e for e in server.events(ORDERS) if e.type == "ProcedureStepChanged"]
    assert [e["PerformedProcedureStepStatus"] for e in changes] == ["IN PROGRESS", "COMPLETED"]
    completed = changes[1]
    assert (completed["AccessionNumber"], completed["StudyInstanceUID"]) == ("ACC-W1", study)
    assert (completed["number_of_series"], completed["number_of_instances"]) == (1, 3)
    assert completed.envelope.actor.user == CT_AE and completed.envelope.organisation == "ORG01"


def result(status: str, conclusion: str, accession: str) -> bytes:
    return message(
        "ORU^R01",
        pid("P-PL9"),
        segment("OBR", {1: "1", 2: "PL9", 18: accession, 25: status, 32: "D9&Рентгенов&Пётр"}),
        segment("OBX", {1: "1", 2: "TX", 3: "GDT^Описание", 5: "Очаговых изменений нет"}),
        segment("OBX", {1: "2", 2: "TX", 3: "IMP^Заключение", 5: conclusion}),
        control_id=f"R-{status}",
        charset="UNICODE UTF-8",
    ).encode()


def test_an_order_walks_through_every_status(cami: tuple[Cami, int], tmp_path: Path, browser: WebDriver) -> None:
    server, hl7_port = cami
    client = httpx.Client(base_url=server.base_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    seen: list[str] = []

    def reaches(status: str) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            answer = client.get("/api/orders/ACC-S9")
            if answer.status_code != 200:
                return None
            found: dict[str, Any] = answer.json()
            if not seen or seen[-1] != found["status"]:
                seen.append(found["status"])
            return found if found["status"] == status else None

        return wait_for(f"the order {status}", probe, timeout=60)

    assert client.get("/api/orders/ACC-S9").status_code == 404
    study = pydicom.uid.generate_uid()
    placed = order("NW", "PL9", "ACC-S9", "Смирнова^Ольга", CT_AE, "CT", "20261201093000", study=study)
    assert [ack_fields(a)["MSA-1"] for a in mllp_send(hl7_port, [placed], tmp_path)] == ["AA"]
    scheduled = reaches("scheduled")
    assert scheduled["study_uid"] == study and scheduled["patient"]["name"] == "Смирнова^Ольга"
    step = mpps(server, study, "ACC-S9", "IN PROGRESS")
    reaches("in-progress")
    mpps(server, study, "ACC-S9", "COMPLETED", step)
    ds = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    ds.PatientID, ds.StudyInstanceUID, ds.AccessionNumber = "P-PL9", study, "ACC-S9"
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "ct.dcm")
    storescu(CT_AE, "CAMI", server.dicom_port, [tmp_path / "ct.dcm"])
    images = reaches("images")
    assert next(s for s in images["stages"] if s["stage"] == "images")["detail"]["instances"] == 1
    assert [
        ack_fields(a)["MSA-1"] for a in mllp_send(hl7_port, [result("P", "Предварительно", "ACC-S9")], tmp_path)
    ] == ["AA"]
    reaches("draft")
    assert [ack_fields(a)["MSA-1"] for a in mllp_send(hl7_port, [result("F", "Норма", "ACC-S9")], tmp_path)] == ["AA"]
    done = reaches("available")
    assert seen == ["scheduled", "in-progress", "images", "draft", "available"]
    reached = [s["stage"] for s in done["stages"] if s["at"] is not None]
    assert reached == ["referral", "scheduled", "in-progress", "images", "draft", "signed", "available"]

    # the study page shows it to a doctor in a browser
    browser.get(server.base_url + f"/study?patient=P-PL9&study={study}")
    WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "signin-form"))
    browser.find_element(By.ID, "user").send_keys(ADMIN_USER)
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.ID, "signin-submit").click()
    shown = WebDriverWait(browser, WAIT).until(lambda d: d.find_elements(By.ID, "order-status"))
    assert shown[0].get_attribute("data-status") == "available"
    assert shown[0].text == "Доступно в регионе"
    stages = browser.find_elements(By.CSS_SELECTOR, "#order .order-stages li.reached")
    assert [s.get_attribute("data-stage") for s in stages] == reached
    shot(browser, "order-status-available")


def test_cami_serve_tells_the_mis_that_asked(tmp_path: Path) -> None:
    """``[[mis]]`` in the senders file: ``cami serve`` sends the order's status to that MIS."""
    with Mis() as mis:
        listed = f'[[mis]]\napplication = "MIS@ORG01"\nhost = "127.0.0.1"\nport = {mis.port}\n'
        with cami_with_hl7(tmp_path / "cami", listed) as (_, hl7_port):
            placed = order("NW", "PL5", "ACC-N5", "Смирнова^Ольга", CT_AE, "CT", "20261201093000")
            assert [ack_fields(a)["MSA-1"] for a in mllp_send(hl7_port, [placed], tmp_path)] == ["AA"]
            wait_for("the MIS told the order is scheduled", lambda: mis.statuses() or None, timeout=60)
            assert mis.statuses() == [("ACC-N5", "SC", "")]
            (cancelled,) = mllp_send(hl7_port, [order("CA", "PL5", "ACC-N5", "", CT_AE, "CT", "")], tmp_path)
            assert ack_fields(cancelled)["MSA-1"] == "AA"
            wait_for("the MIS told it is cancelled", lambda: len(mis.statuses()) == 2 or None, timeout=60)
            assert mis.statuses()[1] == ("ACC-N5", "CA", "")
