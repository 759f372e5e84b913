"""The agent's durable queue on real files (synthetic studies, pydicom's bundled files) and real SQLite:
eligibility, requests, the order of sending, resume, holds, the outbox, crash safety."""

from __future__ import annotations

import copy
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from api.demo.synthetic import SyntheticStudy, part10_bytes, region, synthetic_patient, synthetic_study
from ingest.agent.config import Rules
from ingest.agent.model import Priority, StudyState
from ingest.agent.queue import TransferQueue
from ingest.agent.schedule import parse_window
from schemas.codec import decode, encode
from schemas.events import new_event
from schemas.registry import registry
from tests.support.paths import ROOT

ORG = region()[0]
DESTINATION = "CAMI"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def queue(tmp_path: Path, clock: Clock) -> TransferQueue:
    return TransferQueue(tmp_path / "agent", ORG.code, DESTINATION, clock)


def study(seed: int, *, instances: int = 3, **options: Any) -> SyntheticStudy:
    return synthetic_study(ORG, "CT", instances=instances, seed=seed, **options)


def files(s: SyntheticStudy) -> list[bytes]:
    return [part10_bytes(ds) for ds in s.instances]


def accept_all(queue: TransferQueue, s: SyntheticStudy, **options: Any) -> None:
    for data in files(s):
        queue.accept(data, source="router", calling_ae_title="MODALITY", **options)


def another_instance(s: SyntheticStudy, n: int) -> bytes:
    """A new instance of the study (a series added later, a report...)."""
    ds = copy.deepcopy(s.instances[0])
    ds.SOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[s.study_uid, str(n)])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceNumber = 100 + n
    return part10_bytes(ds)


def changed(data: bytes, description: str) -> bytes:
    """The same SOP instance with different bytes (a corrected description)."""
    from pydicom import dcmread
    from pydicom.filebase import DicomBytesIO

    ds = dcmread(DicomBytesIO(data))
    ds.SeriesDescription = description
    return part10_bytes(ds)


def events(queue: TransferQueue) -> list[tuple[str, dict[str, Any]]]:
    return [(e.type, e.payload) for e in queue.pending_events(limit=10_000)]


def types(queue: TransferQueue) -> list[str]:
    return [t for t, _ in events(queue)]


def sr_report(s: SyntheticStudy, code: tuple[str, str]) -> bytes:
    """A Comprehensive SR of the study whose finding (a CODE item two levels down) is ``code``."""
    first = s.instances[0]
    ds = Dataset()
    for keyword in ("SpecificCharacterSet", "PatientID", "PatientName", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, first.get(keyword))
    ds.StudyInstanceUID = s.study_uid
    ds.AccessionNumber = first.AccessionNumber
    ds.SeriesInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[s.study_uid, "sr"])
    ds.SOPInstanceUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.", entropy_srcs=[s.study_uid, "sr", "1"])
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.33"
    ds.Modality = "SR"
    ds.ValueType = "CONTAINER"

    def item(value_type: str, name: tuple[str, str, str], **extra: Any) -> Dataset:
        entry = Dataset()
        entry.RelationshipType = "CONTAINS"
        entry.ValueType = value_type
        concept = Dataset()
        concept.CodeValue, concept.CodingSchemeDesignator, concept.CodeMeaning = name
        entry.ConceptNameCodeSequence = Sequence([concept])
        for key, value in extra.items():
            setattr(entry, key, value)
        return entry

    value = Dataset()
    value.CodingSchemeDesignator, value.CodeValue, value.CodeMeaning = code[0], code[1], "finding"
    finding = item("CODE", ("121071", "DCM", "Finding"), ConceptCodeSequence=Sequence([value]))
    findings = item("CONTAINER", ("121070", "DCM", "Findings"), ContentSequence=Sequence([finding]))
    ds.ContentSequence = Sequence([findings])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return part10_bytes(ds)


def bundled(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None
    return Path(str(path))


# -- eligibility -------------------------------------------------------------------------------------
def test_pathology_only_by_default_other_studies_stay_local(queue: TransferQueue) -> None:
    well, sick = study(1), study(2, pathology=True)
    accept_all(queue, well)
    accept_all(queue, sick)
    assert queue.study(well.study_uid).state == StudyState.LOCAL
    entry = queue.study(sick.study_uid)
    assert entry.state == StudyState.QUEUED and entry.pathology and entry.priority == Priority.SCHEDULED
    assert entry.instances == 3 and entry.transfer_id is not None and entry.queued_at == T0
    [(kind, payload)] = events(queue)  # the local study produced no event: it never leaves
    assert kind == "TransferQueued"
    assert payload["transfer_id"] == entry.transfer_id and payload["StudyInstanceUID"] == sick.study_uid
    assert payload["priority"] == "scheduled" and payload["pathology"] is True and payload["full_import"] is False
    assert payload["destination"] == DESTINATION and payload["source_ae_title"] == "MODALITY"
    # queued when its first instance arrived: the later two belong to the same transfer
    assert payload["instances"] == 1 and payload["bytes"] == len(files(sick)[0])
    assert "request_id" not in payload


def test_everything_goes_when_pathology_only_is_off(tmp_path: Path, clock: Clock) -> None:
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock, rules=Rules(pathology_only=False))
    accept_all(queue, study(1))
    assert queue.study(study(1).study_uid).state == StudyState.QUEUED


