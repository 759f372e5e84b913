"""The browser session cookie (api.auth): signed claims with an expiry checked against the
caller's clock, refused when tampered with, expired, signed under another key or for another
purpose, signed out, or not a cookie at all. Pure functions plus the SQLite revocation list."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from pathlib import Path

import pytest
from itsdangerous import URLSafeSerializer

from api.auth import (
    SESSION_TTL_SECONDS,
    RevokedSessions,
    User,
    UserDirectory,
    add_user,
    issue_session,
    session_claims,
    session_user,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_800_000_000.0
USER = User("dr.petrov", "radiologist")


def test_a_fresh_cookie_names_its_user_role_and_expiry_under_a_new_session_id() -> None:
    cookie = issue_session(KEY, USER, NOW)
    claims = session_claims(KEY, cookie, NOW)
    assert claims is not None
    assert (claims["u"], claims["r"], claims["e"]) == ("dr.petrov", "radiologist", int(NOW) + SESSION_TTL_SECONDS)
    again = session_claims(KEY, issue_session(KEY, USER, NOW), NOW)
    assert again is not None and again["i"] != claims["i"] and len(claims["i"]) >= 16


def test_a_cookie_expires_by_the_clock_it_is_given() -> None:
    cookie = issue_session(KEY, USER, NOW, ttl=60)
    assert session_claims(KEY, cookie, NOW + 59.9) is not None
    assert session_claims(KEY, cookie, NOW + 60) is None
    assert session_claims(KEY, cookie, NOW + SESSION_TTL_SECONDS) is None


def flip(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


def test_a_tampered_cookie_is_refused() -> None:
    cookie = issue_session(KEY, USER, NOW)
    payload, signature = cookie.rsplit(".", 1)
    assert session_claims(KEY, flip(cookie, 3), NOW) is None  # the claims changed
    assert session_claims(KEY, flip(cookie, len(cookie) - 3), NOW) is None  # the signature changed
    # the claims rewritten (an administrator's role, a later expiry) under the old signature
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for forged in ({**claims, "r": "administrator"}, {**claims, "e": claims["e"] + 10**6}):
        body = base64.urlsafe_b64encode(json.dumps(forged, separators=(",", ":")).encode()).rstrip(b"=").decode()
        assert session_claims(KEY, f"{body}.{signature}", NOW) is None
    assert session_claims(KEY, payload, NOW) is None  # no signature at all


def test_a_cookie_signed_under_another_key_or_for_another_purpose_is_refused() -> None:
    assert session_claims(OTHER_KEY, issue_session(KEY, USER, NOW), NOW) is None
    claims = {"i": "abcdefghijklmnopqrstuv", "u": "dr.petrov", "r": "administrator", "e": int(NOW) + 60}
    # the archive's own key, but the library's default salt and digests: a value signed for something else
    for digest in (hashlib.sha1, hashlib.sha256):
        other = URLSafeSerializer(KEY, signer_kwargs={"digest_method": digest})
        assert session_claims(KEY, other.dumps(claims), NOW) is None


@pytest.mark.parametrize(
    "cookie",
    [None, "", ".", "..", "abc", "a.b", "a.b.c", ".eJw.abc", "ключ.подпись", "\x00.\x00", "A" * 5000, "%.%"],
)
def test_garbage_is_no_session(cookie: str | None) -> None:
    assert session_claims(KEY, cookie, NOW) is None


def test_an_oversized_cookie_is_refused_before_it_is_checked() -> None:
    huge = User(secrets.token_urlsafe(4000), "radiologist")  # random: no compression shrinks it
    assert session_claims(KEY, issue_session(KEY, huge, NOW), NOW) is None


def test_properly_signed_claims_without_a_session_id_or_an_integer_expiry_are_no_session() -> None:
    from api.auth import _session_serializer

    signer = _session_serializer(KEY)
    good = {"i": "abcdefghijklmnopqrstuv", "u": "dr.petrov", "r": "radiologist", "e": int(NOW) + 60}
    assert session_claims(KEY, signer.dumps(good), NOW) == good
    for claims in ({**good, "i": ""}, {k: v for k, v in good.items() if k != "i"}, {**good, "e": "9999999999"}):
        assert session_claims(KEY, signer.dumps(claims), NOW) is None
    assert session_claims(KEY, signer.dumps(["not", "claims"]), NOW) is None


def test_a_signed_out_session_is_refused_and_the_users_other_sessions_are_not(tmp_path: Path) -> None:
    users = tmp_path / "users.toml"
    user, _ = add_user(users, "ref.sidorova", "referring-doctor")
    directory = UserDirectory(users)
    revoked = RevokedSessions(tmp_path / "sessions.db")
    try:
        first, second = issue_session(KEY, user, NOW), issue_session(KEY, user, NOW)
        assert session_user(directory, KEY, first, NOW, revoked) == user
        claims = session_claims(KEY, first, NOW)
        assert claims is not None
        revoked.revoke(claims["i"], claims["e"], NOW)
        assert session_user(directory, KEY, first, NOW, revoked) is None
        assert session_user(directory, KEY, second, NOW, revoked) == user
        assert session_user(directory, OTHER_KEY, second, NOW, revoked) is None
    finally:
        revoked.close()
