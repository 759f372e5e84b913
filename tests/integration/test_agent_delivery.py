"""The agent's delivery against a real CAMI: C-STORE + storage commitment, the emergency AE title,
pacing at 256 kbit/s, a link cut mid-study and the resume, STOW-RS over CAMI's HTTP API, and the
API client's errors.

CAMI's Storage SCP runs in this process, built by the composition root, with a senders file that
lists the agent's AE title and the address of its commitment receiver (a pynetdicom SCP, as the
agent's router would be) where CAMI's N-EVENT-REPORT arrives on a new association. The slow and
broken link is a throttling TCP proxy between the agent and CAMI. Pacing figures are printed for
the bench (run with ``-s``); no test asserts on timing.
"""

from __future__ import annotations

import hashlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.demo.synthetic import available_transfer_syntaxes, region, synthetic_study, write_study
from ingest.agent.cami_client import CamiClient, CamiRefused, CamiUnreachable
from ingest.agent.commitment import CommitmentWaiter
from ingest.agent.config import CamiTarget
from ingest.agent.delivery import DeliveryResult, DicomDelivery, LinkDown, StowDelivery
from ingest.agent.model import HeldInstance, OutboxEvent, Priority, StudyEntry, StudyState
from ingest.agent.pacing import LinkPace
from ingest.dicom import split_part10
from schemas.codec import decode
from streams.topics import DICOM
from tests.support.commitment_receiver import CommitmentReceiver
from tests.support.servers import free_port
from tests.support.stow import RunningArchive, start_archive
from tests.support.throttle import ThrottleProxy

AGENT = "OKB_AGENT"
ORG = region()[0]


@dataclass
class Cami:
    archive: Archive
    port: int
    waiter: CommitmentWaiter
    receiver: CommitmentReceiver
    tmp: Path

    def target(self, port: int | None = None, timeout: float = 30.0) -> CamiTarget:
        return CamiTarget(host="127.0.0.1", port=port or self.port, commitment_timeout=timeout)

    def received(self) -> list[dict[str, object]]:
        log = self.archive.event_log
        events = [decode(r.value) for p in log.partitions(DICOM) for r in log.read(DICOM, p, 0, 1_000_000)]
        return [dict(e.payload) for e in events if e.type == "InstanceReceived"]


@pytest.fixture()
def cami(tmp_path: Path) -> Iterator[Cami]:
    waiter = CommitmentWaiter()
    receiver = CommitmentReceiver(AGENT, waiter).start()
    home = tmp_path / "cami"
    home.mkdir()
    (home / "senders.toml").write_text(
        '[archive]\nae_title = "CAMI"\nemergency_ae_title = "CAMI_URGENT"\naccept_unknown = false\n\n'
        f'[[sender]]\nae_title = "{AGENT}"\norganisation = "{ORG.code}"\nname = "transfer agent"\n'
        f'host = "127.0.0.1"\nport = {receiver.port}\n',
        encoding="utf-8",
    )
    archive = bootstrap(
        Settings(
            home=home,
            event_log_url=f"sqlite://{home}/events.db",
            blob_store_url=f"file://{home}/blobs",
            warehouse_url=f"chdb://{home}/clickhouse",
        )
    )
    port = free_port()
    scp = archive.storage_scp(port=port)
    scp.start()
    try:
        yield Cami(archive, port, waiter, receiver, tmp_path)
    finally:
        scp.stop()
        receiver.stop()
        archive.close()


