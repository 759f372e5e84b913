"""The agent's HTTPS client of CAMI's API: transfer events, full-import requests, hash checks, STOW-RS.

Every call authenticates with the agent's bearer token. Failures come in two kinds the caller
treats differently: :class:`CamiUnreachable` (no connection, a timeout, a 5xx: try again later, keep
what is buffered) and :class:`CamiRefused` (a 4xx: CAMI understood and said no; retrying the same
request will not help).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import date, datetime
from types import TracebackType
from typing import Any

import httpx

from ingest.agent.model import OutboxEvent

EVENTS_PATH = "/api/agent/events"
REQUESTS_PATH = "/api/agent/requests"
VERIFY_PATH = "/api/agent/verify"
STOW_PATH = "/dicomweb/studies"
#: the STOW request header that marks the stored instances emergency
PRIORITY_HEADER = "CAMI-Priority"
#: CAMI accepts at most this many events per post
MAX_EVENTS = 500


class CamiUnreachable(ConnectionError):
    """CAMI could not be reached or failed (connection, timeout, 5xx): try again later."""


class CamiRefused(Exception):
    """CAMI answered with a 4xx: the request itself is refused."""

    def __init__(self, status: int, body: Any):
        self.status = status
        self.body = body
        super().__init__(f"CAMI refused the request: HTTP {status}: {body}")


def iso(value: Any) -> Any:
    """``value`` with every datetime (nested in dicts and lists too) as an ISO-8601 string."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): iso(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [iso(v) for v in value]
    return value


def event_json(event: OutboxEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat(),
        "payload": iso(event.payload),
    }


class CamiClient:
    def __init__(self, base_url: str, token: str, *, verify_tls: bool | str = True, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            verify=verify_tls,
            timeout=timeout,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CamiClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the API ---------------------------------------------------------------------------
    def post_events(self, events: Sequence[OutboxEvent]) -> None:
        """Post transfer events in order (in posts of at most :data:`MAX_EVENTS`); returns once CAMI
        holds them durably. A resend of events CAMI already has is harmless (they are duplicates)."""
        for start in range(0, len(events), MAX_EVENTS):
            batch = events[start : start + MAX_EVENTS]
            self._call("POST", EVENTS_PATH, json={"events": [event_json(e) for e in batch]})

    def requests(self, cursor: str | None) -> tuple[list[dict[str, Any]], str]:
        """Full-import requests for the agent's organisation after ``cursor``, and the next cursor."""
        params = {"cursor": cursor} if cursor else None
        body = self._call("GET", REQUESTS_PATH, params=params)
        try:
            found = [dict(r) for r in body["requests"]]
            return found, str(body["cursor"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CamiUnreachable(f"CAMI answered {REQUESTS_PATH} with an unexpected body: {body!r}") from exc

    def verify(self, pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
        """End-to-end check: for each (SOPInstanceUID, sha256) whether CAMI's latest version of the
        instance has exactly those bytes: sop -> "match" | "mismatch" | "absent"."""
        instances = [{"SOPInstanceUID": sop, "sha256": digest} for sop, digest in pairs]
        if not instances:
            return {}
        body = self._call("POST", VERIFY_PATH, json={"instances": instances})
        try:
            return {str(i["SOPInstanceUID"]): str(i["result"]) for i in body["instances"]}
        except (KeyError, TypeError) as exc:
            raise CamiUnreachable(f"CAMI answered {VERIFY_PATH} with an unexpected body: {body!r}") from exc

    def stow(self, body_iter: Iterator[bytes] | Iterable[bytes], content_type: str, emergency: bool) -> dict[str, Any]:
        """STOW-RS of one multipart/related body, streamed (chunked); CAMI's DICOM JSON answer.

        200 and 202 (some parts failed: the answer says which) are answers; 409 (every part failed)
        is too, since its body names each failure."""
        headers = {"Content-Type": content_type, "Accept": "application/dicom+json"}
        if emergency:
            headers[PRIORITY_HEADER] = "emergency"
        return self._call("POST", STOW_PATH, content=body_iter, headers=headers, answers=(409,))

    # -- plumbing --------------------------------------------------------------------------
    def _call(self, method: str, path: str, *, answers: tuple[int, ...] = (), **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise CamiUnreachable(f"{method} {path}: timed out ({exc})") from exc
        except httpx.TransportError as exc:
            raise CamiUnreachable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        body = _body(response)
        if response.status_code >= 500:
            raise CamiUnreachable(f"{method} {path}: HTTP {response.status_code}: {body}")
        if response.status_code >= 400 and response.status_code not in answers:
            raise CamiRefused(response.status_code, body)
        if not isinstance(body, dict):
            raise CamiUnreachable(f"{method} {path}: HTTP {response.status_code} without a JSON object: {body!r}")
        return body


def _body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:1000]
