"""Who is asking: the dependencies every router uses to authenticate and to check a role.

A bearer token (``Authorization: Bearer ...``) is checked against the users file; on reads
(GET/HEAD) the browser's session cookie (the sign-in page of :mod:`api.http.web`) stands in for
it. Both are declared as OpenAPI security schemes through FastAPI's security classes, which here
only document: the checks are :func:`authenticate`'s.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable

from fastapi import Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from api.access import AccessRecorder, Reader, access_channel
from api.auth import LOCAL_USER, SESSION_COOKIE, User, UserDirectory, UsersFileError, session_user, token_hash
from api.http.errors import ApiError
from schemas.policy import Action, may, roles_that

log = logging.getLogger("cami.http")

_BEARER = HTTPBearer(auto_error=False, description="a user's token from the users file (`cami users`)")
_SESSION = APIKeyCookie(
    name=SESSION_COOKIE, auto_error=False, description="the browser's session after /signin (reads only)"
)
# the security schemes as dependencies: they put the schemes in the OpenAPI document, return None
# when their credentials are absent and never refuse; authenticate() decides
_TOKEN = Depends(_BEARER)
_COOKIE = Depends(_SESSION)


def authenticate(request: Request) -> User:
    """The user behind the request's credentials; 401 without valid ones, 503 when the users
    file cannot be read."""
    directory: UserDirectory = request.app.state.users
    header = request.headers.get("authorization", "")
    key: bytes | None = getattr(request.app.state, "session_key", None)
    if not header and key is not None and request.method in ("GET", "HEAD"):
        # the browser's session cookie (api.http.web sign-in) stands in for the bearer token, on
        # reads only: a state-changing request needs the bearer header, so a forged form cannot make one
        try:
            cookie = request.cookies.get(SESSION_COOKIE)
            revoked = getattr(request.app.state, "revoked_sessions", None)
            session = session_user(directory, key, cookie, time.time(), revoked)
        except UsersFileError as exc:
            log.error("users file unusable: %s", exc)
            raise ApiError(503, "authentication-unavailable", "the users file cannot be read") from None
        if session is not None:
            return session
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorised", "a bearer token is required", {"WWW-Authenticate": "Bearer"})
    local: str | None = getattr(request.app.state, "local_token_hash", None)
    if local is not None and hmac.compare_digest(token_hash(token.strip()), local):
        return LOCAL_USER  # the command line on this machine (api.auth, local.token)
    try:
        user = directory.authenticate(token.strip())
    except UsersFileError as exc:
        log.error("users file unusable: %s", exc)
        raise ApiError(503, "authentication-unavailable", "the users file cannot be read") from None
    if user is None:
        raise ApiError(
            401, "unauthorised", "the bearer token is not valid", {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        )
    return user


def _bearer(request: Request) -> bool:
    """The request carries an ``Authorization`` header (checked against the users file alone)."""
    return bool(request.headers.get("authorization"))


def record_refusal(request: Request, user: User) -> None:
    """Records that ``user``'s role was refused ``request`` (a RecordAccessed event with outcome
    ``denied``: the path asked for, by whom, from where), before the 403 is answered, so an auditor
    sees who tried to open what their role does not allow."""
    recorder: AccessRecorder | None = getattr(request.app.state, "access", None)
    if recorder is None:
        return
    reader = Reader(user.actor, user.organisation, request.client.host if request.client else None)
    recorder.record(
        reader,
        action="view" if request.method in ("GET", "HEAD") else "request",
        channel=access_channel(request.method, request.url.path),
        query={"path": request.url.path, "method": request.method},
        outcome="denied",
    )


def require(
    action: Action | None = None,
    *,
    session: bool = True,
    on_unauthenticated: Callable[[Request], None] | None = None,
) -> Callable[..., Awaitable[User]]:
    """Dependency: the signed-in user (401 otherwise), whose role may do ``action`` by the policy
    table (403 otherwise; None: any signed-in user, the route checks and records the refusal
    itself). ``session=False`` for writes, which the session cookie does not authorise.
    ``on_unauthenticated`` is told of each 401 before it is answered (e.g. to record it)."""

    async def check(request: Request) -> User:
        # on the event loop, not in the thread pool: a bearer token is checked in microseconds
        # (a stat of the users file and a SHA-256), and each hop to a worker thread and back costs
        # more than that under load. Whatever may wait on a disk (the session revocations, the
        # durable RecordAccessed of a refusal) still runs in the pool.
        try:
            if _bearer(request):
                user = authenticate(request)
            else:
                user = await run_in_threadpool(authenticate, request)
        except ApiError as exc:
            if exc.status == 401 and on_unauthenticated is not None:
                await run_in_threadpool(on_unauthenticated, request)
            raise
        if action is not None and not may(user.role, action):
            await run_in_threadpool(record_refusal, request, user)
            allowed = ", ".join(sorted(roles_that(action)))
            raise ApiError(403, "forbidden", f"role {user.role} may not do this (allowed: {allowed})")
        return user

    if not session:

        async def bearer_only(request: Request, _token: HTTPAuthorizationCredentials | None = _TOKEN) -> User:
            return await check(request)

        return bearer_only

    async def bearer_or_session(
        request: Request,
        _token: HTTPAuthorizationCredentials | None = _TOKEN,
        _cookie: str | None = _COOKIE,
    ) -> User:
        return await check(request)

    return bearer_or_session
