"""The browser side over a running archive, driven with httpx the way a browser would: sign-in
form, session cookie, the MIS study URL, the search page, role refusals and access records."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from api.auth import (
    SESSION_COOKIE,
    SESSION_TTL_SECONDS,
    UserDirectory,
    add_user,
    issue_session,
    session_key,
    session_user,
)
from tests.support.readside import ORG, ORG_B, ReadSide
from tests.support.scenes import CONCLUSION, OTHER_PATIENT, PATIENT, PROTOCOL, Scene, build_scene, study_url


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scene]:
    built = build_scene(tmp_path_factory.mktemp("study-page"))
    yield built
    built.side.stop()


@contextmanager
def signed_in(side: ReadSide, user: str) -> Iterator[httpx.Client]:
    """A cookie-carrying client signed in through the form, as a browser does."""
    with httpx.Client(base_url=side.url, timeout=60) as client:
        answer = client.post(
            "/signin", data={"user": user, "token": side.tokens[user], "next": "/search"}, headers={"Origin": side.url}
        )
        assert answer.status_code == 303, answer.text
        assert client.cookies.get(SESSION_COOKIE)
        yield client


def page_data(response: httpx.Response) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="cami-data">(.*?)</script>', response.text, re.S)
    assert match, response.text[:500]
    return dict(json.loads(match.group(1)))


def seen(side: ReadSide) -> set[str]:
    """The ids of the RecordAccessed events so far (the log's partitions interleave, so no index)."""
    return {e.envelope.event_id for e in side.accesses()}


def new_accesses(side: ReadSide, before: set[str]) -> list[dict[str, Any]]:
    """The RecordAccessed events since ``before`` (payload plus who)."""
    return [
        {**e.payload, "actor": e.envelope.actor.user, "role": e.envelope.actor.role}
        for e in side.accesses()
        if e.envelope.event_id not in before
    ]


# -- sign-in and the session cookie ------------------------------------------------------------
def test_study_url_without_session_goes_to_sign_in_and_back(scene: Scene) -> None:
    side = scene.side
    url = study_url(PATIENT, scene.study)
    with httpx.Client(base_url=side.url, timeout=60) as browser:
        first = browser.get(url)
        assert first.status_code == 303
        target = urlsplit(first.headers["location"])
        assert target.path == "/signin" and parse_qs(target.query)["next"] == [url]
        form = browser.get(first.headers["location"])
        assert form.status_code == 200 and 'name="token"' in form.text
        assert page_data(form)["next"] == url
        signin = browser.post(
            "/signin",
            data={"user": "ref.ivanov", "token": side.tokens["ref.ivanov"], "next": url},
            headers={"Origin": side.url},
        )
        assert signin.status_code == 303 and signin.headers["location"] == url
        cookie = signin.headers["set-cookie"]
        assert cookie.startswith(f"{SESSION_COOKIE}=")
        attributes = {a.strip().split("=")[0].lower(): a for a in cookie.split(";")[1:]}
        assert "httponly" in attributes and attributes["samesite"].strip().lower() == "samesite=strict"
        assert attributes["max-age"].strip() == "Max-Age=43200" and attributes["path"].strip() == "Path=/"
        page = browser.get(url)
        assert page.status_code == 200, page.text[:300]
        assert page_data(page)["patient"]["id"] == PATIENT
    key = side.home / "session.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_wrong_credentials_give_the_form_again_and_no_cookie(scene: Scene) -> None:
    side = scene.side
    with httpx.Client(base_url=side.url, timeout=60) as browser:
        for user, token in (("dr.petrov", "not-a-token"), ("ref.ivanov", side.tokens["dr.petrov"]), ("", "")):
            answer = browser.post("/signin", data={"user": user, "token": token}, headers={"Origin": side.url})
            assert answer.status_code in (400, 401)
            assert "set-cookie" not in answer.headers
            assert 'id="signin-error"' in answer.text and side.tokens["dr.petrov"] not in answer.text
        foreign = browser.post(
            "/signin",
            data={"user": "dr.petrov", "token": side.tokens["dr.petrov"]},
            headers={"Origin": "http://evil.example"},
        )
        assert foreign.status_code == 403 and "set-cookie" not in foreign.headers
        # only paths on this site are followed after sign-in (no open redirect)
        away = browser.post(
            "/signin",
            data={"user": "dr.petrov", "token": side.tokens["dr.petrov"], "next": "//evil.example/x"},
            headers={"Origin": side.url},
        )
        assert away.status_code == 303 and away.headers["location"] == "/search"


def test_the_cookie_authenticates_reads_only_and_sign_out_ends_it(scene: Scene) -> None:
    side = scene.side
    with signed_in(side, "dr.petrov") as browser:
        me = browser.get("/api/session")
        assert me.status_code == 200 and me.json()["user"] == "dr.petrov" and me.json()["role"] == "radiologist"
        reports = browser.get(f"/api/studies/{scene.study}/reports")
        assert reports.status_code == 200 and reports.json()["reports"][0]["status"] == "signed"
        # a write needs the bearer header: a forged cross-site form could carry the cookie
        write = browser.post("/api/reports", json={"study_instance_uid": scene.study, "protocol_text": "x"})
        assert write.status_code == 401 and write.json()["error"] == "unauthorised"
        cookie = str(browser.cookies.get(SESSION_COOKIE))
        out = browser.post("/signout", headers={"Origin": side.url})
        assert out.status_code == 303 and out.headers["location"] == "/signin"
        assert SESSION_COOKIE not in browser.cookies
        assert browser.get("/api/session").status_code == 401
    # a tampered cookie (another user's name under the old signature) is no session at all
    payload, mac = cookie.split(".")
    forged = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1] + "." + mac
    for value in (forged, "garbage", cookie + "x"):
        with httpx.Client(base_url=side.url, cookies={SESSION_COOKIE: value}, timeout=60) as browser:
            answer = browser.get("/api/session")
            assert answer.status_code == 401 and answer.json()["error"] == "unauthorised"


