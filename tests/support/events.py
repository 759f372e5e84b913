"""Synthetic event sequences for the processing, dead-letter, replay and Faust tests, and an event
catalogue that fails on chosen events (a separate worker process imports it too)."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from projections.catalogue import EventCatalogue
from schemas.codec import decode
from schemas.events import Actor, Event, new_event
from streams import EventLog
from streams.processing import Row, Source
from streams.topics import DICOM


def synthetic_events(count: int) -> list[Event]:
    events = []
    for i in range(count):
        study = f"1.2.826.0.1.3680043.8.498.{i % 5}"
        if i % 3 == 0:
            events.append(
                new_event(
                    "RecordAccessed",
                    {"action": "view", "channel": "study-page", "StudyInstanceUID": study, "results": 1},
                    aggregate_id=study,
                    source_node="web",
                    actor=Actor("dr.petrov", "radiologist"),
                )
            )
        else:
            events.append(
                new_event(
                    "TransferStarted",
                    {"transfer_id": f"t-{i}", "StudyInstanceUID": study, "attempt": 1},
                    aggregate_id=f"org-{i % 2}",
                    source_node="agent",
                    organisation=f"org-{i % 2}",
                )
            )
    return events


ORGS = ("1.2.643.5.1.13.13.12.2.50.1001", "1.2.643.5.1.13.13.12.2.50.1002", "1.2.643.5.1.13.13.12.2.50.1003")
T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
RADIOLOGIST = Actor("dr.orlova", "radiologist")


def order_sequence(seed: int, orders: int = 4) -> list[Event]:
    """Orders the MIS placed for synthetic_sequence's studies (same accession numbers), every
    other one cancelled, the first one performed (MPPS in progress, then completed)."""
    mis = Actor("hl7:MIS@ORG", "mis")
    events: list[Event] = []
    for s in range(orders):
        placer, accession = f"PL-{seed}-{s}", f"A-{seed}-{s}"
        study = f"1.2.826.0.1.3680043.8.498.{seed}.{s + 1}"
        common = {
            "aggregate_id": placer,
            "source_node": "hl7:MIS@ORG",
            "organisation": ORGS[s % len(ORGS)],
            "actor": mis,
        }
        events.append(
            new_event(
                "OrderPlaced",
                {"placer_order_number": placer, "AccessionNumber": accession, "StudyInstanceUID": study,
                 "PatientID": f"P-{seed}-{s % 5}", "PatientName": "Кузнецова^Мария", "Modality": "CT",
                 "ScheduledStationAETitle": "CT1", "ScheduledProcedureStepStartDateTime": T0 + timedelta(hours=s),
                 "placer_application": "MIS@ORG"},
                **common,
            )
        )  # fmt: skip
        if s % 2:
            cancelled = {"placer_order_number": placer, "AccessionNumber": accession, "placer_application": "MIS@ORG"}
            events.append(new_event("OrderCancelled", cancelled, **common))
    step = f"1.2.826.0.1.3680043.8.498.{seed}.999"
    for status in ("IN PROGRESS", "COMPLETED"):
        performed = {"AffectedSOPInstanceUID": step, "PerformedProcedureStepStatus": status,
                     "AccessionNumber": f"A-{seed}-0", "number_of_series": 2, "number_of_instances": 6}  # fmt: skip
        events.append(new_event("ProcedureStepChanged", performed, aggregate_id=step, source_node="CT1"))
    return events


def synthetic_sequence(seed: int, studies: int = 8) -> list[Event]:
    """A region's worth of varied events, in the order the archive would record them."""
    events: list[Event] = []
    for s in range(studies):
        org = ORGS[s % len(ORGS)]
        study = f"1.2.826.0.1.3680043.8.498.{seed}.{s + 1}"
        patient = f"P-{seed}-{s % 5}"
        modality = ("CT", "MR", "DX", "MG", "US")[s % 5]
        at = T0 + timedelta(minutes=7 * s)
        events.append(
            new_event(
                "TransferQueued",
                {
                    "transfer_id": f"t-{seed}-{s}",
                    "StudyInstanceUID": study,
                    "instances": 6,
                    "bytes": 6 * 524_288,
                    "priority": "emergency" if s % 4 == 0 else "scheduled",
                    "destination": "CAMI",
                },
                aggregate_id=org,
                source_node="LAMI_AGENT",
                organisation=org,
                occurred_at=at,
            )
        )
        events.append(
            new_event(
                "TransferStarted",
                {"transfer_id": f"t-{seed}-{s}", "StudyInstanceUID": study, "attempt": 1},
                aggregate_id=org,
                source_node="LAMI_AGENT",
                organisation=org,
                occurred_at=at + timedelta(seconds=5),
            )
        )
        for series in range(1, 3):
            for i in range(1, 4):
                complete = s % 3 != 1
                events.append(
                    new_event(
                        "InstanceReceived",
                        {
                            "StudyInstanceUID": study,
                            "SeriesInstanceUID": f"{study}.{series}",
                            "SOPInstanceUID": f"{study}.{series}.{i}",
                            "SOPClassUID": "1.2.840.10008.5.1.4.1.1.2",
                            "TransferSyntaxUID": "1.2.840.10008.1.2.1",
                            "PatientID": patient,
                            "PatientName": ("Кузнецова^Мария^Ильинична", "Смирнов^Олег")[s % 2],
                            "PatientBirthDate": "19650412",
                            "PatientSex": ("F", "M")[s % 2],
                            "StudyDate": at.strftime("%Y%m%d"),
                            "StudyTime": at.strftime("%H%M%S"),
                            "AccessionNumber": f"A-{seed}-{s}",
                            "StudyDescription": f"{modality} study",
                            "Modality": modality,
                            "SeriesNumber": series,
                            "InstanceNumber": i,
                            "BodyPartExamined": "CHEST",
                            "PerformingPhysician": {"code": "D-0042", "name": "Орлова^Мария"}
                            if complete
                            else {"code": None, "name": None},
                            "ProcedureCodeValue": "A06.09.005" if complete else None,
                            "ProcedureCodeMeaning": "КТ органов грудной полости" if complete else None,
                            "blob": {
                                "sha256": f"{s:02x}{series:02x}{i:02x}" + "ab" * 29,
                                "size": 524_288 + i,
                                "store": "file:///blobs",
                            },
                            "pathology": s % 2 == 0,
                            "emergency": s % 4 == 0,
                            "missing": [] if complete else ["PerformingPhysician", "Procedure"],
                            "channel": "dicom",
                            "calling_ae_title": f"ORG{s % 3}_PACS",
                            "called_ae_title": "CAMI",
                        },
                        aggregate_id=study,
                        source_node=f"ORG{s % 3}_PACS",
                        organisation=org,
                        occurred_at=at + timedelta(seconds=10 + series * 3 + i),
                    )
                )
        if s % 3 == 2:
            events.append(
                new_event(
                    "InstanceRejected",
                    {
                        "reason": "MissingPatientID",
                        "status": 0xA900,
                        "error_comment": "PatientID (0010,0020) is missing",
                        "StudyInstanceUID": study,
                        "channel": "dicom",
                        "calling_ae_title": f"ORG{s % 3}_PACS",
                    },
                    aggregate_id=study,
                    source_node=f"ORG{s % 3}_PACS",
                    organisation=org,
                    occurred_at=at + timedelta(seconds=30),
                )
            )
        events.append(
            new_event(
                "TransferCompleted" if s % 5 else "TransferFailed",
                {
                    "transfer_id": f"t-{seed}-{s}",
                    "attempt": 1,
                    "instances_sent": 6,
                    "bytes_sent": 6 * 524_288,
                    "duration_ms": 4200,
                }
                if s % 5
                else {"transfer_id": f"t-{seed}-{s}", "attempt": 1, "error": "link down", "will_retry": True},
                aggregate_id=org,
                source_node="LAMI_AGENT",
                organisation=org,
                occurred_at=at + timedelta(seconds=40),
            )
        )
        if s % 2 == 0:
            report = f"r-{seed}-{s}"
            doctor = {"code": "D-0042", "name": "Орлова^Мария"}
            events.append(
                new_event(
                    "ReportDrafted",
                    {
                        "report_id": report,
                        "StudyInstanceUID": study,
                        "protocol_text": "Очаговых изменений нет.",
                        "conclusion_text": "Норма.",
                        "author": doctor,
                        "source": "api",
                    },
                    aggregate_id=study,
                    source_node="web",
                    organisation=org,
                    actor=RADIOLOGIST,
                    occurred_at=at + timedelta(hours=1),
                )
            )
            events.append(
                new_event(
                    "ReportSigned",
                    {
                        "report_id": report,
                        "StudyInstanceUID": study,
                        "protocol_text": "Очаговых изменений нет.",
                        "conclusion_text": "Норма.",
                        "signer": doctor,
                        "revision": 1,
                        "signed_at": at + timedelta(hours=2),
                        "content_sha256": "cd" * 32,
                    },
                    aggregate_id=study,
                    source_node="web",
                    organisation=org,
                    actor=RADIOLOGIST,
                    occurred_at=at + timedelta(hours=2),
                )
            )
            if s % 4 == 0:
                events.append(
                    new_event(
                        "ReportAmended",
                        {
                            "report_id": report,
                            "StudyInstanceUID": study,
                            "amendment_number": 1,
                            "reason": "уточнение",
                            "amended_by": doctor,
                            "amended_at": at + timedelta(hours=3),
                            "protocol_before": "Очаговых изменений нет.",
                            "conclusion_before": "Норма.",
                            "protocol_after": "Очаг 4 мм в S6 справа.",
                            "conclusion_after": "Контроль через 6 месяцев.",
                        },
                        aggregate_id=study,
                        source_node="web",
                        organisation=org,
                        actor=RADIOLOGIST,
                        occurred_at=at + timedelta(hours=3),
                    )
                )
        events.append(
            new_event(
                "RecordAccessed",
                {
                    "action": "view",
                    "channel": "study-page",
                    "PatientID": patient,
                    "StudyInstanceUID": study,
                    "results": 1,
                },
                aggregate_id=study,
                source_node="web",
                actor=Actor("dr.petrov", "referring"),
                occurred_at=at + timedelta(hours=4),
            )
        )
    events.append(
        new_event(
            "PatientUpdated",
            {"PatientID": f"P-{seed}-1", "PatientName": "Смирнов^Олег^Иванович", "PatientSex": "M", "source": "hl7"},
            aggregate_id=f"P-{seed}-1",
            source_node="MIS",
            organisation=ORGS[0],
            occurred_at=T0 + timedelta(days=1),
        )
    )
    events.append(
        new_event(
            "PatientsMerged",
            {"PatientID": f"P-{seed}-0", "PriorPatientID": f"P-{seed}-3", "source": "hl7"},
            aggregate_id=f"P-{seed}-0",
            source_node="MIS",
            organisation=ORGS[0],
            occurred_at=T0 + timedelta(days=1, minutes=5),
        )
    )
    return events


class FussyCatalogue(EventCatalogue):
    """The event catalogue, except that ``apply`` raises for chosen events (test only)."""

    def __init__(self, refuse: set[str]) -> None:
        self.name = f"fussy-{uuid.uuid4().hex[:8]}"
        self.refuse = refuse

    def apply(self, event: Event, source: Source) -> Sequence[Row]:
        if str(event.envelope.event_id) in self.refuse:
            raise ValueError(f"cannot apply {event.envelope.event_id}")
        return super().apply(event, source)


def received_versions(log: EventLog) -> Counter[tuple[str, int]]:
    """The InstanceReceived events in ``log``, counted by (SOPInstanceUID, version): a count above
    one is an instance recorded twice."""
    found: Counter[tuple[str, int]] = Counter()
    for partition in log.partitions(DICOM):
        offset = 0
        while records := log.read(DICOM, partition, offset, 1000):
            for event in map(decode, (r.value for r in records)):
                if event.type == "InstanceReceived":
                    found[(str(event.payload["SOPInstanceUID"]), int(event.payload["version"]))] += 1
            offset = records[-1].offset + 1
    return found