def test_emergencies_by_private_mark_and_by_the_routers_emergency_title(queue: TransferQueue) -> None:
    marked, routed = study(3, emergency=True), study(4)
    accept_all(queue, marked)
    queue.accept(files(routed)[0], source="router", calling_ae_title="ER_CT", emergency=True)
    for uid in (marked.study_uid, routed.study_uid):
        entry = queue.study(uid)
        assert entry.state == StudyState.QUEUED and entry.priority == Priority.EMERGENCY and not entry.pathology
    assert [p["priority"] for _, p in events(queue)] == ["emergency", "emergency"]
    # the routed study's later instances, sent to the ordinary title, stay in the emergency
    queue.accept(files(routed)[1], source="router", calling_ae_title="ER_CT")
    assert queue.study(routed.study_uid).priority == Priority.EMERGENCY


def test_mis_flag_before_and_after_arrival(queue: TransferQueue) -> None:
    later, now, by_patient = study(5), study(6), study(7, patient=synthetic_patient(70))
    queue.remember_pathology(study_uid=later.study_uid, source="mis")
    accept_all(queue, now)
    assert queue.mark_pathology(accession=now.instances[0].AccessionNumber, source="mis") == [now.study_uid]
    assert queue.mark_pathology(patient_id=by_patient.patient_id, source="mis") == []  # nothing held yet
    accept_all(queue, later)
    accept_all(queue, by_patient)
    for uid in (later.study_uid, now.study_uid, by_patient.study_uid):
        entry = queue.study(uid)
        assert entry.state == StudyState.QUEUED and entry.pathology
    assert types(queue) == ["TransferQueued"] * 3
    # all given criteria must match: a flag naming this patient and another accession matches nothing
    other = study(8, patient=synthetic_patient(70))
    accept_all(queue, other)  # the patient's flag above already covers it
    assert queue.study(other.study_uid).state == StudyState.QUEUED
    lone = study(9)
    accept_all(queue, lone)
    assert queue.mark_pathology(patient_id=lone.patient_id, accession="NOPE", source="mis") == []
    assert queue.study(lone.study_uid).state == StudyState.LOCAL
    with pytest.raises(ValueError, match="needs a StudyInstanceUID"):
        queue.mark_pathology(source="mis")


def test_mis_flags_count_only_when_the_rules_say_so(tmp_path: Path, clock: Clock) -> None:
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock, rules=Rules(pathology_marks=("private", "sr")))
    s = study(5)
    accept_all(queue, s)
    assert queue.mark_pathology(study_uid=s.study_uid, source="mis") == []
    assert queue.study(s.study_uid).state == StudyState.LOCAL


def test_an_sr_with_a_pathology_finding_makes_its_study_eligible(queue: TransferQueue) -> None:
    s = study(10)
    accept_all(queue, s)
    queue.accept(sr_report(s, ("SCT", "17621005")), source="mis")  # "Normal": stays local
    assert queue.study(s.study_uid).state == StudyState.LOCAL
    queue.accept(changed(sr_report(s, ("SCT", "263654008")), "amended"), source="mis")  # "Abnormal"
    entry = queue.study(s.study_uid)
    assert entry.state == StudyState.QUEUED and entry.pathology and entry.instances == 4
    [(_, payload)] = events(queue)
    assert payload["instances"] == 4 and payload["pathology"] is True


def test_bundled_files_are_held_and_the_one_cami_would_refuse_is_held_back(queue: TransferQueue) -> None:
    for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "rtplan.dcm"):
        held = queue.accept(bundled(name), source="folder")
        assert held.path.read_bytes() == bundled(name).read_bytes()
        assert held.sha256 == hashlib.sha256(bundled(name).read_bytes()).hexdigest()
        assert queue.study(held.study_instance_uid).state == StudyState.LOCAL
    assert "ProcedureCode" in queue.missing(held.study_instance_uid)  # reported, not blocking
    sr = queue.accept(bundled("test-SR.dcm"), source="folder")  # no PatientID: CAMI refuses it
    assert queue.study(sr.study_instance_uid).state == StudyState.LOCAL  # not eligible: no event
    assert events(queue) == []
    entry = queue.send_now(sr.study_instance_uid, emergency=False)
    assert entry.state == StudyState.HELD
    assert entry.held_reason == (
        f"PatientID (0010,0020) is missing: regional rules require a unique patient ID (SOPInstanceUID"
        f" {sr.sop_instance_uid})"
    )
    (_, queued), (kind, failed) = events(queue)
    assert kind == "TransferFailed" and failed["will_retry"] is False and failed["error"] == entry.held_reason
    assert failed["transfer_id"] == queued["transfer_id"]
    assert queue.next_study(T0, window_open=True) is None  # held: not retried


