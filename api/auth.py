"""Who is calling: users from a TOML file, bearer tokens stored only as SHA-256 hashes.

The file is ``$CAMI_USERS`` (default ``$CAMI_HOME/users.toml``)::

    [[user]]
    name = "dr.petrov"
    role = "radiologist"                    # see ROLES
    organisation = "1.2.643.5.1.13.13.12.2.50.1001"
    doctor_code = "R-1001"                  # regional directory of medical staff (radiologists)
    doctor_name = "Петров^Иван^Сергеевич"   # DICOM PN form
    token_sha256 = "9f86d0..."              # SHA-256 (hex) of the bearer token; the token is never stored

``cami users add`` appends a user and prints the new token once. The file is re-read when it
changes, so users added while the archive runs can sign in at once.

**The command line on the archive's own machine.** A running ``cami serve`` writes a fresh
random token to ``$CAMI_HOME/local.token`` (mode 0600) at each start and accepts it as the user
``cami-cli`` (role administrator). ``cami status`` and ``cami audit history|verify`` use it to ask
the server when they cannot open the embedded warehouse themselves (the server holds it). Whoever
can read ``$CAMI_HOME`` can read the archive's data anyway; the reads it makes are recorded under
that user like any other.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import tomllib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from itsdangerous import BadData, URLSafeSerializer

from schemas.events import Actor
from schemas.policy import ROLES

_HEX64 = frozenset("0123456789abcdef")


class UsersFileError(ValueError):
    """The users file is unreadable or holds invalid entries (the message names the entry, not tokens)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    organisation: str | None = None
    doctor_code: str | None = None
    doctor_name: str | None = None
    #: a radiologist's specialty (e.g. neuroradiology): second opinions may be asked of it
    specialty: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role)

    def clinician(self) -> dict[str, str | None]:
        """The user as events name doctors (regional code and name; the user name if no doctor name)."""
        return {"code": self.doctor_code, "name": self.doctor_name or self.name}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


#: the running server's token for the command line on its machine (see the module's text)
LOCAL_TOKEN_FILE = "local.token"
#: who the command line on the archive's machine is, as the server records it
LOCAL_USER = User("cami-cli", "administrator")


def write_local_token(home: Path) -> str:
    """A fresh token for the command line, written to ``home``/local.token (0600); its hash."""
    token = secrets.token_urlsafe(32)
    path = home / LOCAL_TOKEN_FILE
    spare = path.with_name(path.name + ".new")
    fd = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(token + "\n")
    os.replace(spare, path)
    return token_hash(token)


def read_local_token(home: Path) -> str | None:
    """The running server's token for the command line, if one was written."""
    try:
        token = (home / LOCAL_TOKEN_FILE).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return token or None