def held_study(
    directory: Path, *, instances: int, seed: int, modality: str = "CT", transfer_syntax: str = ExplicitVRLittleEndian
) -> list[HeldInstance]:
    """A synthetic study written as Part-10 files, as the agent's spool holds them."""
    study = synthetic_study(ORG, modality, instances=instances, seed=seed, transfer_syntax=transfer_syntax)
    held = []
    for path in write_study(study, directory):
        ds = dcmread(path, stop_before_pixels=True)
        data = path.read_bytes()
        held.append(
            HeldInstance(
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                study_instance_uid=str(ds.StudyInstanceUID),
                series_instance_uid=str(ds.SeriesInstanceUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                path=path,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    return held


def entry(held: list[HeldInstance], priority: Priority = Priority.SCHEDULED) -> StudyEntry:
    return StudyEntry(
        study_instance_uid=held[0].study_instance_uid,
        patient_id=None,
        accession=None,
        state=StudyState.SENDING,
        priority=priority,
        instances=len(held),
        bytes=sum(i.size for i in held),
    )


class Recorder:
    """What the queue would record: on_stored calls, and the instances as the next attempt sees them."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def __call__(self, sop: str) -> None:
        self.stored.append(sop)

    def as_queued(self, held: list[HeldInstance]) -> list[HeldInstance]:
        return [replace(i, sent=i.sop_instance_uid in self.stored) for i in held]


def never() -> bool:
    return False


def sops(held: list[HeldInstance]) -> set[str]:
    return {i.sop_instance_uid for i in held}


def assert_cami_holds_the_files(
    archive: Archive, held: list[HeldInstance], delivery: DicomDelivery | None = None
) -> None:
    """CAMI holds each file's data set byte for byte: the whole file as it is (STOW), or behind the
    Part-10 header CAMI writes for a C-STORE, whose hash the delivery computes ahead."""
    for instance in held:
        kept = archive.sop_index.latest(instance.sop_instance_uid)
        assert kept is not None, instance.sop_instance_uid
        assert kept.version == 1
        blob = archive.blobs.get(kept.sha256)
        assert hashlib.sha256(blob).hexdigest() == kept.sha256
        original = instance.path.read_bytes()
        if delivery is None:
            assert kept.sha256 == instance.sha256
            assert blob == original
        else:
            assert kept.sha256 == delivery.cami_sha256(instance)
            assert blob[split_part10(blob).dataset_offset :] == original[split_part10(original).dataset_offset :]


# -- DICOM -------------------------------------------------------------------------------------
def test_a_study_is_stored_unchanged_and_committed(cami: Cami) -> None:
    held = held_study(cami.tmp / "spool", instances=5, seed=11)
    stored = Recorder()
    delivery = DicomDelivery(cami.target(), AGENT, LinkPace(None), cami.waiter)
    result = delivery.send(entry(held), held, emergency=False, on_stored=stored, should_yield=never)
    assert set(result.stored) == set(stored.stored) == sops(held)
    assert result.failed == {} and result.commitment_failed == {}
    assert set(result.committed) == sops(held)
    assert result.bytes_sent == sum(i.size for i in held)
    assert not result.yielded
    assert_cami_holds_the_files(cami.archive, held, delivery)
    received = cami.received()
    assert Counter(str(p["SOPInstanceUID"]) for p in received) == dict.fromkeys(sops(held), 1)
    assert {(p["calling_ae_title"], p["called_ae_title"], p["emergency"]) for p in received} == {(AGENT, "CAMI", False)}
    # the report came on a new association to the agent's own SCP
    assert len(cami.receiver.reports) == 1

    # sending the delivered study again only asks for commitment: nothing is stored twice
    delivered = [replace(i, sent=True) for i in held]
    again = delivery.send(entry(held), delivered, emergency=False, on_stored=stored, should_yield=never)
    assert again.stored == [] and set(again.committed) == sops(held)
    assert len(cami.received()) == len(held)


def test_each_file_goes_in_its_own_transfer_syntax_in_paced_fragments(cami: Cami) -> None:
    held = [
        instance
        for n, syntax in enumerate(available_transfer_syntaxes())
        for instance in held_study(cami.tmp / "spool", instances=1, seed=30 + n, modality="MR", transfer_syntax=syntax)
    ]
    assert len({i.transfer_syntax_uid for i in held}) >= 5
    # a cap high enough to be quick, so PDUs are cut to the paced size and put back together by CAMI
    delivery = DicomDelivery(cami.target(), AGENT, LinkPace(100_000), cami.waiter)
    result = delivery.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
    assert result.failed == {}
    assert set(result.committed) == sops(held)
    assert_cami_holds_the_files(cami.archive, held, delivery)
    syntaxes = {str(p["SOPInstanceUID"]): p["TransferSyntaxUID"] for p in cami.received()}
    assert syntaxes == {i.sop_instance_uid: i.transfer_syntax_uid for i in held}


def test_an_emergency_goes_to_the_emergency_ae_title_and_arrives_flagged(cami: Cami) -> None:
    held = held_study(cami.tmp / "spool", instances=3, seed=12)
    delivery = DicomDelivery(cami.target(), AGENT, LinkPace(None), cami.waiter)
    result = delivery.send(
        entry(held, Priority.EMERGENCY), held, emergency=True, on_stored=Recorder(), should_yield=never
    )
    assert set(result.committed) == sops(held)
    received = cami.received()
    assert {(p["called_ae_title"], p["emergency"]) for p in received} == {("CAMI_URGENT", True)}
    assert {str(p["SOPInstanceUID"]) for p in received} == sops(held)


def test_an_emergency_waiting_stops_the_study_between_instances(cami: Cami) -> None:
    held = held_study(cami.tmp / "spool", instances=5, seed=13)
    stored = Recorder()
    delivery = DicomDelivery(cami.target(), AGENT, LinkPace(None), cami.waiter)
    first = delivery.send(
        entry(held), held, emergency=False, on_stored=stored, should_yield=lambda: len(stored.stored) >= 2
    )
    assert first.yielded and len(first.stored) == 2
    assert first.committed == [] and first.commitment_failed == {}
    second = delivery.send(entry(held), stored.as_queued(held), emergency=False, on_stored=stored, should_yield=never)
    assert set(second.stored) == sops(held) - set(first.stored)
    assert set(second.committed) == sops(held)
    assert Counter(str(p["SOPInstanceUID"]) for p in cami.received()) == dict.fromkeys(sops(held), 1)


def test_cami_refusing_the_agent_is_a_link_down_with_the_reason(cami: Cami) -> None:
    held = held_study(cami.tmp / "spool", instances=1, seed=14)
    delivery = DicomDelivery(cami.target(), "UNKNOWN_AGENT", LinkPace(None), cami.waiter)
    with pytest.raises(LinkDown, match="rejected the association from UNKNOWN_AGENT"):
        delivery.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
    nobody = DicomDelivery(cami.target(port=free_port()), AGENT, LinkPace(None), cami.waiter)
    with pytest.raises(LinkDown, match="cannot reach CAMI"):
        nobody.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
    with ThrottleProxy("127.0.0.1", cami.port) as link:
        link.refuse(True)  # CAMI's host answers, then drops the connection at once
        behind = DicomDelivery(cami.target(port=link.port), AGENT, LinkPace(None), cami.waiter)
        with pytest.raises(LinkDown, match="cannot reach CAMI"):
            behind.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
    assert cami.received() == []


def test_no_commitment_report_is_a_commitment_failure_not_a_delivery(cami: Cami) -> None:
    held = held_study(cami.tmp / "spool", instances=2, seed=15)
    cami.receiver.stop()  # the agent's SCP is down: CAMI cannot report
    delivery = DicomDelivery(cami.target(timeout=3.0), AGENT, LinkPace(None), cami.waiter)
    result = delivery.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
    assert set(result.stored) == sops(held)
    assert result.committed == []
    assert result.commitment_failed == dict.fromkeys(sops(held), "no storage commitment report from CAMI within 3 s")


def test_pacing_at_256_kbps_keeps_to_the_cap_and_loses_nothing(cami: Cami, capsys: pytest.CaptureFixture[str]) -> None:
    held = held_study(cami.tmp / "spool", instances=3, seed=16)  # ~400 KB
    with ThrottleProxy("127.0.0.1", cami.port) as wire:  # no limit of its own: it only counts the bytes
        delivery = DicomDelivery(cami.target(port=wire.port), AGENT, LinkPace(256), cami.waiter)
        result = delivery.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
        achieved = wire.sent.kbps()
        on_wire = wire.sent.bytes
    assert set(result.committed) == sops(held)
    assert on_wire > result.bytes_sent == sum(i.size for i in held)
    assert_cami_holds_the_files(cami.archive, held, delivery)
    with capsys.disabled():
        print(
            f"\npacing: {on_wire} bytes on the wire at {achieved:.1f} kbit/s for a 256 kbit/s cap "
            f"({achieved / 256:.0%})"
        )


def test_a_link_cut_mid_study_then_resumes_without_resending(cami: Cami) -> None:
    held = held_study(cami.tmp / "spool", instances=4, seed=17)
    stored = Recorder()
    with ThrottleProxy("127.0.0.1", cami.port, kbps=256) as link:
        delivery = DicomDelivery(cami.target(port=link.port), AGENT, LinkPace(256), cami.waiter)

        def on_stored(sop: str) -> None:
            stored(sop)
            if len(stored.stored) == 1:  # well inside the second instance (~4 s at 256 kbit/s)
                threading.Timer(1.5, link.cut).start()

        with pytest.raises(LinkDown):
            delivery.send(entry(held), held, emergency=False, on_stored=on_stored, should_yield=never)
        assert len(stored.stored) == 1
        first = set(stored.stored)
        link.set_kbps(None)  # the link is back (and fast: the test need not wait)
        delivery.pace.set_kbps(None)
        result = delivery.send(
            entry(held), stored.as_queued(held), emergency=False, on_stored=stored, should_yield=never
        )
    assert set(result.stored) == sops(held) - first  # what was sent before is not sent again
    assert set(result.committed) == sops(held)
    assert Counter(str(p["SOPInstanceUID"]) for p in cami.received()) == dict.fromkeys(sops(held), 1)
    assert_cami_holds_the_files(cami.archive, held, delivery)


# -- STOW-RS and the API client ----------------------------------------------------------------
@pytest.fixture()
def http_cami(tmp_path: Path) -> Iterator[RunningArchive]:
    yield from start_archive(tmp_path / "cami")


def test_stow_delivery_stores_the_files_unchanged(http_cami: RunningArchive, tmp_path: Path) -> None:
    held = held_study(tmp_path / "spool", instances=5, seed=21)
    stored = Recorder()
    with CamiClient(http_cami.url, http_cami.tokens["okb-pacs"]) as client:
        delivery = StowDelivery(client, LinkPace(None), batch_instances=2)
        result: DeliveryResult = delivery.send(entry(held), held, emergency=False, on_stored=stored, should_yield=never)
    assert set(result.stored) == set(stored.stored) == sops(held)
    assert result.failed == {}
    assert_cami_holds_the_files(http_cami.archive, held)
    received = [e for e in http_cami.events(DICOM) if e.type == "InstanceReceived"]
    assert Counter(e["SOPInstanceUID"] for e in received) == dict.fromkeys(sops(held), 1)
    # a modality user may store but not check hashes: the instances are stored, not committed
    assert result.committed == []
    assert set(result.commitment_failed) == sops(held)
    assert all(r.startswith("hash check refused: HTTP 40") for r in result.commitment_failed.values())


def test_stow_through_a_cut_link_resumes_at_the_next_batch(http_cami: RunningArchive, tmp_path: Path) -> None:
    held = held_study(tmp_path / "spool", instances=4, seed=22)
    stored = Recorder()
    host, port = http_cami.url.removeprefix("http://").split(":")
    with (
        ThrottleProxy(host, int(port), kbps=256) as link,
        CamiClient(f"http://{host}:{link.port}", http_cami.tokens["okb-pacs"]) as client,
    ):
        delivery = StowDelivery(client, LinkPace(256), batch_instances=1)

        def on_stored(sop: str) -> None:
            stored(sop)
            if len(stored.stored) == 1:
                threading.Timer(1.5, link.cut).start()

        with pytest.raises(LinkDown, match="STOW-RS"):
            delivery.send(entry(held), held, emergency=False, on_stored=on_stored, should_yield=never)
        first = set(stored.stored)
        assert len(first) == 1
        link.set_kbps(None)  # the link is back (and fast: the test need not wait)
        delivery.pace.set_kbps(None)
        result = delivery.send(
            entry(held), stored.as_queued(held), emergency=False, on_stored=stored, should_yield=never
        )
    assert set(result.stored) == sops(held) - first
    assert_cami_holds_the_files(http_cami.archive, held)
    received = [e for e in http_cami.events(DICOM) if e.type == "InstanceReceived"]
    assert Counter(e["SOPInstanceUID"] for e in received) == dict.fromkeys(sops(held), 1)


def test_the_client_tells_refusals_from_an_unreachable_cami(http_cami: RunningArchive, tmp_path: Path) -> None:
    event = OutboxEvent(1, "6f1c1f4e-3c1a-4f0e-9f1e-0d5b7c2a9e11", "AgentHeartbeat", datetime.now(UTC), {})
    with CamiClient(http_cami.url, "not-a-token") as client, pytest.raises(CamiRefused) as refused:
        client.stow(iter([b"--x--\r\n"]), 'multipart/related; type="application/dicom"; boundary=x', False)
    assert refused.value.status == 401
    assert isinstance(refused.value.body, dict)
    # a modality user has no business with the agent's routes (404 before they exist, 403 after)
    with CamiClient(http_cami.url, http_cami.tokens["okb-pacs"]) as client:
        with pytest.raises(CamiRefused) as refused:
            client.post_events([event])
        assert refused.value.status in (403, 404)
        with pytest.raises(CamiRefused):
            client.verify([("1.2.3", "0" * 64)])
        with pytest.raises(CamiRefused):
            client.requests(None)
    with CamiClient(f"http://127.0.0.1:{free_port()}", "t") as client, pytest.raises(CamiUnreachable):
        client.post_events([event])
    host, port = http_cami.url.removeprefix("http://").split(":")
    with ThrottleProxy(host, int(port)) as link, CamiClient(f"http://{host}:{link.port}", "t") as client:
        link.refuse(True)
        with pytest.raises(CamiUnreachable):
            client.requests(None)
        link.refuse(False)
        with pytest.raises(CamiRefused):  # through again: CAMI answers (the token is refused)
            client.requests(None)


def test_stow_paced_at_256_kbps_keeps_to_the_cap_and_loses_nothing(
    http_cami: RunningArchive, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    held = held_study(tmp_path / "spool", instances=3, seed=23)  # ~400 KB
    host, port = http_cami.url.removeprefix("http://").split(":")
    with (
        ThrottleProxy(host, int(port)) as wire,
        CamiClient(f"http://{host}:{wire.port}", http_cami.tokens["okb-pacs"]) as client,
    ):
        delivery = StowDelivery(client, LinkPace(256), batch_instances=1)
        result = delivery.send(entry(held), held, emergency=False, on_stored=Recorder(), should_yield=never)
        achieved = wire.sent.kbps()
        on_wire = wire.sent.bytes
    assert set(result.stored) == sops(held)
    assert on_wire > result.bytes_sent == sum(i.size for i in held)
    assert_cami_holds_the_files(http_cami.archive, held)
    with capsys.disabled():
        print(
            f"\nSTOW pacing: {on_wire} bytes on the wire at {achieved:.1f} kbit/s for a 256 kbit/s cap "
            f"({achieved / 256:.0%})"
        )