def test_bytes_that_are_not_a_dicom_object_are_refused(queue: TransferQueue) -> None:
    with pytest.raises(ValueError, match="not a DICOM Part-10 file"):
        queue.accept(b"hello" * 100, source="folder")
    with pytest.raises(ValueError, match="declares 8192 bytes"):
        queue.accept(bundled("MR_truncated.dcm"), source="folder")
    no_uid = copy.deepcopy(study(1).instances[0])
    del no_uid.SOPInstanceUID
    with pytest.raises(ValueError, match=r"SOPInstanceUID .* is missing"):
        queue.accept(part10_bytes(no_uid), source="folder")
    assert queue.studies() == [] and list((queue.data_dir / "spool").iterdir()) == []


def test_an_object_with_hostile_uids_is_spooled_inside_the_spool_and_held(queue: TransferQueue) -> None:
    hostile = copy.deepcopy(study(61, pathology=True).instances[0])
    hostile.StudyInstanceUID = "../../../../tmp/evil"
    hostile.SOPInstanceUID = "../x"
    hostile.file_meta.MediaStorageSOPInstanceUID = "1.2.3"
    held = queue.accept(part10_bytes(hostile), source="router")
    spool = (queue.data_dir / "spool").resolve()
    assert held.path.resolve().parent.parent == spool and held.path.name.startswith("x")
    entry = queue.study("../../../../tmp/evil")
    assert entry.state == StudyState.HELD
    assert entry.held_reason is not None and entry.held_reason.startswith(
        "StudyInstanceUID (0020,000D) is not a valid UID"
    )


# -- hard rules ----------------------------------------------------------------------------------------
def test_a_study_failing_the_hard_rules_is_held_then_released_by_a_good_replacement(queue: TransferQueue) -> None:
    s = study(11, pathology=True)
    good = files(s)
    bad = copy.deepcopy(s.instances[1])
    bad.PatientID = "A\\B"  # several values: CAMI refuses it
    queue.accept(good[0], source="router")
    queue.accept(part10_bytes(bad), source="router")
    entry = queue.study(s.study_uid)
    assert entry.state == StudyState.HELD
    assert entry.held_reason is not None and entry.held_reason.startswith("PatientID (0010,0020) is invalid")
    assert [(t, p.get("will_retry")) for t, p in events(queue)] == [("TransferQueued", None), ("TransferFailed", False)]
    queue.accept(good[2], source="router")  # more instances: still held, no new event
    assert queue.study(s.study_uid).state == StudyState.HELD and len(events(queue)) == 2
    queue.accept(good[1], source="router")  # the corrected object replaces the refused one
    entry = queue.study(s.study_uid)
    assert entry.state == StudyState.QUEUED and entry.held_reason is None
    assert types(queue)[-1] == "TransferQueued"
    _, instances = queue.start(s.study_uid)
    assert sorted(i.sha256 for i in instances) == sorted(hashlib.sha256(d).hexdigest() for d in good)


def test_requeue_sends_the_rest_and_leaves_the_refused_object_here(queue: TransferQueue) -> None:
    s = study(12, pathology=True)
    data = files(s)
    bad = copy.deepcopy(s.instances[0])
    del bad.PatientID
    queue.accept(part10_bytes(bad), source="router")
    queue.accept(data[1], source="router")
    assert queue.study(s.study_uid).state == StudyState.HELD
    assert queue.requeue() == [s.study_uid]
    assert queue.study(s.study_uid).state == StudyState.QUEUED
    _, instances = queue.start(s.study_uid)
    assert [i.sha256 for i in instances] == [hashlib.sha256(data[1]).hexdigest()]
    done = queue.committed(s.study_uid, [i.sop_instance_uid for i in instances], duration_ms=5)
    assert done.state == StudyState.DELIVERED


# -- full import on request ----------------------------------------------------------------------------
def test_full_import_by_patient_including_studies_arriving_later(queue: TransferQueue) -> None:
    patient = synthetic_patient(40)
    first, second, later = study(13, patient=patient), study(14, patient=patient), study(15, patient=patient)
    stranger = study(16)
    for s in (first, second, stranger):
        accept_all(queue, s)
    queued = queue.request_full_import("req-1", patient_id=patient.patient_id)
    assert sorted(queued) == sorted([first.study_uid, second.study_uid])
    assert queue.request_full_import("req-1", patient_id=patient.patient_id) == []  # idempotent
    accept_all(queue, later)
    for s in (first, second, later):
        entry = queue.study(s.study_uid)
        assert entry.state == StudyState.QUEUED and entry.full_import and entry.request_id == "req-1"
        assert entry.priority == Priority.SCHEDULED and not entry.pathology
    assert queue.study(stranger.study_uid).state == StudyState.LOCAL
    payloads = [p for t, p in events(queue)]
    assert len(payloads) == 3 and all(p["full_import"] and p["request_id"] == "req-1" for p in payloads)


def test_full_import_of_one_study_urgent_before_it_arrives(queue: TransferQueue) -> None:
    s, other = study(17), study(18)
    assert queue.request_full_import("req-2", study_uid=s.study_uid, urgent=True) == []
    accept_all(queue, other)
    accept_all(queue, s)
    entry = queue.study(s.study_uid)
    assert entry.state == StudyState.QUEUED and entry.priority == Priority.EMERGENCY and entry.request_id == "req-2"
    assert queue.study(other.study_uid).state == StudyState.LOCAL
    with pytest.raises(ValueError, match="names a StudyInstanceUID or a PatientID"):
        queue.request_full_import("req-3")


