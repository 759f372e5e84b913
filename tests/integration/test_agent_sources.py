"""The transfer agent's sources, each driven by a real peer.

- router: dcmtk's storescu/echoscu and a pynetdicom SCU send to the agent's Storage SCP; CAMI's own
  storage commitment code reports to it (N-EVENT-REPORT on a new association);
- poller: Orthanc as the hospital's PACS, found by C-FIND and pulled by C-MOVE (and C-GET) into the
  router;
- folder: real files copied, written slowly, renamed into a watched directory;
- MIS endpoint: httpx against the running uvicorn server.

The agent's queue is stood in for by :class:`tests.support.agent_intake.SpoolingIntake` (it spools
what it gets, so the bytes can be compared with what was sent).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import subprocess
import threading
import time as time_module
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Literal

import httpx
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from api.bootstrap import bootstrap
from api.config import Settings
from api.demo.synthetic import SyntheticStudy, available_transfer_syntaxes, part10_bytes, region, synthetic_study
from api.demo.synthetic import write_study as write_synthetic_study
from ingest.agent.commitment import CommitmentWaiter
from ingest.agent.config import FolderSource, MisEndpoint, PollSource, RouterConfig
from ingest.agent.folder import FolderWatch
from ingest.agent.mis import MisServer
from ingest.agent.model import HeldInstance
from ingest.agent.poller import PacsPoller
from ingest.agent.router import RouterScp
from ingest.commitment import (
    NO_SUCH_OBJECT_INSTANCE,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH,
    CommitmentResult,
    StorageCommitment,
)
from ingest.dicom import split_part10
from ingest.reports.documents import ENCAPSULATED_PDF
from ingest.senders import load_senders
from ingest.sop_index import SopIndex
from streams.blobs import open_blob_store
from tests.support.agent_intake import SpoolingIntake
from tests.support.servers import OrthancServer, free_port
from tests.support.studies import DCMTK_ENV, outcomes, storescu, storescu_profile, write_study

AGENT_AE = "OKB_AGENT"
URGENT_AE = "OKB_AGENT_URG"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"


def dataset_bytes(data: bytes) -> tuple[str, bytes]:
    """(transfer syntax, data set bytes) of a Part-10 file."""
    received = split_part10(data)
    return received.transfer_syntax, data[received.dataset_offset :]


@pytest.fixture
def intake(tmp_path: Path) -> SpoolingIntake:
    return SpoolingIntake(tmp_path / "spool")


@pytest.fixture
def waiter() -> CommitmentWaiter:
    return CommitmentWaiter()


@pytest.fixture
def router(intake: SpoolingIntake, waiter: CommitmentWaiter) -> Iterator[RouterScp]:
    scp = RouterScp(
        RouterConfig(ae_title=AGENT_AE, emergency_ae_title=URGENT_AE, host="127.0.0.1", port=0), intake, waiter
    )
    scp.start()
    try:
        yield scp
    finally:
        scp.stop()


# -- router ----------------------------------------------------------------------------------------


def test_router_keeps_what_storescu_sends_byte_for_byte(
    router: RouterScp, intake: SpoolingIntake, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "study", 7)  # one instance per transfer syntax dcmtk writes
    profile = storescu_profile(tmp_path / "storescu.cfg")
    result = storescu(
        "127.0.0.1", router.port, [f.path for f in files], calling="CT_SCANNER", called=AGENT_AE, profile=profile
    )
    assert result.returncode == 0, result.stderr
    assert set(outcomes(result.stdout + result.stderr).values()) == {"Success"}
    held = intake.held()
    assert set(held) == {f.sop_instance_uid for f in files}
    for sent in files:
        kept = held[sent.sop_instance_uid]
        original = sent.path.read_bytes()
        spooled = kept.path.read_bytes()
        assert kept.transfer_syntax_uid == sent.transfer_syntax
        # the data set as sent, unchanged, whatever its transfer syntax
        assert dataset_bytes(spooled) == dataset_bytes(original)
        assert kept.sha256 == hashlib.sha256(spooled).hexdigest()
    assert {(a.source, a.calling_ae_title, a.emergency) for a in intake.accepted} == {("router", "CT_SCANNER", False)}


def test_router_marks_what_comes_to_the_emergency_ae_title(
    router: RouterScp, intake: SpoolingIntake, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "urgent", 2, ["1.2.840.10008.1.2.1"])
    result = storescu("127.0.0.1", router.port, [f.path for f in files], calling="CT_SCANNER", called=URGENT_AE)
    assert result.returncode == 0, result.stderr
    assert [a.emergency for a in intake.accepted] == [True, True]


def test_router_answers_c_echo_and_refuses_other_called_ae_titles(router: RouterScp, tmp_path: Path) -> None:
    echo = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "CT_SCANNER", "-aec", AGENT_AE, "127.0.0.1", str(router.port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
        check=False,
    )
    assert echo.returncode == 0, echo.stderr
    wrong = subprocess.run(
        ["/usr/bin/echoscu", "-aet", "CT_SCANNER", "-aec", "SOMEONE_ELSE", "127.0.0.1", str(router.port)],
        capture_output=True,
        text=True,
        env=DCMTK_ENV,
        timeout=60,
        check=False,
    )
    assert "Peer aborted Association" in wrong.stderr  # the router aborted the association
    assert "Failed" not in echo.stderr


def pynetdicom_store(port: int, paths: list[Path], called: str = AGENT_AE, calling: str = "PACS") -> list[Dataset]:
    """Send the files' data sets unchanged (pynetdicom reads them from disk without decoding); the
    statuses the router answered."""
    ae = AE(ae_title=calling)
    for syntax in {split_part10(p.read_bytes()).transfer_syntax for p in paths}:
        ae.add_requested_context(CT_IMAGE, syntax)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    chunked = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # the file's data set bytes, not a re-encoding
    try:
        return [assoc.send_c_store(path) for path in paths]
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = chunked
        assoc.release()


def test_router_refusal_by_the_queue_is_a_failure_status_and_the_association_goes_on(
    router: RouterScp, intake: SpoolingIntake, tmp_path: Path
) -> None:
    files = write_study(tmp_path / "refused", 3, ["1.2.840.10008.1.2.1"])
    intake.refuse.add(files[1].sop_instance_uid)
    statuses = pynetdicom_store(router.port, [f.path for f in files])
    assert [int(s.Status) for s in statuses] == [0x0000, 0xA900, 0x0000]
    assert "refused by the test intake" in str(statuses[1].ErrorComment)
    assert set(intake.held()) == {files[0].sop_instance_uid, files[2].sop_instance_uid}


def test_router_refuses_a_truncated_data_set_with_c000(
    router: RouterScp, intake: SpoolingIntake, tmp_path: Path
) -> None:
    [good] = write_study(tmp_path / "good", 1, ["1.2.840.10008.1.2.1"])
    data = good.path.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 1000])  # the pixel data is cut short
    statuses = pynetdicom_store(router.port, [truncated, good.path])
    assert int(statuses[0].Status) == 0xC000
    assert "unreadable data set" in str(statuses[0].ErrorComment)
    assert int(statuses[1].Status) == 0x0000
    assert set(intake.held()) == {good.sop_instance_uid}


def test_router_limits_storage_to_allowed_callers(
    intake: SpoolingIntake, waiter: CommitmentWaiter, tmp_path: Path
) -> None:
    scp = RouterScp(
        RouterConfig(ae_title=AGENT_AE, emergency_ae_title=URGENT_AE, host="127.0.0.1", port=0),
        intake,
        waiter,
        allowed_callers={"PACS"},
    )
    scp.start()
    try:
        [f] = write_study(tmp_path / "a", 1, ["1.2.840.10008.1.2.1"])
        assert int(pynetdicom_store(scp.port, [f.path], calling="STRANGER")[0].Status) == 0x0124
        assert intake.count() == 0
        assert int(pynetdicom_store(scp.port, [f.path], calling="PACS")[0].Status) == 0x0000
        assert intake.count() == 1
    finally:
        scp.stop()


def write_cami_senders(path: Path, router_port: int) -> Path:
    """CAMI's senders file naming the agent, with the router's address (where reports go)."""
    path.write_text(
        '[archive]\nae_title = "CAMI"\naccept_unknown = false\n\n'
        f'[[sender]]\nae_title = "{AGENT_AE}"\norganisation = "{region()[0].code}"\n'
        f'addresses = ["127.0.0.1"]\nhost = "127.0.0.1"\nport = {router_port}\n',
        encoding="utf-8",
    )
    return path


def test_router_takes_cami_storage_commitment_reports(
    router: RouterScp, waiter: CommitmentWaiter, tmp_path: Path
) -> None:
    """CAMI's own reporting code (ingest.commitment) sends the N-EVENT-REPORT to the router, as CAMI
    does after a delivery's N-ACTION: a new association proposing the SCP role for the SOP class."""
    senders = write_cami_senders(tmp_path / "senders.toml", router.port)
    commitment = StorageCommitment(
        SopIndex(tmp_path / "sop.db"), open_blob_store(f"file://{tmp_path / 'blobs'}", {}), load_senders(senders)
    )
    committed = [(CT_IMAGE, str(generate_uid())) for _ in range(3)]
    failed = [(CT_IMAGE, str(generate_uid()), 0x0110)]
    transaction = str(generate_uid())
    status = commitment.send_report(CommitmentResult(transaction, committed, failed), AGENT_AE, "127.0.0.1")
    assert status == 0x0000
    report = waiter.wait(transaction, timeout=10)
    assert report is not None
    assert list(report.committed) == committed
    assert list(report.failed) == failed

    # what CAMI does not hold is reported failed with its reason (CAMI's check on an empty archive)
    unknown = [(CT_IMAGE, str(generate_uid())) for _ in range(2)]
    second = str(generate_uid())
    assert commitment.send_report(commitment.check(second, unknown), AGENT_AE, "127.0.0.1") == 0x0000
    report = waiter.wait(second, timeout=10)
    assert report is not None
    assert report.committed == ()
    assert list(report.failed) == [(c, i, NO_SUCH_OBJECT_INSTANCE) for c, i in unknown]


