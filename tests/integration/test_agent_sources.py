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
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from ingest.agent.commitment import CommitmentWaiter
from ingest.agent.config import RouterConfig
from ingest.agent.router import RouterScp
from ingest.commitment import NO_SUCH_OBJECT_INSTANCE, CommitmentResult, StorageCommitment
from ingest.dicom import split_part10
from ingest.senders import load_senders
from ingest.sop_index import SopIndex
from streams.blobs import open_blob_store
from tests.support.agent_intake import SpoolingIntake
from tests.support.studies import DCMTK_ENV, outcomes, storescu, storescu_profile, write_study

AGENT_AE = "OKB_AGENT"
URGENT_AE = "OKB_AGENT_URG"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


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


def test_router_takes_cami_storage_commitment_reports(
    router: RouterScp, waiter: CommitmentWaiter, tmp_path: Path
) -> None:
    """CAMI's own reporting code (ingest.commitment) sends the N-EVENT-REPORT to the router, as CAMI
    does after a delivery's N-ACTION: a new association proposing the SCP role for the SOP class."""
    senders = tmp_path / "senders.toml"
    senders.write_text(
        '[archive]\nae_title = "CAMI"\naccept_unknown = false\n\n'
        f'[[sender]]\nae_title = "{AGENT_AE}"\norganisation = "1.2.643.5.1.13.13.12.2.50.1001"\n'
        f'addresses = ["127.0.0.1"]\nhost = "127.0.0.1"\nport = {router.port}\n',
        encoding="utf-8",
    )
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


def test_router_file_header_names_the_sender(router: RouterScp, intake: SpoolingIntake, tmp_path: Path) -> None:
    """The Part-10 header the router writes holds the request's UIDs and the negotiated syntax."""
    [f] = write_study(tmp_path / "h", 1, [ExplicitVRLittleEndian])
    assert int(pynetdicom_store(router.port, [f.path])[0].Status) == 0
    kept = dcmread(intake.held()[f.sop_instance_uid].path)
    assert kept.file_meta.MediaStorageSOPInstanceUID == f.sop_instance_uid
    assert kept.file_meta.MediaStorageSOPClassUID == CT_IMAGE
    assert kept.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