def test_a_request_for_a_delivered_study_sends_nothing_again(queue: TransferQueue) -> None:
    s = study(19, pathology=True)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    queue.committed(s.study_uid, [i.sop_instance_uid for i in instances], duration_ms=1)
    before = len(events(queue))
    assert queue.request_full_import("req-4", study_uid=s.study_uid) == []
    assert queue.study(s.study_uid).state == StudyState.DELIVERED and len(events(queue)) == before


# -- cami agent send / requeue ----------------------------------------------------------------------------
def test_send_now(queue: TransferQueue, clock: Clock) -> None:
    plain, urgent = study(20), study(21)
    accept_all(queue, plain)
    accept_all(queue, urgent)
    assert queue.send_now(plain.study_uid, emergency=False).state == StudyState.QUEUED
    entry = queue.send_now(urgent.study_uid, emergency=True)
    assert entry.state == StudyState.QUEUED and entry.priority == Priority.EMERGENCY
    with pytest.raises(KeyError):
        queue.send_now("1.2.3.999", emergency=False)
    # a study waiting for its retry goes now
    queue.start(plain.study_uid)
    queue.failed(plain.study_uid, "link down", will_retry=True, retry_at=clock.now + timedelta(hours=1))
    assert queue.send_now(plain.study_uid, emergency=False).state == StudyState.QUEUED
    assert queue.next_study(clock.now, window_open=False) == queue.study(urgent.study_uid)


def test_requeue_one_or_all(queue: TransferQueue, clock: Clock) -> None:
    a, b = study(22, pathology=True), study(23, pathology=True)
    accept_all(queue, a)
    accept_all(queue, b)
    queue.start(a.study_uid)
    queue.failed(a.study_uid, "CAMI refused the association", will_retry=False, retry_at=None)
    queue.start(b.study_uid)
    queue.failed(b.study_uid, "timeout", will_retry=True, retry_at=clock.now + timedelta(days=1))
    assert queue.study(a.study_uid).state == StudyState.HELD
    accept_all(queue, a)  # the same objects again: a failed hold is not lifted by arrivals
    assert queue.study(a.study_uid).state == StudyState.HELD
    held_transfer, retry_transfer = queue.study(a.study_uid).transfer_id, queue.study(b.study_uid).transfer_id
    assert queue.requeue(a.study_uid) == [a.study_uid]
    requeued = queue.study(a.study_uid)
    # the held transfer failed for good: a new one, counted from the first attempt
    assert requeued.state == StudyState.QUEUED and requeued.transfer_id != held_transfer and requeued.attempt == 0
    assert events(queue)[-1] == ("TransferQueued", {**events(queue)[-1][1], "transfer_id": requeued.transfer_id})
    assert queue.requeue() == [b.study_uid]
    waiting = queue.study(b.study_uid)
    # the retrying transfer goes now, as the same transfer
    assert waiting.state == StudyState.QUEUED and waiting.next_attempt_at is None
    assert waiting.transfer_id == retry_transfer and waiting.attempt == 1
    assert queue.requeue("1.2.3.999") == [] and queue.requeue(a.study_uid) == []  # unknown, not held


# -- the order of sending ----------------------------------------------------------------------------------
def test_next_study_emergency_first_scheduled_only_in_the_window_retry_time_respected(
    queue: TransferQueue, clock: Clock
) -> None:
    old, young = study(24, pathology=True), study(25, pathology=True)
    accept_all(queue, old)
    clock.advance(minutes=1)
    accept_all(queue, young)
    clock.advance(minutes=1)
    urgent = study(26, emergency=True)
    accept_all(queue, urgent)
    now = clock.now
    assert queue.next_study(now, window_open=False) == queue.study(urgent.study_uid)
    assert queue.next_study(now, window_open=True) == queue.study(urgent.study_uid)  # ahead of older ones
    queue.start(urgent.study_uid)
    assert queue.next_study(now, window_open=False) is None  # the window is closed for scheduled ones
    assert queue.next_study(now, window_open=True) == queue.study(old.study_uid)  # oldest first
    queue.start(old.study_uid)
    queue.failed(old.study_uid, "link down", will_retry=True, retry_at=now + timedelta(minutes=10))
    assert queue.next_study(now, window_open=True) == queue.study(young.study_uid)
    queue.start(young.study_uid)
    assert queue.next_study(now + timedelta(minutes=9), window_open=True) is None
    assert queue.next_study(now + timedelta(minutes=10), window_open=True) == queue.study(old.study_uid)
    # an emergency waiting for its retry waits too
    queue.failed(urgent.study_uid, "link down", will_retry=True, retry_at=now + timedelta(minutes=5))
    assert queue.next_study(now, window_open=False) is None
    assert queue.next_study(now + timedelta(minutes=5), window_open=False) == queue.study(urgent.study_uid)


