"""Regional IT reads monitoring, an auditor reads the audit trail, over HTTP, and nobody else does.

A study is stored with storescu and one object is refused (no PatientID); then regional IT's
figures must count exactly that, an auditor's history of the study must list its events in
order with intact chains (and that read is itself recorded), and other roles get 403.
"""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.uid import generate_uid

from tests.support import studies
from tests.support.readside import ORG, ROOT_UID, SENDER_AE, ReadSide


def test_monitoring_for_regional_it_and_audit_history_for_auditors(tmp_path: Path) -> None:
    with ReadSide.start(tmp_path) as side:
        study = generate_uid(prefix=ROOT_UID)
        sent = side.store_study(study, 3, patient_id="OVERSIGHT-1")
        side.wait_indexed(study, 3)
        # one object without a PatientID: refused, and counted as a rejection
        bad = studies.instance(study, generate_uid(prefix=ROOT_UID), 1, patient_id=None, size=4)
        bad_path = tmp_path / "bad.dcm"
        bad.save_as(bad_path, enforce_file_format=True)
        refused = studies.storescu("127.0.0.1", side.dicom_port, [bad_path], calling=SENDER_AE[ORG])
        assert "DataSetDoesNotMatchSOPClass" in refused.stdout + refused.stderr  # dcmtk's name for 0xA900
        size = sum(f.path.stat().st_size for f in sent)

        with side.client("it") as it:
            deadline = time.monotonic() + 30
            while True:  # until the monitoring projection has seen the refusal too
                response = it.get("/api/monitoring/organisations", params={"minutes": 30})
                assert response.status_code == 200, response.text
                rows = {r["organisation"]: r for r in response.json()["organisations"]}
                if rows.get(ORG, {}).get("rejections") == 1 or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            mine = rows[ORG]
            assert (mine["instances"], mine["studies"], mine["rejections"]) == (3, 1, 1)
            assert mine["rejections_by_reason"] == {"missing-patient-id": 1}
            # bytes are the stored objects (dcmtk's files, byte for byte)
            assert mine["bytes"] == size
            minutes = it.get(f"/api/monitoring/organisations/{ORG}/minutes", params={"minutes": 30}).json()
            assert sum(m["instances"] for m in minutes["minutes"]) == 3
            assert it.get("/api/monitoring/transfers").status_code == 200
            silent = it.get("/api/monitoring/silent-senders", params={"minutes": 1}).json()["senders"]
            assert SENDER_AE[ORG] not in {s["ae_title"] for s in silent}  # it just sent
            # regional IT sees no patient data: the audit trail is not theirs
            denied = it.get(f"/api/audit/records/{study}")
            assert denied.status_code == 403 and denied.json()["error"] == "forbidden"
            bad_org = it.get("/api/monitoring/organisations/x'--/minutes")
            assert bad_org.status_code == 400 and bad_org.json()["detail"]["parameter"] == "organisation"

        before = {e.envelope.event_id for e in side.accesses()}
        with side.client("auditor") as auditor:
            deadline = time.monotonic() + 30
            while True:
                response = auditor.get(f"/api/audit/records/{study}")
                if response.status_code == 200 and len(response.json()["entries"]) >= 3:
                    break
                assert time.monotonic() < deadline, response.text
                time.sleep(0.1)
            entries = response.json()["entries"]
            stored = [e for e in entries if e["event_type"] == "InstanceReceived"]
            assert {e["summary"].split()[2] for e in stored} == {f.sop_instance_uid for f in sent}
            assert all(len(e["entry_hash"]) == 64 for e in entries)
            assert auditor.get("/api/audit/verify", params={"record": study}).json()["ok"] is True
            assert auditor.get("/api/audit/records/no-such-record").status_code == 404
            assert auditor.get("/api/monitoring/organisations").status_code == 403  # not theirs either
        # reading the history is a read of patient data: recorded, once per successful read
        # (by event id: the log is read partition by partition, not in the order things happened)
        new = [e for e in side.accesses() if e.envelope.event_id not in before]
        views = [e for e in new if e.payload["channel"] == "api" and e.payload["outcome"] == "ok"]
        refused = [e for e in side.accesses() if e.payload["outcome"] == "denied"]
        # regional IT's refused audit read and the auditor's refused monitoring read
        assert sorted(e.envelope.actor.user for e in refused) == ["auditor", "it"]
        assert len(views) >= 1 and all(e.envelope.actor.user == "auditor" for e in views)
        assert views[-1].payload["StudyInstanceUID"] == study and views[-1].payload["PatientID"] == "OVERSIGHT-1"
        # and the monitoring the auditor was refused, as a denied access
        (refusal,) = [e for e in new if e.payload["outcome"] == "denied"]
        assert refusal.envelope.actor.user == "auditor" and "/api/monitoring/organisations" in refusal.payload["query"]

        with side.client("dr.petrov") as radiologist:
            assert radiologist.get("/api/monitoring/organisations").status_code == 403
        with side.client() as anonymous:
            response = anonymous.get("/api/audit/verify")
            assert response.status_code == 401 and "error" in response.json()