def test_api_errors_are_json_and_pages_are_html(scene: Scene) -> None:
    side = scene.side
    with side.client() as anonymous:
        answer = anonymous.get("/api/session")
        assert answer.status_code == 401 and answer.json() == {
            "error": "unauthorised",
            "detail": "a bearer token is required",
        }
    with httpx.Client(base_url=side.url, headers={"Authorization": "Bearer wrong"}, timeout=60) as bad:
        assert bad.get("/api/session").status_code == 401
        page = bad.get(study_url(PATIENT, scene.study))
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert PATIENT not in page.text.replace(quote(PATIENT), "")
    with side.client("analyst") as analyst:
        reports = analyst.get(f"/api/studies/{scene.study}/reports")
        assert reports.status_code == 403 and reports.json()["error"] == "forbidden"


# -- the study page -----------------------------------------------------------------------------
def test_study_page_shows_patient_study_series_report_and_priors(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    with side.client("dr.petrov") as client:
        page = client.get(study_url(PATIENT, scene.study))
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    data = page_data(page)
    patient = data["patient"]
    assert patient["id"] == patient["requested_id"] == PATIENT
    assert patient["name"] == "Кузнецова Мария Ильинична" and patient["sex"] == "F"
    assert str(patient["birth_date"]).replace("-", "") == "19720305"
    study = data["study"]
    assert study["study_uid"] == scene.study and study["study_description"] == "КТ ОГК"
    assert study["accession_number"] == "ACC-77" and study["organisations"] == [ORG]
    assert set(study["modalities"]) == {"CT", "OT"} and study["instance_count"] == 5
    assert study["report_status"] == "signed" and study["missing"] == []
    ct, multi = data["series"]
    assert [i["sop_uid"] for i in ct["instances"]] == scene.ct_sops
    assert [i["number"] for i in ct["instances"]] == [1, 2, 3, 4] and ct["modality"] == "CT"
    assert multi["modality"] == "OT" and [i["frames"] for i in multi["instances"]] == [3]
    report = data["report"]
    assert report["status"] == "signed"
    [signed] = report["reports"]
    assert signed["protocol_text"] == PROTOCOL and signed["conclusion_text"] == CONCLUSION
    assert signed["signer"] == {"code": "R-1001", "name": "Петров^Пётр"} and signed["signed_at"]
    # the patient's other studies, newest first, with links for comparison
    assert [p["study_uid"] for p in data["priors"]] == [scene.draft, scene.prior]
    assert data["priors"][1]["organisations"] == [ORG_B]
    assert data["priors"][1]["url"] == study_url(PATIENT, scene.prior)
    assert scene.other not in page.text and OTHER_PATIENT not in page.text
    # exactly one access record for the page view
    [access] = new_accesses(side, before)
    assert access["action"] == "view" and access["channel"] == "study-page" and access["outcome"] == "ok"
    assert access["PatientID"] == PATIENT and access["StudyInstanceUID"] == scene.study
    assert access["actor"] == "dr.petrov" and access["role"] == "radiologist"


def test_study_page_through_the_session_cookie(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    with signed_in(side, "ref.ivanov") as browser:
        page = browser.get(study_url(PATIENT, scene.study))
        assert page.status_code == 200
        assert page_data(page)["report"]["reports"][0]["conclusion_text"] == CONCLUSION
        assert browser.get("/static/cami.js").status_code == 200
        assert browser.get("/static/cami.css").headers["content-type"].startswith("text/css")
    [access] = new_accesses(side, before)
    assert access["actor"] == "ref.ivanov" and access["channel"] == "study-page"


def test_draft_report_is_marked_and_its_text_shown_only_to_radiologists(scene: Scene) -> None:
    side = scene.side
    with side.client("ref.ivanov") as client:
        referring = page_data(client.get(study_url(PATIENT, scene.draft)))
    with side.client("dr.petrov") as client:
        radiologist = page_data(client.get(study_url(PATIENT, scene.draft)))
    assert referring["report"]["status"] == radiologist["report"]["status"] == "draft"
    assert referring["study"]["missing"] == ["Report"]
    assert referring["report"]["reports"][0]["protocol_text"] is None
    assert radiologist["report"]["reports"][0]["protocol_text"] == "Черновой протокол: КТ головного мозга."
    with side.client("admin") as client:  # an administrator does not read drafts either (api.access)
        admin = page_data(client.get(study_url(PATIENT, scene.draft)))
        none = page_data(client.get(study_url(PATIENT, scene.prior)))
    assert admin["report"]["reports"][0]["protocol_text"] is None
    assert none["report"] == {"status": "none", "reports": [], "drafts_hidden": True}


@pytest.mark.parametrize("user", ["it", "analyst", "auditor", "okb-pacs"])
def test_roles_without_images_get_a_403_page_and_a_denied_record(scene: Scene, user: str) -> None:
    side = scene.side
    before = seen(side)
    with side.client(user) as client:
        page = client.get(study_url(PATIENT, scene.study))
    assert page.status_code == 403 and page.headers["content-type"].startswith("text/html")
    for leak in ("Кузнецова", "ACC-77", PROTOCOL, scene.ct_sops[0]):
        assert leak not in page.text
    [access] = new_accesses(side, before)
    assert access["outcome"] == "denied" and access["action"] == "view" and access["channel"] == "study-page"
    assert access["StudyInstanceUID"] == scene.study and access["actor"] == user


def test_a_study_of_another_patient_is_the_same_404_as_an_unknown_one(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    with side.client("dr.petrov") as client:
        mismatch = client.get(study_url(PATIENT, scene.other))
        unknown = client.get(study_url(PATIENT, "1.2.3.4.5.6.7"))
        wrong_patient = client.get(study_url(OTHER_PATIENT, scene.study))
    for page in (mismatch, unknown, wrong_patient):
        assert page.status_code == 404 and page.headers["content-type"].startswith("text/html")
        for leak in ("Кузнецова", "Смирнов", "ACC-77", PROTOCOL, "1972"):
            assert leak not in page.text
    assert mismatch.text == unknown.text
    assert new_accesses(side, before) == []  # nothing was read


@pytest.mark.parametrize(
    "query",
    ["/study", f"/study?patient={PATIENT}", "/study?patient=SP-0001&study=not-a-uid", "/study?patient=&study=1.2.3"],
)
def test_an_incomplete_link_is_a_400_page(scene: Scene, query: str) -> None:
    with scene.side.client("dr.petrov") as client:
        page = client.get(query)
    assert page.status_code == 400 and 'data-i18n="error.400-study"' in page.text


# -- search ------------------------------------------------------------------------------------
def test_search_lists_the_patients_studies_across_organisations_newest_first(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    with side.client("ref.ivanov") as client:
        page = client.get("/search", params={"patient": PATIENT})
    assert page.status_code == 200
    results = page_data(page)["results"]
    assert [r["study_uid"] for r in results] == [scene.study, scene.draft, scene.prior]
    assert [r["study_date"] for r in results] == ["2026-11-24", "2026-01-01", "2025-03-10"]
    assert {o for r in results for o in r["organisations"]} == {ORG, ORG_B}
    assert [r["report_status"] for r in results] == ["signed", "draft", "none"]
    assert results[0]["url"] == study_url(PATIENT, scene.study)
    [access] = new_accesses(side, before)
    assert access["action"] == "query" and access["channel"] == "study-page" and access["results"] == 3
    assert json.loads(access["query"]) == {"patient": PATIENT}
    with side.client("auditor") as client:
        by_name = page_data(client.get("/search", params={"name": "Смирнов"}))["results"]
    assert [r["study_uid"] for r in by_name] == [scene.other]
    with side.client("dr.petrov") as client:
        empty = client.get("/search")
        bad = client.get("/search", params={"patient": "x" * 65})
    assert empty.status_code == 200 and page_data(empty)["results"] is None
    assert bad.status_code == 400 and page_data(bad)["problem"] == "search.bad-patient"


def test_search_is_refused_to_roles_without_patient_data(scene: Scene) -> None:
    side = scene.side
    before = seen(side)
    with side.client("analyst") as client:
        page = client.get("/search", params={"patient": PATIENT})
    assert page.status_code == 403 and "Кузнецова" not in page.text and scene.study not in page.text
    [access] = new_accesses(side, before)
    assert access["outcome"] == "denied" and access["action"] == "query"


def test_a_session_ends_on_expiry_and_when_the_user_leaves_the_users_file(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    user, token = add_user(users, "ref.sidorova", "referring-doctor")
    directory = UserDirectory(users)
    key = session_key(tmp_path)
    assert (tmp_path / "session.key").stat().st_mode & 0o777 == 0o600
    assert session_key(tmp_path) == key  # the same key on the next start
    now = time.time()
    cookie = issue_session(key, user, now)
    assert session_user(directory, key, cookie, now) == user
    assert session_user(directory, key, cookie, now + SESSION_TTL_SECONDS + 1) is None  # expired
    assert session_user(directory, session_key(tmp_path, "k" * 32), cookie, now) is None
    users.write_text(users.read_text(encoding="utf-8").replace("referring-doctor", "analyst"), encoding="utf-8")
    assert session_user(directory, key, cookie, now) is None  # the role changed: sign in again
    assert token not in cookie