def test_scheduled_for_is_the_next_window_opening(
    tmp_path: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TZ", "UTC")  # the windows are in the machine's local time
    time.tzset()
    try:
        queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock, windows=[parse_window("daily 20:00-07:00")])
        accept_all(queue, study(27, pathology=True))
        accept_all(queue, study(28, emergency=True))
    finally:
        monkeypatch.undo()
        time.tzset()
    (_, scheduled), (_, urgent) = events(queue)
    assert scheduled["scheduled_for"] == T0.replace(hour=20) and urgent["scheduled_for"] is None


# -- delivery: resume, completion, failures ----------------------------------------------------------------
def test_resume_after_a_broken_link_and_only_the_delta_after_delivery(queue: TransferQueue, clock: Clock) -> None:
    s = study(29, instances=4, pathology=True)
    accept_all(queue, s)
    entry, instances = queue.start(s.study_uid)
    assert entry.state == StudyState.SENDING and entry.attempt == 1 and len(instances) == 4
    assert not any(i.sent or i.committed for i in instances)
    for held in instances[:2]:
        queue.instance_sent(held.sop_instance_uid)
    retry_at = clock.now + timedelta(seconds=30)
    failed = queue.failed(s.study_uid, "connection reset by peer", will_retry=True, retry_at=retry_at)
    assert failed.state == StudyState.RETRY and failed.next_attempt_at == retry_at
    assert failed.last_error == "connection reset by peer"
    entry, again = queue.start(s.study_uid)
    assert entry.attempt == 2 and entry.transfer_id == failed.transfer_id
    assert [(i.sop_instance_uid, i.sent) for i in again] == [
        (i.sop_instance_uid, n < 2) for n, i in enumerate(instances)
    ]
    done = queue.committed(s.study_uid, [i.sop_instance_uid for i in again], duration_ms=1234)
    assert done.state == StudyState.DELIVERED and done.delivered_at == clock.now
    kinds = types(queue)
    assert kinds == ["TransferQueued", "TransferStarted", "TransferFailed", "TransferStarted", "TransferCompleted"]
    failed_payload = events(queue)[2][1]
    assert failed_payload["instances_sent"] == 2 and failed_payload["next_attempt_at"] == retry_at
    completed = events(queue)[-1][1]
    assert completed == {
        "transfer_id": entry.transfer_id,
        "StudyInstanceUID": s.study_uid,
        "attempt": 2,
        "instances_sent": 4,
        "bytes_sent": sum(i.size for i in instances),
        "duration_ms": 1234,
    }
    # a new instance after delivery: a new transfer of that instance only
    extra = another_instance(s, 1)
    queue.accept(extra, source="router")
    entry = queue.study(s.study_uid)
    assert entry.state == StudyState.QUEUED and entry.transfer_id != done.transfer_id and entry.attempt == 0
    assert events(queue)[-1][1]["instances"] == 1
    _, delta = queue.start(s.study_uid)
    assert [i.sha256 for i in delta] == [hashlib.sha256(extra).hexdigest()]
    assert queue.committed(s.study_uid, [delta[0].sop_instance_uid], duration_ms=1).state == StudyState.DELIVERED


def test_an_instance_arriving_during_the_transfer_goes_in_the_next_one(queue: TransferQueue) -> None:
    s = study(30, pathology=True)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    queue.accept(another_instance(s, 2), source="router")
    assert queue.study(s.study_uid).state == StudyState.SENDING
    entry = queue.committed(s.study_uid, [i.sop_instance_uid for i in instances], duration_ms=10)
    assert entry.state == StudyState.QUEUED
    assert types(queue)[-2:] == ["TransferCompleted", "TransferQueued"]
    assert events(queue)[-2][1]["instances_sent"] == 3
    _, delta = queue.start(s.study_uid)
    assert len(delta) == 1


def test_partial_commitment_stays_sending_until_the_failure_is_reported(queue: TransferQueue) -> None:
    s = study(31, pathology=True)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    for held in instances:
        queue.instance_sent(held.sop_instance_uid)
    entry = queue.committed(s.study_uid, [instances[0].sop_instance_uid], duration_ms=1)
    assert entry.state == StudyState.SENDING and "TransferCompleted" not in types(queue)
    queue.failed(s.study_uid, "hash mismatch", will_retry=True, retry_at=None, resend=[instances[1].sop_instance_uid])
    _, again = queue.start(s.study_uid)
    # the committed one is not sent again; the mismatched one is resent; the third only committed
    assert [(i.sop_instance_uid, i.sent) for i in again] == [
        (instances[1].sop_instance_uid, False),
        (instances[2].sop_instance_uid, True),
    ]


def test_failed_without_retry_is_held_and_never_returned(queue: TransferQueue, clock: Clock) -> None:
    s = study(32, pathology=True)
    accept_all(queue, s)
    queue.start(s.study_uid)
    entry = queue.failed(s.study_uid, "CAMI refused: 0xA900", will_retry=False, retry_at=None)
    assert entry.state == StudyState.HELD and entry.held_reason == "CAMI refused: 0xA900"
    assert queue.next_study(clock.now + timedelta(days=365), window_open=True) is None
    (kind, payload) = events(queue)[-1]
    assert kind == "TransferFailed" and payload["will_retry"] is False and payload["next_attempt_at"] is None