@pytest.mark.slow
def test_router_takes_the_report_cami_sends_after_an_n_action(
    router: RouterScp, waiter: CommitmentWaiter, tmp_path: Path
) -> None:
    """The delivery's round trip with a real CAMI: instances stored into CAMI under the agent's AE
    title, N-ACTION on the agent's association, CAMI's N-EVENT-REPORT on a new one to the router
    (CAMI's senders file gives the agent's address)."""
    home = tmp_path / "cami"
    home.mkdir()
    write_cami_senders(home / "senders.toml", router.port)
    settings = Settings(
        home=home,
        event_log_url=f"sqlite://{home}/events.db",
        blob_store_url=f"file://{home}/blobs",
        warehouse_url=f"chdb://{home}/clickhouse",
    )
    archive = bootstrap(settings)
    scp = archive.storage_scp(port=0)
    scp.start()
    try:
        files = write_study(tmp_path / "delivered", 3, ["1.2.840.10008.1.2.1"])
        statuses = pynetdicom_store(scp.port, [f.path for f in files], called="CAMI", calling=AGENT_AE)
        assert [int(s.Status) for s in statuses] == [0, 0, 0]
        references = [(CT_IMAGE, f.sop_instance_uid) for f in files]
        never_sent = (CT_IMAGE, str(generate_uid()))
        request = Dataset()
        request.TransactionUID = transaction = str(generate_uid())
        request.ReferencedSOPSequence = [reference(c, i) for c, i in [*references, never_sent]]
        ae = AE(ae_title=AGENT_AE)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH)
        assoc = ae.associate("127.0.0.1", scp.port, ae_title="CAMI")
        assert assoc.is_established
        try:
            status, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT_PUSH, STORAGE_COMMITMENT_INSTANCE)
        finally:
            assoc.release()
        assert int(status.Status) == 0
        report = waiter.wait(transaction, timeout=60)
        assert report is not None, "no N-EVENT-REPORT reached the router"
        assert sorted(report.committed) == sorted(references)
        assert list(report.failed) == [(*never_sent, NO_SUCH_OBJECT_INSTANCE)]
    finally:
        scp.stop()
        archive.close()


