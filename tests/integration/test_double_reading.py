"""Double reading and second opinions through the HTTP API, as radiologists use them: a screening
study (its modality in CAMI_DOUBLE_READ) is read by two radiologists independently -- the second
cannot read the first's report before signing (403) -- a discrepancy opens an arbitration task a
third radiologist answers; a referring doctor asks for a second opinion of a specialty, a
radiologist of it accepts and answers, and the study page shows the reports side by side."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from streams.topics import REPORTS
from tests.support.readside import ORG, ORG_B, ROOT_UID, ReadSide

READERS: dict[str, dict[str, Any]] = {
    "dr.a": {"role": "radiologist", "organisation": ORG, "doctor_code": "R-2001", "doctor_name": "Альфа^Анна"},
    "dr.b": {"role": "radiologist", "organisation": ORG_B, "doctor_code": "R-2002", "doctor_name": "Бета^Борис"},
    "dr.c": {
        "role": "radiologist",
        "organisation": ORG,
        "doctor_code": "R-2003",
        "doctor_name": "Гамма^Галина",
        "specialty": "neuroradiology",
    },
}


def draft(client: httpx.Client, study: str, conclusion: str, **extra: Any) -> httpx.Response:
    body = {"study_instance_uid": study, "protocol_text": "Описание", "conclusion_text": conclusion, **extra}
    return client.post("/api/reports", json=body)


def page_data(html: str) -> dict[str, Any]:
    found = re.search(r'<script type="application/json" id="cami-data">(.*?)</script>', html, re.S)
    assert found is not None
    data: dict[str, Any] = json.loads(found.group(1))
    return data


def page_reports(client: httpx.Client, study: str, count: int) -> list[dict[str, Any]]:
    """The study page's reports once the archive index holds ``count`` of them (it folds them
    from the log a moment after they are signed)."""
    deadline = time.monotonic() + 30
    while True:
        page = client.get("/study", params={"patient": "TEST-0001", "study": study})
        assert page.status_code == 200
        reports: list[dict[str, Any]] = page_data(page.text)["report"]["reports"]
        if len(reports) >= count or time.monotonic() > deadline:
            return reports
        time.sleep(0.1)


def test_two_independent_readings_a_discrepancy_and_its_arbiter(tmp_path: Path) -> None:
    study = ROOT_UID + "880.1"
    with ReadSide.start(tmp_path, env={"CAMI_DOUBLE_READ": "CT,MG"}, users=READERS) as side:
        side.store_study(study, instances=1)
        side.wait_indexed(study, 1)
        a, b, c = side.client("dr.a"), side.client("dr.b"), side.client("dr.c")

        first = draft(a, study, "Без патологии", assessment="normal")
        assert first.status_code == 201, first.text
        assert first.json()["reading"] == "double-reading"
        assert draft(a, study, "Ещё раз").status_code == 409  # one reading per radiologist
        second = draft(b, study, "Узел 8 мм", assessment="abnormal")
        assert second.status_code == 201 and second.json()["reading"] == "double-reading"
        first_id, second_id = first.json()["report_id"], second.json()["report_id"]
        assert draft(c, study, "Третье", assessment="normal").status_code == 409  # two readings, no third

        assert a.post(f"/api/reports/{first_id}/sign").status_code == 200
        blinded = b.get(f"/api/reports/{first_id}")
        assert blinded.status_code == 403 and blinded.json()["error"] == "reading-blinded"
        listed = b.get(f"/api/studies/{study}/reports").json()["reports"]
        shown = {r["report_id"]: r for r in listed}
        assert shown[first_id] == {
            "report_id": first_id,
            "study_instance_uid": study,
            "status": "signed",
            "reading": "double-reading",
            "blinded": True,
        }
        assert shown[second_id]["conclusion_text"] == "Узел 8 мм"  # their own
        blocks = {r["report_id"]: r for r in page_reports(b, study, 2)}
        assert blocks[first_id]["blinded"] and blocks[first_id]["conclusion_text"] is None

        assert b.post(f"/api/reports/{second_id}/sign").status_code == 200
        assert b.get(f"/api/reports/{first_id}").json()["conclusion_text"] == "Без патологии"  # signed: open

        tasks = c.get(f"/api/studies/{study}/reading-tasks").json()["tasks"]
        assert [(t["kind"], t["assessments"], t["done"]) for t in tasks] == [
            ("arbitration", ["normal", "abnormal"], False)
        ]
        task = tasks[0]["task_id"]
        assert [t["task_id"] for t in c.get("/api/reading-tasks").json()["tasks"]] == [task]  # routed to dr.c
        assert a.get("/api/reading-tasks").json()["tasks"] == []  # a reader of the two: not theirs
        arbitration = {"reading": "arbitration", "request_id": task}
        assert draft(a, study, "Я прав", assessment="normal", **arbitration).status_code == 403  # a reader
        decision = draft(c, study, "Узел 8 мм, контроль через 3 мес", **arbitration)
        assert decision.status_code == 201, decision.text
        decision_id = decision.json()["report_id"]
        unsigned = c.post(f"/api/reports/{decision_id}/sign")
        assert unsigned.status_code == 422 and "assessment" in unsigned.json()["detail"]
        edited = c.put(
            f"/api/reports/{decision_id}",
            json={"protocol_text": "Описание", "conclusion_text": "Узел 8 мм", "assessment": "abnormal"},
        )
        assert edited.status_code == 200 and edited.json()["assessment"] == "abnormal"
        assert c.post(f"/api/reports/{decision_id}/sign").status_code == 200
        assert c.get(f"/api/studies/{study}/reading-tasks").json()["tasks"][0]["done"] is True
        assert c.get("/api/reading-tasks").json()["tasks"] == []  # answered

        events = [e for e in side.events(REPORTS) if e["StudyInstanceUID"] == study]
        assert [e.type for e in events if e.type == "ArbitrationRequested"] == ["ArbitrationRequested"]
        signed = {e["report_id"]: (e["reading"], e["assessment"]) for e in events if e.type == "ReportSigned"}
        assert signed == {
            first_id: ("double-reading", "normal"),
            second_id: ("double-reading", "abnormal"),
            decision_id: ("arbitration", "abnormal"),
        }


def test_a_second_opinion_of_a_specialty(tmp_path: Path) -> None:
    study = ROOT_UID + "880.2"
    with ReadSide.start(tmp_path, users=READERS) as side:  # CT is not double-read here
        side.store_study(study, instances=1)
        side.wait_indexed(study, 1)
        a, c, referring = side.client("dr.a"), side.client("dr.c"), side.client("ref.ivanov")
        primary = draft(a, study, "Очаг в левой лобной доле")
        assert primary.status_code == 201 and primary.json()["reading"] is None
        assert a.post(f"/api/reports/{primary.json()['report_id']}/sign").status_code == 200

        asked = referring.post(
            f"/api/studies/{study}/second-opinions",
            json={"to_kind": "specialty", "to": "neuroradiology", "reason": "Уточнить характер очага"},
        )
        assert asked.status_code == 201, asked.text
        request_id = asked.json()["task_id"]
        unknown_kind = {"to_kind": "hospital", "to": "x", "reason": "r"}  # neither organisation nor specialty
        assert referring.post(f"/api/studies/{study}/second-opinions", json=unknown_kind).status_code == 400
        assert [t["task_id"] for t in c.get("/api/reading-tasks").json()["tasks"]] == [request_id]
        assert a.get("/api/reading-tasks").json()["tasks"] == []  # not of the specialty
        assert a.post(f"/api/second-opinions/{request_id}/accept").status_code == 403  # not of the specialty
        accepted = c.post(f"/api/second-opinions/{request_id}/accept")
        assert accepted.status_code == 200 and accepted.json()["accepting_user"] == "dr.c"
        assert c.post(f"/api/second-opinions/{request_id}/accept").status_code == 409
        opinion = draft(c, study, "Менингиома", reading="second-opinion", request_id=request_id)
        assert opinion.status_code == 201, opinion.text
        assert c.post(f"/api/reports/{opinion.json()['report_id']}/sign").status_code == 200

        reports = page_reports(side.client("dr.petrov"), study, 2)
        assert sorted((r["reading"] or "primary", r["conclusion_text"]) for r in reports) == [
            ("primary", "Очаг в левой лобной доле"),
            ("second-opinion", "Менингиома"),
        ]
        kinds = [e.type for e in side.events(REPORTS) if e["StudyInstanceUID"] == study]
        assert {"SecondOpinionRequested", "SecondOpinionAccepted"} <= set(kinds)