def test_recover_puts_sending_back_to_queued(tmp_path: Path, clock: Clock) -> None:
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    s = study(33, pathology=True)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    queue.instance_sent(instances[0].sop_instance_uid)
    queue.close()
    reopened = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    assert reopened.recover() == [s.study_uid]
    entry, again = reopened.start(s.study_uid)
    assert entry.attempt == 2 and [i.sent for i in again] == [True, False, False]


# -- same and different bytes ----------------------------------------------------------------------------
def test_same_bytes_twice_is_a_no_op(queue: TransferQueue) -> None:
    s = study(34, pathology=True)
    data = files(s)[0]
    first = queue.accept(data, source="router")
    before = events(queue)
    assert queue.accept(data, source="folder") == first
    assert events(queue) == before and queue.study(s.study_uid).instances == 1
    assert len(list(first.path.parent.iterdir())) == 1


def test_different_bytes_for_the_same_sop_replace_and_are_sent_again(queue: TransferQueue) -> None:
    s = study(35, pathology=True)
    data = files(s)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    queue.committed(s.study_uid, [i.sop_instance_uid for i in instances], duration_ms=1)
    old = next(i for i in instances if i.sha256 == hashlib.sha256(data[0]).hexdigest())
    corrected = changed(data[0], "corrected")
    new = queue.accept(corrected, source="router")
    assert new.sop_instance_uid == old.sop_instance_uid and new.sha256 != old.sha256
    assert not new.sent and not new.committed and new.path.read_bytes() == corrected
    assert not old.path.exists()  # the replaced version is gone once the new one is recorded
    assert queue.study(s.study_uid).state == StudyState.QUEUED and queue.study(s.study_uid).instances == 3
    _, delta = queue.start(s.study_uid)
    assert [i.sha256 for i in delta] == [new.sha256]


def test_a_replacement_during_the_transfer_is_not_taken_as_committed(queue: TransferQueue) -> None:
    s = study(36, pathology=True)
    data = files(s)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    replacement = queue.accept(changed(data[0], "v2"), source="router")
    queue.instance_sent(replacement.sop_instance_uid)  # the old bytes were sent: not the new ones
    queue.committed(s.study_uid, [i.sop_instance_uid for i in instances], duration_ms=1)
    assert queue.study(s.study_uid).state == StudyState.QUEUED
    _, delta = queue.start(s.study_uid)
    assert [(i.sha256, i.sent) for i in delta] == [(replacement.sha256, False)]


# -- outbox, status, memory --------------------------------------------------------------------------------
def test_outbox_order_survives_reopening_and_events_delivered_removes_them(tmp_path: Path, clock: Clock) -> None:
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    s = study(37, pathology=True)
    accept_all(queue, s)
    _, instances = queue.start(s.study_uid)
    queue.committed(s.study_uid, [i.sop_instance_uid for i in instances], duration_ms=3)
    queue.add_event("AgentHeartbeat", queue.heartbeat_payload("agent-1", host="pacs-gw", version="1.0"))
    pending = queue.pending_events()
    assert [e.type for e in pending] == ["TransferQueued", "TransferStarted", "TransferCompleted", "AgentHeartbeat"]
    assert [e.seq for e in pending] == sorted(e.seq for e in pending)
    assert len({e.event_id for e in pending}) == 4 and all(e.occurred_at == T0 for e in pending)
    queue.close()
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    assert queue.pending_events() == pending
    assert queue.pending_events(limit=2) == pending[:2]
    queue.events_delivered(pending[1].seq)
    assert queue.pending_events() == pending[2:]
    queue.events_delivered(pending[-1].seq)
    assert queue.pending_events() == []


def test_every_outbox_payload_is_a_valid_cami_event(queue: TransferQueue, clock: Clock) -> None:
    """Each payload builds an Event with CAMI's codec, encodes and decodes unchanged."""
    sick, urgent, bad = study(38, pathology=True), study(39, emergency=True), study(40, pathology=True)
    accept_all(queue, sick)
    accept_all(queue, urgent)
    queue.request_full_import("req-9", patient_id=study(41).patient_id)
    accept_all(queue, study(41))
    refused = copy.deepcopy(bad.instances[0])
    del refused.PatientID
    queue.accept(part10_bytes(refused), source="router")
    _, instances = queue.start(sick.study_uid)
    queue.failed(sick.study_uid, "link down", will_retry=True, retry_at=clock.now + timedelta(seconds=5))
    queue.start(sick.study_uid)
    queue.committed(sick.study_uid, [i.sop_instance_uid for i in instances], duration_ms=12)
    queue.add_event("AgentHeartbeat", queue.heartbeat_payload("agent-1", link_kbps=256.0))
    seen = set()
    for event in queue.pending_events(limit=1000):
        payload = dict(event.payload)
        fields = {f["name"] for f in registry().schema(event.type).current.payload["fields"]}
        if "request_id" in payload and "request_id" not in fields:
            # TransferQueued.request_id is added to the schema by the server side of issue 11
            assert event.type == "TransferQueued" and payload.pop("request_id") == "req-9"
        built = new_event(
            event.type, payload, aggregate_id=ORG.code, source_node="agent:test", occurred_at=event.occurred_at
        )
        assert decode(encode(built)).payload == built.payload
        assert {k: v for k, v in built.payload.items() if k in payload} == payload
        seen.add((event.type, payload.get("will_retry")))
    assert seen == {
        ("TransferQueued", None),
        ("TransferStarted", None),
        ("TransferFailed", True),
        ("TransferFailed", False),
        ("TransferCompleted", None),
        ("AgentHeartbeat", None),
    }