def reference(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def test_router_file_header_names_the_sender(router: RouterScp, intake: SpoolingIntake, tmp_path: Path) -> None:
    """The Part-10 header the router writes holds the request's UIDs and the negotiated syntax."""
    [f] = write_study(tmp_path / "h", 1, [ExplicitVRLittleEndian])
    assert int(pynetdicom_store(router.port, [f.path])[0].Status) == 0
    kept = dcmread(intake.held()[f.sop_instance_uid].path)
    assert kept.file_meta.MediaStorageSOPInstanceUID == f.sop_instance_uid
    assert kept.file_meta.MediaStorageSOPClassUID == CT_IMAGE
    assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# -- poller ----------------------------------------------------------------------------------------

POLLED_STUDIES = 5


@dataclass
class Pacs:
    orthanc: OrthancServer
    router: RouterScp
    intake: SpoolingIntake
    studies: list[SyntheticStudy]
    files: dict[str, Path]  # SOPInstanceUID -> the file uploaded to Orthanc
    now: datetime
    days_back: int

    def source(self, retrieve: Literal["move", "get"] = "move") -> PollSource:
        return PollSource(
            ae_title=self.orthanc.aet,
            host="127.0.0.1",
            port=self.orthanc.dicom_port,
            days_back=self.days_back,
            retrieve=retrieve,
        )


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    tmp = tmp_path_factory.mktemp("agent-poll")
    org = region()[0]
    intake = SpoolingIntake(tmp / "spool")
    router_port = free_port()
    router = RouterScp(
        RouterConfig(ae_title=AGENT_AE, emergency_ae_title=URGENT_AE, host="127.0.0.1", port=router_port),
        intake,
        CommitmentWaiter(),
    )
    router.start()
    orthanc = OrthancServer(
        tmp / "orthanc", aet=org.ae_title, modalities={"agent": (AGENT_AE, "127.0.0.1", router_port)}
    )
    try:
        orthanc.start()
        syntaxes = available_transfer_syntaxes()
        studies = [
            synthetic_study(org, "CT", instances=3, seed=500 + n, transfer_syntax=syntaxes[n % len(syntaxes)])
            for n in range(POLLED_STUDIES)
        ]
        files: dict[str, Path] = {}
        for study in studies:
            for path in write_synthetic_study(study, tmp / "studies"):
                answer = orthanc.upload(path)
                assert answer["Status"] == "Success", answer
                files[path.stem] = path
        dates = sorted(datetime.strptime(s.study_date, "%Y%m%d").date() for s in studies)
        now = datetime.combine(dates[-1], time(12, 0)).astimezone()
        yield Pacs(orthanc, router, intake, studies, files, now, (dates[-1] - dates[0]).days)
    finally:
        orthanc.stop()
        router.stop()


def assert_same_data_sets(held: dict[str, HeldInstance], files: dict[str, Path]) -> None:
    """What the intake spooled is, data set byte for byte and in the same transfer syntax, what was
    uploaded to Orthanc (the Part-10 header is the sender's: Orthanc's implementation class UID)."""
    for sop, path in files.items():
        assert sop in held, f"{sop} never arrived"
        assert dataset_bytes(held[sop].path.read_bytes()) == dataset_bytes(path.read_bytes()), sop


#: file meta elements naming the software that wrote the header (and the group length they change)
WRITER = {"FileMetaInformationGroupLength", "ImplementationClassUID", "ImplementationVersionName"}


def meta_of(data: bytes) -> dict[str, str]:
    meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return {element.keyword: str(element.value) for element in meta}


@pytest.mark.slow
def test_poller_finds_and_moves_new_and_changed_studies(pacs: Pacs, tmp_path: Path) -> None:
    poller = PacsPoller(pacs.source(), pacs.intake, AGENT_AE)
    first = poller.poll_once(pacs.now)
    assert (first.found, first.new_or_changed, first.retrieved, first.failed) == (
        POLLED_STUDIES,
        POLLED_STUDIES,
        POLLED_STUDIES,
        0,
    )
    assert_same_data_sets(pacs.intake.held(), pacs.files)
    assert pacs.intake.count() == len(pacs.files)  # every instance once
    for sop, path in pacs.files.items():
        # the whole file differs only in the header's writer: the sender's (Orthanc) implementation
        uploaded, spooled = meta_of(path.read_bytes()), meta_of(pacs.intake.held()[sop].path.read_bytes())
        assert {k: v for k, v in spooled.items() if k not in WRITER} == {
            k: v for k, v in uploaded.items() if k not in WRITER
        }
        assert spooled["ImplementationClassUID"] != uploaded["ImplementationClassUID"]
    assert {a.source for a in pacs.intake.accepted} == {"router"}
    assert {a.calling_ae_title for a in pacs.intake.accepted} == {pacs.orthanc.aet}
    assert {uid for uid, _ in pacs.intake.remembered} == {s.study_uid for s in pacs.studies}

    # nothing new: nothing pulled
    again = poller.poll_once(pacs.now)
    assert (again.found, again.new_or_changed, again.retrieved) == (POLLED_STUDIES, 0, 0)
    assert pacs.intake.count() == len(pacs.files)

    # a late instance in one study: that study, and only it, is pulled again
    changed = pacs.studies[1]
    late = changed.instances[0].copy()
    late.SOPInstanceUID = generate_uid()
    late.file_meta.MediaStorageSOPInstanceUID = late.SOPInstanceUID
    late.InstanceNumber = 99
    late_path = tmp_path / "late.dcm"
    late_path.write_bytes(part10_bytes(late))
    assert pacs.orthanc.upload(late_path)["Status"] == "Success"
    before = pacs.intake.count()
    third = poller.poll_once(pacs.now)
    assert (third.new_or_changed, third.retrieved, third.failed) == (1, 1, 0)
    pulled = pacs.intake.accepted[before:]
    assert {a.held.study_instance_uid for a in pulled} == {changed.study_uid}
    assert str(late.SOPInstanceUID) in {a.held.sop_instance_uid for a in pulled}
    assert_same_data_sets(pacs.intake.held(), {str(late.SOPInstanceUID): late_path})
    assert pacs.intake.seen(changed.study_uid) == "instances=4;series=" + str(len(changed.series_uids))

    # a retrieve with a failed sub-operation is not remembered: the study is pulled at the next poll
    refused = pacs.studies[2]
    late2 = refused.instances[0].copy()
    late2.SOPInstanceUID = generate_uid()
    late2.file_meta.MediaStorageSOPInstanceUID = late2.SOPInstanceUID
    late2_path = tmp_path / "late2.dcm"
    late2_path.write_bytes(part10_bytes(late2))
    assert pacs.orthanc.upload(late2_path)["Status"] == "Success"
    pacs.intake.refuse.add(str(late2.SOPInstanceUID))
    remembered = pacs.intake.seen(refused.study_uid)
    fourth = poller.poll_once(pacs.now)
    assert (fourth.new_or_changed, fourth.retrieved, fourth.failed) == (1, 0, 1)
    assert "retrieve incomplete" in fourth.errors[refused.study_uid]  # Orthanc: 0xC000
    assert pacs.intake.seen(refused.study_uid) == remembered
    pacs.intake.refuse.clear()
    fifth = poller.poll_once(pacs.now)
    assert (fifth.new_or_changed, fifth.retrieved, fifth.failed) == (1, 1, 0)
    assert str(late2.SOPInstanceUID) in pacs.intake.held()


@pytest.mark.slow
def test_poller_pulls_by_c_get_on_its_own_association(pacs: Pacs, tmp_path: Path) -> None:
    intake = SpoolingIntake(tmp_path / "get-spool")
    poller = PacsPoller(pacs.source("get"), intake, AGENT_AE)
    # Orthanc names the study's SOP classes: each is offered once per stored syntax (no transcoding)
    assert {s.sop_classes for s in poller.find(pacs.now)} == {(CT_IMAGE,)}
    result = poller.poll_once(pacs.now)
    assert result.failed == 0, result.errors
    assert result.retrieved == result.found >= POLLED_STUDIES
    assert_same_data_sets(intake.held(), pacs.files)
    assert {(a.source, a.calling_ae_title) for a in intake.accepted} == {("poll", pacs.orthanc.aet)}


@pytest.mark.slow
def test_poller_outside_the_date_window_finds_nothing(pacs: Pacs) -> None:
    later = pacs.now + timedelta(days=pacs.days_back + 30)
    result = PacsPoller(pacs.source(), SpoolingIntake(Path("/nonexistent")), AGENT_AE).poll_once(later)
    assert (result.found, result.retrieved, result.errors) == (0, 0, {})


def test_poller_says_why_when_the_pacs_is_unreachable(tmp_path: Path) -> None:
    intake = SpoolingIntake(tmp_path / "spool")
    source = PollSource(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    result = PacsPoller(source, intake, AGENT_AE, timeout=5).poll_once(datetime.now().astimezone())
    assert result.found == result.retrieved == 0
    assert "NOBODY@127.0.0.1" in result.errors[""]
    assert intake.remembered == []


# -- folder drop -----------------------------------------------------------------------------------


class ManualClock:
    """Monotonic seconds the test moves on (the folder watch's settle time without sleeping)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def drop(tmp_path: Path, intake: SpoolingIntake) -> tuple[Path, FolderWatch, ManualClock]:
    folder = tmp_path / "drop"
    folder.mkdir()
    clock = ManualClock()
    return folder, FolderWatch(FolderSource(path=folder, settle=10.0), intake, clock=clock), clock


def test_folder_takes_copied_files_once_settled(
    drop: tuple[Path, FolderWatch, ManualClock], intake: SpoolingIntake, tmp_path: Path
) -> None:
    folder, watch, clock = drop
    files = write_study(tmp_path / "study", 3, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2.5"])
    (folder / "ct").mkdir()
    for f in files:
        shutil.copyfile(f.path, folder / "ct" / f.path.name)  # a plain copy: new times, as cp makes
    assert watch.scan_once() == 0  # just seen: may still be growing
    clock.now += 5
    assert watch.scan_once() == 0
    clock.now += 5
    assert watch.scan_once() == 3
    held = intake.held()
    for f in files:
        # a file is taken whole, exactly as it lay in the folder
        assert held[f.sop_instance_uid].path.read_bytes() == f.path.read_bytes()
        assert (folder / "done" / "ct" / f.path.name).read_bytes() == f.path.read_bytes()
        assert not (folder / "ct" / f.path.name).exists()
    assert {(a.source, a.calling_ae_title, a.emergency) for a in intake.accepted} == {("folder", None, False)}
    clock.now += 60
    assert watch.scan_once() == 0  # done/ is not scanned again
    assert intake.count() == 3


def test_folder_waits_for_a_file_being_written(
    drop: tuple[Path, FolderWatch, ManualClock], intake: SpoolingIntake, tmp_path: Path
) -> None:
    folder, watch, clock = drop
    [f] = write_study(tmp_path / "slow", 1, ["1.2.840.10008.1.2.1"])
    data = f.path.read_bytes()
    target = folder / "slow.dcm"
    with target.open("wb") as out:
        for start in range(0, len(data), 2048):
            out.write(data[start : start + 2048])
            out.flush()
            clock.now += 30  # longer than the settle time between writes, but the size moved
            assert watch.scan_once() == 0
    assert target.read_bytes() == data
    assert watch.scan_once() == 0  # the last write changed it
    clock.now += 10
    assert watch.scan_once() == 1
    assert intake.held()[f.sop_instance_uid].path.read_bytes() == data


def test_folder_takes_a_part_file_renamed_to_dcm_at_once(
    drop: tuple[Path, FolderWatch, ManualClock], intake: SpoolingIntake, tmp_path: Path
) -> None:
    folder, watch, _clock = drop
    [f] = write_study(tmp_path / "renamed", 1, ["1.2.840.10008.1.2.1"])
    part = folder / "incoming.part"
    part.write_bytes(f.path.read_bytes())
    assert watch.scan_once() == 0
    assert intake.count() == 0  # *.part is never taken
    time_module.sleep(0.05)  # the rename's ctime must fall after the last write's mtime
    part.rename(folder / "incoming.dcm")
    assert watch.scan_once() == 1  # no settle wait: renamed into place after its last write
    assert intake.held()[f.sop_instance_uid].path.read_bytes() == f.path.read_bytes()
    assert (folder / "done" / "incoming.dcm").exists()


def test_folder_rejects_what_is_not_dicom_and_skips_dicomdir(
    drop: tuple[Path, FolderWatch, ManualClock], intake: SpoolingIntake, tmp_path: Path
) -> None:
    folder, watch, clock = drop
    (folder / "notes.txt").write_text("not an image\n", encoding="utf-8")
    [f] = write_study(tmp_path / "d", 1, ["1.2.840.10008.1.2.1"])
    (folder / "DICOMDIR").write_bytes(f.path.read_bytes())  # whatever it holds, it is an index: left alone
    (folder / ".hidden.dcm").write_bytes(f.path.read_bytes())
    watch.scan_once()
    clock.now += 10
    assert watch.scan_once() == 0
    assert intake.count() == 0
    assert (folder / "rejected" / "notes.txt").read_text(encoding="utf-8") == "not an image\n"
    reason = (folder / "rejected" / "notes.txt.reason.txt").read_text(encoding="utf-8")
    assert "not a DICOM Part-10 file" in reason
    assert (folder / "DICOMDIR").exists()
    assert (folder / ".hidden.dcm").exists()
    assert not (folder / "notes.txt").exists()


# -- MIS endpoint ----------------------------------------------------------------------------------

MIS_TOKEN = "mis-token-0f9e"


def report_document(sop_class: str, study_uid: str) -> bytes:
    """A minimal Part-10 report of the study: a Basic Text SR, or an encapsulated PDF."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P-2002"
    ds.PatientName = "Смирнова^Ольга"
    ds.AccessionNumber = "ACC-77"
    ds.InstanceNumber = 1
    concept = Dataset()
    concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = (
        "18748-4",
        "LN",
        "Diagnostic Imaging Report",
    )
    ds.ConceptNameCodeSequence = [concept]
    if sop_class == ENCAPSULATED_PDF:
        ds.Modality = "DOC"
        ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
        ds.DocumentTitle = "Протокол исследования"
        ds.BurnedInAnnotation = "YES"
        ds.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    else:
        ds.Modality = "SR"
        ds.ValueType = "CONTAINER"
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag = "COMPLETE"
        ds.VerificationFlag = "UNVERIFIED"
        finding = Dataset()
        finding.RelationshipType = "CONTAINS"
        finding.ValueType = "TEXT"
        name = Dataset()
        name.CodeValue, name.CodingSchemeDesignator, name.CodeMeaning = "121071", "DCM", "Finding"
        finding.ConceptNameCodeSequence = [name]
        finding.TextValue = "Очаг 8 мм в S6 правого лёгкого."
        ds.ContentSequence = [finding]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10_bytes(ds)


@pytest.fixture
def mis(intake: SpoolingIntake) -> Iterator[httpx.Client]:
    server = MisServer(MisEndpoint(host="127.0.0.1", port=0, token=MIS_TOKEN), intake)
    server.start()
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {MIS_TOKEN}"}) as client:
            yield client
    finally:
        server.stop()


def test_mis_health_answers_without_a_token(mis: httpx.Client) -> None:
    answer = httpx.get(mis.base_url.join("/health"))
    assert answer.status_code == 200
    assert answer.json() == {"status": "ok"}


def test_mis_refuses_a_missing_or_wrong_token(mis: httpx.Client, intake: SpoolingIntake) -> None:
    body = {"StudyInstanceUID": "1.2.3"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {MIS_TOKEN}"}):
        answer = httpx.post(mis.base_url.join("/pathology"), json=body, headers=headers)
        assert answer.status_code == 401
        assert answer.json()["error"] == "unauthorised"
        assert answer.headers["www-authenticate"] == "Bearer"
    assert intake.marks == []


def test_mis_pathology_flag_marks_the_study(mis: httpx.Client, intake: SpoolingIntake, tmp_path: Path) -> None:
    [f] = write_study(tmp_path / "held", 1, ["1.2.840.10008.1.2.1"])
    held = intake.accept(f.path, source="router")
    answer = mis.post("/pathology", json={"StudyInstanceUID": held.study_instance_uid})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"eligible": [held.study_instance_uid]}
    # a flag for a study not received yet is remembered by the queue (it answers: none eligible now)
    later = mis.post("/pathology", json={"AccessionNumber": "ACC-9", "PatientID": "P-1"})
    assert later.status_code == 200
    assert later.json() == {"eligible": []}
    assert [(m.study_uid, m.accession, m.patient_id, m.source) for m in intake.marks] == [
        (held.study_instance_uid, None, None, "mis"),
        (None, "ACC-9", "P-1", "mis"),
    ]


def test_mis_pathology_flag_bad_bodies(mis: httpx.Client, intake: SpoolingIntake) -> None:
    not_json = mis.post("/pathology", content=b"{not json", headers={"Content-Type": "application/json"})
    assert not_json.status_code == 400
    assert not_json.json()["error"] == "invalid-json"
    assert mis.post("/pathology", json=["1.2.3"]).status_code == 400
    for body in ({}, {"StudyInstanceUID": "not a uid"}, {"PatientID": 42}, {"Study": "1.2.3"}):
        answer = mis.post("/pathology", json=body)
        assert answer.status_code == 422, body
        assert answer.json()["error"] == "invalid-flag"
    assert intake.marks == []


@pytest.mark.parametrize("sop_class", [BASIC_TEXT_SR, ENCAPSULATED_PDF])
def test_mis_report_is_queued_with_its_study(mis: httpx.Client, intake: SpoolingIntake, sop_class: str) -> None:
    study_uid = str(generate_uid())
    document = report_document(sop_class, study_uid)
    answer = mis.post("/reports", content=document, headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["StudyInstanceUID"] == study_uid
    assert body["sha256"] == hashlib.sha256(document).hexdigest()
    [accepted] = intake.accepted
    assert (accepted.source, accepted.held.sop_class_uid) == ("mis", sop_class)
    assert accepted.held.path.read_bytes() == document


def test_mis_report_bad_bodies(mis: httpx.Client, intake: SpoolingIntake, tmp_path: Path) -> None:
    document = report_document(BASIC_TEXT_SR, str(generate_uid()))
    wrong_type = mis.post("/reports", content=document, headers={"Content-Type": "application/octet-stream"})
    assert wrong_type.status_code == 415
    garbage = mis.post("/reports", content=b"%PDF-1.4 not dicom", headers={"Content-Type": "application/dicom"})
    assert garbage.status_code == 400
    assert "not a DICOM Part-10 file" in garbage.json()["detail"]
    [image] = write_study(tmp_path / "img", 1, ["1.2.840.10008.1.2.1"])
    not_report = mis.post("/reports", content=image.path.read_bytes(), headers={"Content-Type": "application/dicom"})
    assert not_report.status_code == 422
    assert not_report.json()["error"] == "not-a-report"
    refused_sop = str(dcmread(io.BytesIO(document)).SOPInstanceUID)
    intake.refuse.add(refused_sop)
    refused = mis.post("/reports", content=document, headers={"Content-Type": "application/dicom"})
    assert refused.status_code == 422
    assert refused.json() == {"error": "refused", "detail": f"refused by the test intake: {refused_sop}"}
    assert intake.accepted == []
    unknown = mis.get("/nowhere")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "not-found"


def test_folder_run_takes_files_until_stopped(intake: SpoolingIntake, tmp_path: Path) -> None:
    folder = tmp_path / "drop"
    folder.mkdir()
    watch = FolderWatch(FolderSource(path=folder, settle=3600.0), intake, interval=0.05)
    stop = threading.Event()
    thread = threading.Thread(target=watch.run, args=(stop,), daemon=True)
    thread.start()
    try:
        [f] = write_study(tmp_path / "r", 1, ["1.2.840.10008.1.2.1"])
        part = folder / "x.part"
        part.write_bytes(f.path.read_bytes())
        time_module.sleep(0.05)  # the rename's ctime must fall after the last write's mtime
        part.rename(folder / "x.dcm")
        assert wait_for(lambda: intake.count() == 1), "the running watch never took the file"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.mark.slow
def test_poller_run_polls_until_stopped(pacs: Pacs, tmp_path: Path) -> None:
    intake = SpoolingIntake(tmp_path / "run-spool")
    poller = PacsPoller(pacs.source("get"), intake, AGENT_AE, clock=lambda: pacs.now)
    stop = threading.Event()
    thread = threading.Thread(target=poller.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: len(intake.remembered) >= POLLED_STUDIES), "the running poller pulled nothing"
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()  # stops at once, without waiting out its interval
    assert set(pacs.files) <= set(intake.held())


def test_router_outlives_garbage_on_its_port(router: RouterScp, intake: SpoolingIntake, tmp_path: Path) -> None:
    for junk in (b"GET / HTTP/1.1\r\n\r\n", b"\x01\x00" + b"\xff" * 64, b""):
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as sock:
            sock.sendall(junk)
    [f] = write_study(tmp_path / "after", 1, ["1.2.840.10008.1.2.1"])
    assert int(pynetdicom_store(router.port, [f.path])[0].Status) == 0
    assert f.sop_instance_uid in intake.held()


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    deadline = time_module.monotonic() + timeout
    while not condition():
        if time_module.monotonic() > deadline:
            return False
        time_module.sleep(0.05)
    return True
