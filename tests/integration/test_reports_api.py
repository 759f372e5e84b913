"""Reports through the real HTTP server: lifecycle, rules, server-side signing time, rebuild."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

from ingest.reports.fold import ReportStoreProjection, ReportStoreSink
from ingest.reports.store import ReportStore
from streams.processing import EmbeddedRunner
from streams.topics import REPORTS
from tests.support.stow import RunningArchive, new_study, running  # noqa: F401 (fixture)


def _create(r: RunningArchive, study: str, user: str = "dr.petrov") -> dict:
    with r.client(user) as c:
        response = c.post(
            "/api/reports",
            json={"study_instance_uid": study, "protocol_text": "КТ ОГК без контраста.", "conclusion_text": ""},
        )
    assert response.status_code == 201, response.text
    assert response.headers["location"] == f"/api/reports/{response.json()['report_id']}"
    return dict(response.json())


def test_full_lifecycle_through_http(running: RunningArchive) -> None:  # noqa: F811
    study = new_study()
    report = _create(running, study)
    rid = report["report_id"]
    assert report["status"] == "draft" and report["revision"] == 1
    assert report["author"] == {"code": "R-1001", "name": "Петров^Пётр"}
    with running.client("dr.petrov") as c:
        edited = c.put(
            f"/api/reports/{rid}",
            json={"protocol_text": "КТ ОГК.", "conclusion_text": "Очаговых изменений нет.", "revision": 1},
        )
        assert edited.status_code == 200, edited.text
        assert edited.json()["revision"] == 2
        stale = c.put(f"/api/reports/{rid}", json={"protocol_text": "x", "conclusion_text": "y", "revision": 1})
        assert stale.status_code == 409
        signed = c.post(f"/api/reports/{rid}/sign")
        assert signed.status_code == 200, signed.text
        assert signed.json()["status"] == "signed"
        assert signed.json()["signer"]["code"] == "R-1001"
        again = c.post(f"/api/reports/{rid}/sign")
        assert again.status_code == 409 and again.json()["error"] == "report-conflict"
    with running.client("admin") as c:
        amended = c.post(
            f"/api/reports/{rid}/amendments",
            json={"reason": "опечатка в заключении", "conclusion_text": "Очаговых и инфильтративных изменений нет."},
        )
    assert amended.status_code == 201, amended.text
    [amendment] = amended.json()["amendments"]
    assert amendment["before"]["conclusion_text"] == "Очаговых изменений нет."
    assert amendment["after"]["conclusion_text"] == "Очаговых и инфильтративных изменений нет."
    assert amendment["amended_by"]["name"] == "admin"
    with running.client("ref.ivanov") as c:
        got = c.get(f"/api/reports/{rid}")
        listed = c.get(f"/api/studies/{study}/reports")
        missing = c.get("/api/reports/no-such-report")
    assert got.status_code == 200
    assert got.json()["conclusion_text"] == "Очаговых и инфильтративных изменений нет."
    assert got.json()["status"] == "signed"
    assert [r["report_id"] for r in listed.json()["reports"]] == [rid]
    assert missing.status_code == 404 and missing.json()["error"] == "report-not-found"
    events = running.events(REPORTS)
    assert [e.type for e in events] == ["ReportDrafted", "ReportEdited", "ReportSigned", "ReportAmended"]
    assert all(e.envelope.aggregate_id == study for e in events)
    assert events[2].envelope.actor.user == "dr.petrov"


def test_edit_after_sign_is_refused(running: RunningArchive) -> None:  # noqa: F811
    rid = _create(running, new_study())["report_id"]
    with running.client("dr.petrov") as c:
        assert c.put(f"/api/reports/{rid}", json={"protocol_text": "p", "conclusion_text": "c"}).status_code == 200
        assert c.post(f"/api/reports/{rid}/sign").status_code == 200
        refused = c.put(f"/api/reports/{rid}", json={"protocol_text": "p2", "conclusion_text": "c2"})
    assert refused.status_code == 409
    assert refused.json()["error"] == "report-conflict"
    with running.client("dr.petrov") as c:
        assert c.get(f"/api/reports/{rid}").json()["conclusion_text"] == "c"
    assert [e.type for e in running.events(REPORTS)] == ["ReportDrafted", "ReportEdited", "ReportSigned"]


def test_amendment_by_referring_doctor_is_forbidden(running: RunningArchive) -> None:  # noqa: F811
    rid = _create(running, new_study())["report_id"]
    with running.client("dr.petrov") as c:
        c.put(f"/api/reports/{rid}", json={"protocol_text": "p", "conclusion_text": "c"})
        c.post(f"/api/reports/{rid}/sign")
        unsigned_rid = _create(running, new_study())["report_id"]
        draft_amendment = c.post(
            f"/api/reports/{unsigned_rid}/amendments", json={"reason": "r", "conclusion_text": "x"}
        )
        no_reason = c.post(f"/api/reports/{rid}/amendments", json={"conclusion_text": "x"})
    assert draft_amendment.status_code == 409
    assert no_reason.status_code == 400
    with running.client("ref.ivanov") as c:
        refused = c.post(f"/api/reports/{rid}/amendments", json={"reason": "не согласен", "conclusion_text": "x"})
        create = c.post("/api/reports", json={"study_instance_uid": new_study(), "conclusion_text": "x"})
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert create.status_code == 403
    with running.client() as c:
        assert c.get(f"/api/reports/{rid}").status_code == 401
    with running.client("it") as c:
        assert c.get(f"/api/reports/{rid}").status_code == 403
    assert "ReportAmended" not in [e.type for e in running.events(REPORTS)]


def test_signing_time_is_the_servers(running: RunningArchive) -> None:  # noqa: F811
    rid = _create(running, new_study())["report_id"]
    with running.client("dr.petrov") as c:
        c.put(f"/api/reports/{rid}", json={"protocol_text": "p", "conclusion_text": "c", "signed_at": "2001-01-01"})
        before = datetime.now(UTC)
        signed = c.post(
            f"/api/reports/{rid}/sign", json={"signed_at": "2001-01-01T00:00:00Z", "signing_time": "2001-01-01"}
        )
        after = datetime.now(UTC)
    assert signed.status_code == 200
    at = datetime.fromisoformat(signed.json()["signed_at"])
    assert before <= at <= after
    [event] = [e for e in running.events(REPORTS) if e.type == "ReportSigned"]
    assert event["signed_at"] == at
    assert before <= event.envelope.occurred_at <= after


def test_concurrent_signing_signs_once(running: RunningArchive) -> None:  # noqa: F811
    rid = _create(running, new_study())["report_id"]
    with running.client("dr.petrov") as c:
        c.put(f"/api/reports/{rid}", json={"protocol_text": "p", "conclusion_text": "c"})
    codes: list[int] = []

    def sign(user: str) -> None:
        with running.client(user) as c:
            codes.append(c.post(f"/api/reports/{rid}/sign").status_code)

    # only the draft's author signs it (README, Reports): another radiologist is refused
    sign("dr.sidorova")
    assert codes == [403]
    codes.clear()
    threads = [threading.Thread(target=sign, args=("dr.petrov",)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * 7
    assert [e.type for e in running.events(REPORTS)].count("ReportSigned") == 1


def test_rebuilt_store_equals_the_live_one(running: RunningArchive, tmp_path: Path) -> None:  # noqa: F811
    study = new_study()
    ids = [_create(running, study)["report_id"] for _ in range(3)]
    with running.client("dr.petrov") as c:
        c.put(f"/api/reports/{ids[0]}", json={"protocol_text": "p0", "conclusion_text": "c0"})
        c.post(f"/api/reports/{ids[0]}/sign")
        c.put(f"/api/reports/{ids[1]}", json={"protocol_text": "p1", "conclusion_text": "c1"})
        c.post(f"/api/reports/{ids[0]}/amendments", json={"reason": "уточнение", "protocol_text": "p0'"})
    with running.client("dr.petrov") as c:
        live = {r["report_id"]: r for r in c.get(f"/api/studies/{study}/reports").json()["reports"]}
    rebuilt_store = ReportStore(tmp_path / "rebuilt.db")
    try:
        EmbeddedRunner(
            running.archive.event_log, [(ReportStoreProjection("rebuild"), ReportStoreSink(rebuilt_store))]
        ).catch_up()
        rebuilt = {s.report_id: s.view() for s in rebuilt_store.for_study(study)}
        assert rebuilt == live
        assert rebuilt_store.all() == running.server.app.state.reports.store.all()
        assert rebuilt[ids[0]]["protocol_text"] == "p0'" and rebuilt[ids[0]]["status"] == "signed"
    finally:
        rebuilt_store.close()