def test_status_figures(queue: TransferQueue, clock: Clock) -> None:
    empty = queue.status()
    assert empty["queue_depth"] == 0 and empty["oldest_waiting"] is None and empty["last_delivery_at"] is None
    local, waiting, urgent, delivered, failing = (
        study(42),
        study(43, pathology=True),
        study(44, emergency=True),
        study(45, pathology=True),
        study(46, pathology=True),
    )
    for n, s in enumerate((local, waiting, urgent, delivered, failing)):
        clock.now = T0 + timedelta(minutes=n)
        accept_all(queue, s)
    _, instances = queue.start(delivered.study_uid)
    clock.now = T0 + timedelta(hours=1)
    queue.committed(delivered.study_uid, [i.sop_instance_uid for i in instances], duration_ms=1)
    queue.start(failing.study_uid)
    queue.failed(failing.study_uid, "link down", will_retry=True, retry_at=T0 + timedelta(hours=2))
    queue.start(urgent.study_uid)
    status = queue.status()
    assert status["by_state"] == {"local": 1, "queued": 1, "sending": 1, "delivered": 1, "retry": 1, "held": 0}
    assert status["queue_depth"] == 3 and status["in_flight"] == 1 and status["emergency_waiting"] == 1
    size = sum(len(d) for s in (waiting, urgent, failing) for d in files(s))
    assert status["bytes_waiting"] == size
    assert status["oldest_waiting"] == T0 + timedelta(minutes=1)
    assert status["last_delivery_at"] == T0 + timedelta(hours=1)
    assert status["retrying"] == [
        {
            "StudyInstanceUID": failing.study_uid,
            "error": "link down",
            "attempt": 1,
            "next_attempt_at": T0 + timedelta(hours=2),
        }
    ]
    assert status["held"] == [] and status["events_pending"] == len(queue.pending_events(limit=1000))
    heartbeat = queue.heartbeat_payload("agent-1")
    assert (heartbeat["queue_depth"], heartbeat["queue_bytes"], heartbeat["in_flight"]) == (3, size, 1)
    assert heartbeat["last_success_at"] == T0 + timedelta(hours=1)


def test_poller_memory_and_request_cursor_persist(tmp_path: Path, clock: Clock) -> None:
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    assert queue.seen("1.2.3") is None and queue.request_cursor() is None
    queue.remember_seen("1.2.3", "12")
    queue.remember_seen("1.2.3", "13")
    queue.set_request_cursor("c-1")
    queue.set_request_cursor("c-2")
    queue.close()
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    assert queue.seen("1.2.3") == "13" and queue.request_cursor() == "c-2"


# -- concurrency and crashes ---------------------------------------------------------------------------------
def test_concurrent_accepts_from_several_threads(queue: TransferQueue) -> None:
    studies = [study(50 + n, instances=4, pathology=n % 2 == 0) for n in range(4)]
    errors: list[BaseException] = []

    def send(s: SyntheticStudy) -> None:
        try:
            accept_all(queue, s)
            accept_all(queue, s)  # and again: duplicates change nothing
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(s,)) for s in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for n, s in enumerate(studies):
        entry = queue.study(s.study_uid)
        assert entry.instances == 4
        assert entry.state == (StudyState.QUEUED if n % 2 == 0 else StudyState.LOCAL)
    assert types(queue) == ["TransferQueued", "TransferQueued"]


def test_orphan_spool_files_are_removed_on_open(tmp_path: Path, clock: Clock) -> None:
    queue = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    held = queue.accept(files(study(60))[0], source="router")
    queue.close()
    orphan = held.path.parent / "1.2.3.4-0123456789abcdef.dcm"
    orphan.write_bytes(b"left by a crash")
    (held.path.parent / ".x.dcm.1234.tmp").write_bytes(b"half")
    (tmp_path / "spool" / "1.2.3.9").mkdir()
    (tmp_path / "spool" / "1.2.3.9" / "1.2.3.9.1-00.dcm").write_bytes(b"x")
    TransferQueue(tmp_path, ORG.code, DESTINATION, clock).close()
    assert [p.name for p in (tmp_path / "spool").rglob("*") if p.is_file()] == [held.path.name]
    assert not (tmp_path / "spool" / "1.2.3.9").exists()