def _clean(value: Any, what: str, index: int, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise UsersFileError(f"user #{index + 1}: missing {what!r}")
        return None
    if not isinstance(value, str):
        raise UsersFileError(f"user #{index + 1}: {what!r} must be a string")
    value = value.strip()
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise UsersFileError(f"user #{index + 1}: {what!r} contains control characters")
    if required and not value:
        raise UsersFileError(f"user #{index + 1}: {what!r} is empty")
    return value or None


def _parse(raw: Mapping[str, Any]) -> dict[str, tuple[str, User]]:
    """token hash -> (hash, user); also checks names are unique."""
    entries = raw.get("user", [])
    if not isinstance(entries, list):
        raise UsersFileError("'user' must be an array of tables ([[user]])")
    by_hash: dict[str, tuple[str, User]] = {}
    names: set[str] = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UsersFileError(f"user #{i + 1}: not a table")
        name = _clean(entry.get("name"), "name", i, required=True)
        role = _clean(entry.get("role"), "role", i, required=True)
        digest = _clean(entry.get("token_sha256"), "token_sha256", i, required=True)
        assert name is not None and role is not None and digest is not None
        if role not in ROLES:
            raise UsersFileError(f"user {name}: unknown role {role!r} (one of {', '.join(ROLES)})")
        digest = digest.lower()
        if len(digest) != 64 or not set(digest) <= _HEX64:
            raise UsersFileError(f"user {name}: token_sha256 must be 64 hex digits (the hash, never the token)")
        if name in names:
            raise UsersFileError(f"user {name}: listed twice")
        if digest in by_hash:
            raise UsersFileError(f"user {name}: shares a token with another user")
        names.add(name)
        user = User(
            name,
            role,
            _clean(entry.get("organisation"), "organisation", i),
            _clean(entry.get("doctor_code"), "doctor_code", i),
            _clean(entry.get("doctor_name"), "doctor_name", i),
            _clean(entry.get("specialty"), "specialty", i),
        )
        by_hash[digest] = (digest, user)
    return by_hash


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsersFileError(f"{path}: {exc}") from None


class UserDirectory:
    """The users file, re-read when its modification time or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._users: dict[str, tuple[str, User]] = {}

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and (stamp is not None or not self._users):
            return
        self._users = _parse(_read(self.path)) if stamp is not None else {}
        self._stamp = stamp

    def users(self) -> list[User]:
        with self._lock:
            self._refresh()
            return [user for _, user in self._users.values()]

    def authenticate(self, token: str) -> User | None:
        if not token:
            return None
        digest = token_hash(token)
        with self._lock:
            self._refresh()
            found = self._users.get(digest)
        if found is None or not secrets.compare_digest(found[0], digest):
            return None
        return found[1]


def _toml_string(value: str) -> str:
    # JSON string escapes (\", \\, \n, \uXXXX) are valid TOML basic-string escapes
    return json.dumps(value, ensure_ascii=False)


def add_user(
    path: Path,
    name: str,
    role: str,
    *,
    organisation: str | None = None,
    doctor_code: str | None = None,
    doctor_name: str | None = None,
    specialty: str | None = None,
) -> tuple[User, str]:
    """Append a user to the file; returns the user and the new token (shown once, stored hashed)."""
    if role not in ROLES:
        raise UsersFileError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if role == "radiologist" and not (doctor_code and doctor_name):
        raise UsersFileError("a radiologist needs --doctor-code and --doctor-name (regional directory)")
    if role == "agent" and not organisation:
        raise UsersFileError("an agent needs --organisation (the hospital whose transfers it reports)")
    existing = _parse(_read(path))
    if any(user.name == name for _, user in existing.values()):
        raise UsersFileError(f"user {name} already exists in {path}")
    token = secrets.token_urlsafe(32)
    fields: dict[str, str | None] = {
        "name": name,
        "role": role,
        "organisation": organisation,
        "doctor_code": doctor_code,
        "doctor_name": doctor_name,
        "specialty": specialty,
        "token_sha256": token_hash(token),
    }
    lines = ["", "[[user]]"]
    for key, value in fields.items():
        if value is not None:
            _clean(value, key, len(existing), required=True)
            lines.append(f"{key} = {_toml_string(value)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    _parse(_read(path))  # the file must still be valid
    user = User(name, role, organisation, doctor_code, doctor_name, specialty)
    return user, token


# -- browser sessions ------------------------------------------------------------------------------
# The study page is opened from a browser, which cannot send a bearer header by itself: the user
# signs in once with name and token, and gets a session cookie. The cookie holds a random session
# id, the user name, role and expiry, signed (itsdangerous, HMAC-SHA256) under a key only the archive knows
# ($CAMI_SESSION_KEY, else ``session.key`` in $CAMI_HOME, created 0600 on first use). It is checked
# against the users file on every request, so a removed user or a changed role ends the session at
# once; signing out records the session id as revoked (``sessions.db`` in $CAMI_HOME, kept until
# the cookie would have expired anyway), so a copy of the cookie replayed later is refused.

SESSION_COOKIE = "cami_session"
SESSION_TTL_SECONDS = 12 * 3600
SESSION_KEY_FILE = "session.key"


def session_key(home: Path, configured: str = "") -> bytes:
    """The session signing key: ``configured`` (``CAMI_SESSION_KEY``, at least 32 characters),
    else the key file in ``home``, created with 32 random bytes and mode 0600 the first time."""
    if configured:
        if len(configured) < 32:
            raise UsersFileError("CAMI_SESSION_KEY must be at least 32 characters")
        return configured.encode("utf-8")
    path = home / SESSION_KEY_FILE
    try:
        key = path.read_bytes().strip()
    except FileNotFoundError:
        home.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            return session_key(home, configured)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(32) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        key = path.read_bytes().strip()
    if len(key) < 32:
        raise UsersFileError(f"{path}: the session key is too short (delete the file to make a new one)")
    return key


#: the signature covers this purpose too: a value the same key signs for anything else is no session
_SESSION_SALT = "cami.browser-session"
_MAX_COOKIE = 4096


def _session_serializer(key: bytes) -> URLSafeSerializer:
    """Signs and checks the claims: JSON, URL-safe base64, HMAC-SHA256 under a key derived from
    ``key`` and the salt. The expiry is a claim, checked against the caller's clock (``now``)."""
    return URLSafeSerializer(key, salt=_SESSION_SALT, signer_kwargs={"digest_method": hashlib.sha256})


def issue_session(key: bytes, user: User, now: float, ttl: int = SESSION_TTL_SECONDS) -> str:
    """The cookie value for ``user``, valid ``ttl`` seconds from ``now``, under a new session id."""
    claims = {"i": secrets.token_urlsafe(16), "u": user.name, "r": user.role, "e": int(now) + ttl}
    return _session_serializer(key).dumps(claims)


def session_claims(key: bytes, cookie: str | None, now: float) -> dict[str, Any] | None:
    """The claims of a session cookie whose signature holds and that has not expired; else None."""
    if not cookie or len(cookie) > _MAX_COOKIE:
        return None
    try:
        claims = _session_serializer(key).loads(cookie)
    except BadData:  # a bad signature, or a payload that is not our JSON
        return None
    if not isinstance(claims, dict) or not isinstance(claims.get("e"), int) or claims["e"] <= now:
        return None
    # a cookie without a session id could not be revoked by signing out: not a session
    if not isinstance(claims.get("i"), str) or not claims["i"]:
        return None
    return claims


class RevokedSessions:
    """Session ids ended by signing out, each kept until its cookie would have expired anyway.

    A SQLite file, so a sign-out holds across restarts; expired entries are deleted as new ones
    arrive, so the file stays as small as the sessions signed out within the last 12 hours."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS revoked (session_id TEXT PRIMARY KEY, expires INTEGER NOT NULL) WITHOUT ROWID"
        )

    def revoke(self, session_id: str, expires: int, now: float) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM revoked WHERE expires <= ?", (int(now),))
            self._conn.execute("INSERT OR REPLACE INTO revoked VALUES (?, ?)", (session_id, expires))

    def is_revoked(self, session_id: str) -> bool:
        with self._lock:
            row = self._conn.execute("SELECT 1 FROM revoked WHERE session_id = ?", (session_id,)).fetchone()
        return row is not None

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def session_user(
    directory: UserDirectory,
    key: bytes,
    cookie: str | None,
    now: float,
    revoked: RevokedSessions | None = None,
) -> User | None:
    """The user a session cookie names, if its signature holds, it has not expired nor been
    signed out (``revoked``), and the users file still has that user with that role; else None."""
    claims = session_claims(key, cookie, now)
    if claims is None:
        return None
    if revoked is not None and revoked.is_revoked(claims["i"]):
        return None
    for user in directory.users():
        if user.name == claims.get("u") and user.role == claims.get("r"):
            return user
    return None


# -- sign-in attempts ------------------------------------------------------------------------------
SIGNIN_MAX_FAILURES = 5
SIGNIN_WINDOW_SECONDS = 300
SIGNIN_MAX_TRACKED = 10_000


class SignInLimiter:
    """Failed sign-ins per user name and per address within a sliding window.

    After ``max_failures`` failures within ``window`` seconds for the same name or from the same
    address, further attempts are refused (even with the right token) until the oldest failure
    leaves the window: guessing tokens gets nowhere, and one address cannot lock out a user name
    for longer than the window. Memory is bounded: at most ``max_tracked`` names and addresses,
    each with at most ``max_failures`` timestamps; beyond that the least recently failed go first.
    """

    def __init__(
        self,
        max_failures: int = SIGNIN_MAX_FAILURES,
        window: float = SIGNIN_WINDOW_SECONDS,
        max_tracked: int = SIGNIN_MAX_TRACKED,
    ) -> None:
        self.max_failures = max_failures
        self.window = window
        self.max_tracked = max_tracked
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, list[float]] = OrderedDict()

    @staticmethod
    def _keys(name: str, address: str | None) -> tuple[str, ...]:
        return (f"user:{name.strip().lower()}", f"address:{address}") if address else (f"user:{name.strip().lower()}",)

    def _recent(self, key: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(key, ()) if t > now - self.window]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def retry_after(self, name: str, address: str | None, now: float | None = None) -> int:
        """Seconds until this name and address may try again (0: they may try now)."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        with self._lock:
            for key in self._keys(name, address):
                times = self._recent(key, now)
                if len(times) >= self.max_failures:
                    wait = max(wait, times[0] + self.window - now)
        return int(wait) + 1 if wait > 0 else 0

    def failed(self, name: str, address: str | None, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            for key in self._keys(name, address):
                times = self._recent(key, now)
                times.append(now)
                self._failures[key] = times[-self.max_failures :]
                self._failures.move_to_end(key)
            while len(self._failures) > self.max_tracked:
                self._failures.popitem(last=False)

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(self._keys(name, None)[0], None)
