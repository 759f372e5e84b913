"""What the MPPS and worklist services refuse, as a modality (a pynetdicom SCU) meets it: each
refusal a named DICOM status, nothing recorded for it, and the service still answering after."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from streams.topics import ORDERS
from tests.support.mpps import MPPS, step
from tests.support.readside import ORG, SENDER_AE, ReadSide

WORKLIST = "1.2.840.10008.5.1.4.31"


@pytest.fixture()
def assoc(tmp_path: Path) -> Iterator[tuple[ReadSide, Association]]:
    with ReadSide.start(tmp_path) as side:
        ae = AE(ae_title=SENDER_AE[ORG])
        ae.add_requested_context(MPPS)
        ae.add_requested_context(WORKLIST)
        association = ae.associate("127.0.0.1", side.dicom_port, ae_title="CAMI")
        assert association.is_established
        try:
            yield side, association
        finally:
            association.release()


def test_mpps_refusals_are_named_statuses(assoc: tuple[ReadSide, Association]) -> None:
    side, association = assoc
    uid = generate_uid()
    unknown, _ = association.send_n_set(step("COMPLETED"), MPPS, generate_uid())
    assert unknown.Status == 0x0112  # no such instance
    not_begun, _ = association.send_n_create(step("COMPLETED"), MPPS, uid)
    assert not_begun.Status == 0x0106  # a step begins IN PROGRESS
    begun, _ = association.send_n_create(step("IN PROGRESS", Modality="CT"), MPPS, uid)
    assert begun.Status == 0x0000
    again, _ = association.send_n_create(step("IN PROGRESS"), MPPS, uid)
    assert again.Status == 0x0111  # duplicate instance
    odd, _ = association.send_n_set(step("PAUSED"), MPPS, uid)
    assert odd.Status == 0x0106
    done, _ = association.send_n_set(step("COMPLETED"), MPPS, uid)
    assert done.Status == 0x0000
    late, _ = association.send_n_set(step("DISCONTINUED"), MPPS, uid)
    assert late.Status == 0xC310  # may no longer be updated
    recorded = [e["PerformedProcedureStepStatus"] for e in side.events(ORDERS) if e.type == "ProcedureStepChanged"]
    assert recorded == ["IN PROGRESS", "COMPLETED"]  # refusals record nothing


def test_a_worklist_date_that_is_no_date_is_refused(assoc: tuple[ReadSide, Association]) -> None:
    _, association = assoc
    query = Dataset()
    item = Dataset()
    item.ScheduledProcedureStepStartDate = "2026-12-01"
    query.ScheduledProcedureStepSequence = [item]
    query.PatientName = ""
    answers = [status.Status for status, _ in association.send_c_find(query, WORKLIST)]
    assert answers == [0xC000]
    item.ScheduledProcedureStepStartDate = "20261201-20261202"
    answers = [status.Status for status, _ in association.send_c_find(query, WORKLIST)]
    assert answers == [0x0000]  # nothing scheduled, and still answering