def test_a_second_process_opening_the_queue_never_cleans_under_the_running_agent(tmp_path: Path, clock: Clock) -> None:
    """`cami agent status` opens the queue while the agent runs: a file the agent has written but
    whose row is not committed yet must survive; the next sole opener cleans it."""
    agent = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    s = study(62, pathology=True)
    accept_all(agent, s)
    in_flight = tmp_path / "spool" / s.study_uid / "1.2.3.4.5-0123456789abcdef.dcm"
    in_flight.write_bytes(b"written, row not yet committed")
    status = TransferQueue(tmp_path, ORG.code, DESTINATION, clock)
    assert status.status()["queue_depth"] == 1 and status.study(s.study_uid).instances == 3
    status.close()
    assert in_flight.exists()
    agent.close()
    TransferQueue(tmp_path, ORG.code, DESTINATION, clock).close()
    assert not in_flight.exists()
    assert len(list((tmp_path / "spool" / s.study_uid).iterdir())) == 3


CHILD = """
import sys
from pathlib import Path
from ingest.agent.queue import TransferQueue

queue = TransferQueue(Path(sys.argv[1]), "ORG", "CAMI")
for path in sys.argv[2:]:
    held = queue.accept(Path(path), source="router", calling_ae_title="CT1")
    print(held.sop_instance_uid, held.sha256, flush=True)
print("done", flush=True)
"""


@pytest.mark.parametrize("kill_after", [1, 17, 45])
def test_kill_9_while_accepting_loses_nothing_acknowledged(tmp_path: Path, kill_after: int) -> None:
    """A child accepts files in a loop and prints each acknowledgement; it is SIGKILLed right
    after the ``kill_after``-th, in the middle of the next accept. Reopened, the queue holds every
    acknowledged object intact, no row points to a missing file and no file is left without a row."""
    source = tmp_path / "in"
    source.mkdir()
    paths: list[Path] = []
    versions: dict[str, list[str]] = {}
    for n in range(2):
        s = study(70 + n, instances=12, pathology=n == 0)
        for data in files(s):
            for version, blob in enumerate((data, changed(data, "second version"))):
                path = source / f"{len(paths):03d}-{version}.dcm"
                path.write_bytes(blob)
                paths.append(path)
    # first versions, then the second versions of the same objects (replacements)
    paths.sort(key=lambda p: (p.name[-5], p.name))
    for path in paths:
        held_uid = _sop_uid(path)
        versions.setdefault(held_uid, []).append(hashlib.sha256(path.read_bytes()).hexdigest())
    data_dir = tmp_path / "agent"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(data_dir), *map(str, paths)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    acknowledged: dict[str, str] = {}
    for lines, line in enumerate(child.stdout, start=1):
        sop, sha = line.split()
        acknowledged[sop] = sha
        if lines == kill_after:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    # straight after the crash, before the queue cleans up: every row's file exists and is intact
    db = sqlite3.connect(data_dir / "agent.db")
    rows = db.execute("SELECT sop_uid, path, sha256, size FROM instances").fetchall()
    db.close()
    for sop, path, sha, size in rows:
        data = (data_dir / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha and len(data) == size, sop

    queue = TransferQueue(data_dir, "ORG", "CAMI")
    held = {i.sop_instance_uid: i for s in queue.studies() for i in queue.instances(s.study_instance_uid)}
    for sop, sha in acknowledged.items():
        assert sop in held, f"acknowledged {sop} lost"
        order = versions[sop]
        # the acknowledged version, or a later one whose commit the kill overtook
        assert order.index(held[sop].sha256) >= order.index(sha)
        assert hashlib.sha256(held[sop].path.read_bytes()).hexdigest() == held[sop].sha256
    files_on_disk = {p for p in (data_dir / "spool").rglob("*") if p.is_file()}
    assert files_on_disk == {i.path for i in held.values()}  # no orphan file, no missing file
    # the pathology study was queued exactly once, whatever the moment of the kill
    queued = [e for e in queue.pending_events(limit=1000) if e.type == "TransferQueued"]
    assert len(queued) == len({e.payload["StudyInstanceUID"] for e in queued}) <= 1


def _sop_uid(path: Path) -> str:
    from pydicom import dcmread

    return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_the_package_is_checked_before_it_goes_and_what_it_lacks_is_reported(queue: TransferQueue) -> None:
    incomplete = study(91, pathology=True, incomplete=("PatientBirthDate", "ProcedureCode"))
    accept_all(queue, incomplete)
    complete = study(92, pathology=True)
    accept_all(queue, complete)
    # the protocol and conclusion travel as an SR of the study (from the PACS, or posted by the MIS)
    queue.accept(sr_report(complete, ("SCT", "17621005")), source="mis")
    assert set(queue.missing(incomplete.study_uid)) == set(incomplete.missing) != set()
    # (the SR made here lacks the images' performing doctor and procedure: CAMI's rules say so too)
    sr_lacks = set(queue.missing(complete.study_uid))
    for s in (incomplete, complete):
        queue.start(s.study_uid)
    started = {p["StudyInstanceUID"]: p for t, p in events(queue) if t == "TransferStarted"}
    # an attribute missing from an object, and a study without its report, are both reported
    assert set(started[incomplete.study_uid]["missing"]) == {*incomplete.missing, "Report"}
    assert set(started[complete.study_uid]["missing"]) == sr_lacks and "Report" not in sr_lacks
    # reported, not blocking: both went
    assert queue.study(incomplete.study_uid).state is StudyState.SENDING
