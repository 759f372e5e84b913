"""Browser-session and caching hardening over a running archive (issue 9, defect 12), with httpx
the way a browser or a replaying attacker would: sign-out ends the session on the server, failed
sign-ins are limited per user name and per address, responses with patient data are not cached,
no documentation page pulls scripts from another origin."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.auth import SESSION_COOKIE, add_user
from tests.support.readside import ReadSide
from tests.support.stow import ct_dataset, multipart, new_study, part10

GUESSED_USER = "dr.guess"


@pytest.fixture(scope="module")
def side(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReadSide]:
    with ReadSide.start(tmp_path_factory.mktemp("web-hardening")) as running:
        _, running.tokens[GUESSED_USER] = add_user(running.home / "users.toml", GUESSED_USER, "referring-doctor")
        yield running


def browser(side: ReadSide, address: str = "127.0.0.1") -> httpx.Client:
    """A browser-like client whose connections come from ``address`` (any 127.x.y.z on loopback)."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(base_url=side.url, transport=transport, timeout=60)


def sign_in(client: httpx.Client, side: ReadSide, user: str, token: str, **headers: str) -> httpx.Response:
    return client.post(
        "/signin", data={"user": user, "token": token, "next": "/search"}, headers={"Origin": side.url, **headers}
    )


def test_a_cookie_replayed_after_sign_out_is_refused(side: ReadSide) -> None:
    with browser(side) as client:
        assert sign_in(client, side, "ref.ivanov", side.tokens["ref.ivanov"]).status_code == 303
        cookie = str(client.cookies.get(SESSION_COOKIE))
        assert client.get("/api/session").status_code == 200
        assert client.post("/signout", headers={"Origin": side.url}).status_code == 303
    # an attacker who copied the cookie before sign-out replays it: the server ended the session
    with httpx.Client(base_url=side.url, cookies={SESSION_COOKIE: cookie}, timeout=60) as replay:
        answer = replay.get("/api/session")
        assert answer.status_code == 401 and answer.json()["error"] == "unauthorised"
        page = replay.get("/search?patient=X")
        assert page.status_code == 303 and page.headers["location"].startswith("/signin")
    # signing in again gives a new session that works
    with browser(side) as client:
        assert sign_in(client, side, "ref.ivanov", side.tokens["ref.ivanov"]).status_code == 303
        assert str(client.cookies.get(SESSION_COOKIE)) != cookie
        assert client.get("/api/session").json()["user"] == "ref.ivanov"


def test_failed_sign_ins_are_limited_per_user_name_and_per_address(side: ReadSide) -> None:
    # five wrong tokens for one user name, from one address
    with browser(side, "127.0.0.2") as client:
        for attempt in range(5):
            answer = sign_in(client, side, GUESSED_USER, f"guess-{attempt}")
            assert answer.status_code == 401, answer.text[:300]
        # the sixth is refused before the token is looked at, even the right one
        limited = sign_in(client, side, GUESSED_USER, side.tokens[GUESSED_USER])
        assert limited.status_code == 429 and "set-cookie" not in limited.headers
        assert int(limited.headers["retry-after"]) > 0
        assert 'id="signin-error"' in limited.text and "signin.too-many" in limited.text
        as_json = sign_in(client, side, GUESSED_USER, side.tokens[GUESSED_USER], Accept="application/json")
        assert as_json.status_code == 429 and as_json.json()["error"] == "too-many-attempts"
    # the same user name from another address: still limited (the name is being guessed)
    with browser(side, "127.0.0.3") as client:
        assert sign_in(client, side, GUESSED_USER, side.tokens[GUESSED_USER]).status_code == 429
        # another user from that address is not
        assert sign_in(client, side, "admin", side.tokens["admin"]).status_code == 303
    # one address trying many user names is limited too, whoever it claims to be next
    with browser(side, "127.0.0.4") as client:
        for attempt in range(5):
            assert sign_in(client, side, f"nobody-{attempt}", "wrong").status_code == 401
        assert sign_in(client, side, "admin", side.tokens["admin"]).status_code == 429
    # bearer tokens on the API are not affected
    with side.client("admin") as api:
        assert api.get("/api/session").status_code == 200


