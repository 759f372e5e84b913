"""Orthanc as a hospital's local PACS forwards a study to CAMI and asks for storage commitment.

Real peers on loopback: Orthanc (Debian package, started by infra/orthanc.sh) knows CAMI as the
modality ``cami``; CAMI's Storage SCP runs in this process, built by the composition root, with a
senders file listing Orthanc's AE title and DICOM address (where the commitment report goes).
Orthanc sends the study with its own C-STORE (``POST /modalities/cami/store``), then requests
storage commitment (``POST /modalities/cami/storage-commitment``); CAMI answers the N-ACTION and
reports with an N-EVENT-REPORT on a new association, which Orthanc shows under
``GET /storage-commitment/{transaction}``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from api.bootstrap import Archive, bootstrap
from api.config import Settings
from api.demo.synthetic import Organisation, region, synthetic_study, write_study
from ingest.commitment import CLASS_INSTANCE_CONFLICT, NO_SUCH_OBJECT_INSTANCE
from ingest.dicom import split_part10
from ingest.scp import StorageSCP
from schemas.codec import decode
from streams.topics import DICOM
from tests.support.servers import OrthancServer, free_port

pytestmark = pytest.mark.slow

INSTANCES = 12


@dataclass
class Forwarding:
    archive: Archive
    scp: StorageSCP
    pacs: OrthancServer
    organisation: Organisation
    files: dict[str, Path]  # SOPInstanceUID -> the file uploaded to Orthanc
    references: list[tuple[str, str]]  # (SOPClassUID, SOPInstanceUID) of the study
    study_uid: str
    store_answer: dict[str, object]


def write_senders(path: Path, org: Organisation, pacs_port: int) -> None:
    path.write_text(
        "[archive]\n"
        'ae_title = "CAMI"\n'
        "accept_unknown = false\n\n"
        "[[sender]]\n"
        f'ae_title = "{org.ae_title}"\n'
        f'organisation = "{org.code}"\n'
        'name = "local PACS (Orthanc)"\n'
        'addresses = ["127.0.0.1"]\n'
        'host = "127.0.0.1"\n'
        f"port = {pacs_port}\n",
        encoding="utf-8",
    )


@pytest.fixture(scope="module")
def forwarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Forwarding]:
    tmp = tmp_path_factory.mktemp("orthanc-forwarding")
    org = region()[0]
    cami_port = free_port()
    pacs = OrthancServer(tmp / "orthanc", aet=org.ae_title, modalities={"cami": ("CAMI", "127.0.0.1", cami_port)})
    home = tmp / "cami"
    home.mkdir()
    write_senders(home / "senders.toml", org, pacs.dicom_port)
    settings = Settings(
        home=home,
        event_log_url=f"sqlite://{home}/events.db",
        blob_store_url=f"file://{home}/blobs",
        warehouse_url=f"chdb://{home}/clickhouse",
    )
    archive = bootstrap(settings)
    scp = archive.storage_scp(port=cami_port)
    scp.start()
    try:
        pacs.start()
        try:
            study = synthetic_study(org, "CT", instances=INSTANCES, seed=31)
            paths = write_study(study, tmp / "study")
            files = {}
            for path in paths:
                answer = pacs.upload(path)
                assert answer["Status"] == "Success", answer
                files[path.stem] = path
            [orthanc_study] = pacs.studies()
            store_answer = pacs.store("cami", [orthanc_study])
            references = [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in study.instances]
            yield Forwarding(archive, scp, pacs, org, files, references, study.study_uid, store_answer)
        finally:
            pacs.stop()
    finally:
        scp.stop()
        archive.close()


def instance_events(archive: Archive) -> list[dict[str, object]]:
    """Payloads of every InstanceReceived event in the log."""
    payloads = []
    for partition in archive.event_log.partitions(DICOM):
        offset = 0
        while True:
            records = archive.event_log.read(DICOM, partition, offset, 1000)
            if not records:
                break
            for record in records:
                event = decode(record.value)
                if event.type == "InstanceReceived":
                    payloads.append({**event.payload, "_organisation": event.envelope.organisation})
            offset = records[-1].offset + 1
    return payloads


def test_orthanc_forwards_the_study_with_its_own_c_store(forwarded: Forwarding) -> None:
    answer = forwarded.store_answer
    assert answer["InstancesCount"] == INSTANCES
    assert answer["FailedInstancesCount"] == 0
    assert answer["RemoteAet"] == "CAMI"
    assert len(forwarded.pacs.instances()) == INSTANCES


def test_cami_holds_every_instance_once(forwarded: Forwarding) -> None:
    archive = forwarded.archive
    for sop_class, sop_instance in forwarded.references:
        held = archive.sop_index.latest(sop_instance)
        assert held is not None, f"{sop_instance} not in the SOP index"
        assert held.version == 1
        assert held.sop_class_uid == sop_class
        assert held.study_instance_uid == forwarded.study_uid
        blob = archive.blobs.get(held.sha256)
        assert hashlib.sha256(blob).hexdigest() == held.sha256
        # original quality: the data set Orthanc sent is, byte for byte, the one uploaded to it
        original = forwarded.files[sop_instance].read_bytes()
        sent = split_part10(original)
        kept = split_part10(blob)
        assert kept.transfer_syntax == sent.transfer_syntax
        assert blob[kept.dataset_offset :] == original[sent.dataset_offset :]

    events = instance_events(archive)
    per_instance = Counter(str(p["SOPInstanceUID"]) for p in events)
    assert per_instance == {sop_instance: 1 for _, sop_instance in forwarded.references}
    for payload in events:
        assert payload["_organisation"] == forwarded.organisation.code
        assert payload["channel"] == "dicom"


def test_storage_commitment_reports_success_for_every_instance(forwarded: Forwarding) -> None:
    pacs = forwarded.pacs
    transaction = pacs.request_commitment("cami", forwarded.references)
    report = pacs.wait_commitment(transaction)
    assert report["Status"] == "Success", report
    assert report["RemoteAET"] == "CAMI"
    assert report["Failures"] == []
    committed = {(item["SOPClassUID"], item["SOPInstanceUID"]) for item in report["Success"]}
    assert committed == set(forwarded.references)
    assert len(report["Success"]) == INSTANCES


def test_storage_commitment_lists_what_cami_never_received_as_failed(forwarded: Forwarding) -> None:
    pacs = forwarded.pacs
    ct_image = forwarded.references[0][0]
    never_received = (ct_image, generate_uid())
    held_sop_class, held_instance = forwarded.references[1]
    wrong_class = ("1.2.840.10008.5.1.4.1.1.4", forwarded.references[2][1])  # MR class for a CT instance
    transaction = pacs.request_commitment("cami", [never_received, (held_sop_class, held_instance), wrong_class])
    report = pacs.wait_commitment(transaction)
    assert report["Status"] == "Failure", report
    assert [(i["SOPClassUID"], i["SOPInstanceUID"]) for i in report["Success"]] == [(held_sop_class, held_instance)]
    failures = {(i["SOPClassUID"], i["SOPInstanceUID"]): i["FailureReason"] for i in report["Failures"]}
    assert failures == {never_received: NO_SUCH_OBJECT_INSTANCE, wrong_class: CLASS_INSTANCE_CONFLICT}


def test_storage_commitment_of_nothing_held_is_all_failures(forwarded: Forwarding) -> None:
    pacs = forwarded.pacs
    strangers = [("1.2.840.10008.5.1.4.1.1.2", str(generate_uid())) for _ in range(3)]
    report = pacs.wait_commitment(pacs.request_commitment("cami", strangers))
    assert report["Status"] == "Failure", report
    assert report["Success"] == []
    assert sorted((i["SOPInstanceUID"], i["FailureReason"]) for i in report["Failures"]) == sorted(
        (uid, NO_SUCH_OBJECT_INSTANCE) for _, uid in strangers
    )
