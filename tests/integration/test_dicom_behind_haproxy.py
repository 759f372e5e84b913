"""DICOM through haproxy with the PROXY protocol (``infra/haproxy.sh --send-proxy``): the node
reads the real sender's address from the header, so the senders file's ``addresses`` rules and
the events name the modality, not the balancer.

On loopback the senders call from 127.0.0.2 and 127.0.0.3 (pynetdicom binds the source address),
the balancer connects to the node from 127.0.0.1, which is the node's CAMI_DICOM_PROXY_FROM.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from ingest.scp import StorageSCP
from schemas.codec import decode
from schemas.events import Event
from streams.topics import DICOM
from tests.support import studies
from tests.support.agent_region import wait_for
from tests.support.readside import ROOT_UID
from tests.support.servers import HaproxyServer

ORGANISATION = "1.2.643.5.1.13.13.12.2.50.1001"
CT = "1.2.840.10008.5.1.4.1.1.2"
SENDERS = f"""
[archive]
ae_title = "CAMI"

[[sender]]
ae_title = "CT_HERE"
organisation = "{ORGANISATION}"
addresses = ["127.0.0.2"]

[[sender]]
ae_title = "CT_THERE"
organisation = "{ORGANISATION}"
addresses = ["127.0.0.3"]
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Archive, StorageSCP, HaproxyServer]]:
    home = tmp_path_factory.mktemp("behind-haproxy")
    (home / "senders.toml").write_text(SENDERS, encoding="utf-8")
    archive = bootstrap(
        Settings(
            home=home,
            event_log_url=f"sqlite://{home}/events.db",
            blob_store_url=f"file://{home}/blobs",
            warehouse_url=f"chdb://{home}/clickhouse",
            dicom_proxy_from=("127.0.0.1",),
            dicom_request_timeout=2.0,
        )
    )
    scp = archive.storage_scp(port=0)
    scp.start()
    balancer = HaproxyServer(
        home / "haproxy", backends=[f"127.0.0.1:{scp.port}"], send_proxy=True, check_interval="500ms"
    )
    balancer.start()
    try:
        balancer.wait_server("dicom/dicom1", "UP", timeout=30)
        yield archive, scp, balancer
    finally:
        balancer.stop()
        scp.stop()
        archive.close()


def events(archive: Archive, event_type: str) -> list[Event]:
    log = archive.event_log
    found = [decode(r.value) for p in log.partitions(DICOM) for r in log.read(DICOM, p, 0, 1_000_000)]
    return [e for e in found if e.type == event_type]


def store(port: int, calling: str, source: str) -> Any:
    """One C-STORE from ``source`` (a loopback address); the association's result or status."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.network_timeout = 10
    assoc = ae.associate("127.0.0.1", port, ae_title="CAMI", bind_address=(source, 0))
    if not assoc.is_established:
        return "rejected" if assoc.is_rejected else "aborted"
    ds = studies.instance(str(generate_uid(prefix=ROOT_UID)), str(generate_uid(prefix=ROOT_UID)), 1, patient_id="PX-1")
    try:
        answer = assoc.send_c_store(ds)
        return (int(answer.Status), str(ds.SOPInstanceUID)) if "Status" in answer else "aborted"
    except RuntimeError:  # the archive aborted the association between its acceptance and the C-STORE
        return "aborted"
    finally:
        if assoc.is_established:
            assoc.release()


def test_the_sender_address_comes_through_the_balancer(node: tuple[Archive, StorageSCP, HaproxyServer]) -> None:
    archive, _, balancer = node
    status, sop = store(balancer.port, "CT_HERE", "127.0.0.2")
    assert status == 0x0000
    [received] = [e for e in events(archive, "InstanceReceived") if e.payload["SOPInstanceUID"] == sop]
    assert received.payload["peer_address"] == "127.0.0.2"

    # the other sender's rule names another address: refused, and the refusal names the real peer
    assert store(balancer.port, "CT_THERE", "127.0.0.2") in ("rejected", "aborted")
    refusals = [e for e in events(archive, "AssociationRejected") if e.payload["calling_ae_title"] == "CT_THERE"]
    assert refusals and refusals[-1].payload["peer_address"] == "127.0.0.2"
    assert refusals[-1].payload["reason"] == "address-not-allowed"
    assert balancer.servers()["dicom/dicom1"] == "UP"  # its checks carry a header too: never refused


def test_the_balancers_address_without_a_header_is_refused(node: tuple[Archive, StorageSCP, HaproxyServer]) -> None:
    archive, scp, balancer = node
    assert store(scp.port, "CT_HERE", "127.0.0.1") == "aborted"  # straight from the balancer's address
    wait_for(
        "the rejection event",
        lambda: [e for e in events(archive, "AssociationRejected") if e.payload["reason"] == "proxy-header-invalid"],
        timeout=10,
    )
    # anyone else connects directly as before (a sender's own address, no header)
    assert store(scp.port, "CT_HERE", "127.0.0.2")[0] == 0x0000
    # and the listener went on serving through the balancer
    assert store(balancer.port, "CT_HERE", "127.0.0.2")[0] == 0x0000