def test_responses_with_patient_data_are_not_cached(side: ReadSide) -> None:
    study = new_study()
    ds = ct_dataset(study)
    body, content_type = multipart([part10(ds)])
    with side.client("okb-pacs") as modality:
        stored = modality.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type})
        assert stored.status_code == 200, stored.text
    side.wait_indexed(study, 1)
    series, instance = str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)
    base = f"/dicomweb/studies/{study}"
    reads = {
        "qido": (f"/dicomweb/studies?StudyInstanceUID={study}", {}),
        "metadata": (f"{base}/metadata", {}),
        "instance": (
            f"{base}/series/{series}/instances/{instance}",
            {"Accept": "multipart/related; type=application/dicom"},
        ),
        "reports": (f"/api/studies/{study}/reports", {}),
        "search page": ("/search?patient=P-1001", {}),
    }
    with side.client("dr.petrov") as doctor:
        for what, (path, headers) in reads.items():
            answer = doctor.get(path, headers=headers)
            assert answer.status_code == 200, (what, answer.status_code, answer.text[:300])
            assert answer.headers.get("cache-control") == "no-store", (what, dict(answer.headers))
        refused = doctor.get(f"{base}/series/{series}/instances/1.2.3.999")
        assert refused.headers.get("cache-control") == "no-store"
        # a rendered frame is a picture of the patient too: only the browser that was served it keeps
        # it (private: no proxy), and only for the session or token it was served to (Vary)
        rendered = doctor.get(f"{base}/series/{series}/instances/{instance}/rendered", headers={"Accept": "image/png"})
        assert rendered.status_code == 200
        control = {d.strip() for d in rendered.headers["cache-control"].split(",")}
        assert "private" in control and "public" not in control, rendered.headers
        assert {"Cookie", "Authorization"} <= {v.strip() for v in rendered.headers["vary"].split(",")}
    # the static assets carry no patient data and may be cached: for a year under the page's
    # fingerprinted URL, revalidated under any other
    with httpx.Client(base_url=side.url, timeout=60) as anonymous:
        script = anonymous.get("/static/cami.js")
        assert script.status_code == 200 and script.headers["cache-control"] == "no-cache"
        page = anonymous.get("/signin")
        (linked,) = re.findall(r'src="(/static/cami\.js\?v=[0-9a-f]{12})"', page.text)
        pinned = anonymous.get(linked)
        assert pinned.content == script.content
        assert pinned.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert anonymous.get("/static/cami.js?v=000000000000").headers["cache-control"] == "no-cache"


def test_text_is_compressed_and_pictures_are_not(side: ReadSide) -> None:
    with httpx.Client(base_url=side.url, timeout=60) as anonymous:
        for path in ("/static/cami.js", "/static/cami.css", "/signin", "/openapi.json"):
            plain = anonymous.get(path, headers={"Accept-Encoding": "identity"})
            packed = anonymous.get(path, headers={"Accept-Encoding": "gzip"})
            assert plain.headers.get("content-encoding") is None, path
            assert packed.headers["content-encoding"] == "gzip", path
            # httpx decodes the body: the same bytes arrive, in a fraction of the size on the wire
            assert packed.content == plain.content
            assert int(packed.headers["content-length"]) < 0.6 * len(plain.content), path
    study = new_study()
    ds = ct_dataset(study)
    body, content_type = multipart([part10(ds)])
    with side.client("okb-pacs") as modality:
        assert (
            modality.post("/dicomweb/studies", content=body, headers={"Content-Type": content_type}).status_code == 200
        )
    side.wait_indexed(study, 1)
    base = f"/dicomweb/studies/{study}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
    with side.client("dr.petrov") as doctor:
        for path, accept in ((base + "/rendered", "image/png"), (base, "multipart/related; type=application/dicom")):
            answer = doctor.get(path, headers={"Accept": accept, "Accept-Encoding": "gzip"})
            assert answer.status_code == 200 and answer.headers.get("content-encoding") is None, path


def test_no_documentation_pages_that_load_third_party_scripts(side: ReadSide) -> None:
    with httpx.Client(base_url=side.url, timeout=60) as anonymous:
        for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
            answer = anonymous.get(path)
            assert answer.status_code == 404, (path, answer.text[:300])
            assert "cdn" not in answer.text.lower()
        spec = anonymous.get("/openapi.json")
        assert spec.status_code == 200 and "/dicomweb/studies" in spec.json()["paths"]


def test_the_revocation_list_survives_a_restart(tmp_path: Path) -> None:
    from api.auth import RevokedSessions

    path = tmp_path / "sessions.db"
    revoked = RevokedSessions(path)
    revoked.revoke("session-a", expires=2_000, now=1_000)
    revoked.revoke("session-old", expires=1_500, now=1_000)
    revoked.close()
    again = RevokedSessions(path)
    assert again.is_revoked("session-a") and not again.is_revoked("session-b")
    again.revoke("session-c", expires=3_000, now=1_600)  # prunes what expired by now
    assert not again.is_revoked("session-old") and again.is_revoked("session-a")
    again.close()
