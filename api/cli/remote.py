"""What the commands that talk to a running ``cami serve`` over HTTP share: its address, the
caller's bearer token (``cami monitor``, ``cami replay --online``), and asking the server on this
machine with its local token (``cami status``, ``cami audit`` while it holds the embedded
warehouse; see :mod:`api.auth`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from api.config import Settings


class ServerUnavailable(RuntimeError):
    """The warehouse is held by another process and no ``cami serve`` on this machine answers."""


def default_url(settings: Settings | None = None) -> str:
    """The archive's HTTP address from CAMI_HTTP_HOST/PORT/TLS, as seen from this machine."""
    if settings is None:
        from api.config import Settings

        settings = Settings.from_env()
    host = settings.http_host
    if host in ("0.0.0.0", "::", ""):  # listening everywhere: this machine answers on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if settings.http_tls else 'http'}://{host}:{settings.http_port}"


def read_token(path: Path) -> str | None:
    """The bearer token in ``path`` ('-': standard input); None when it is empty."""
    text = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    token = text.strip()
    return token or None


def ask_running_serve(
    settings: Settings, path: str, params: Mapping[str, str] | None = None, *, held: Exception
) -> tuple[Any, str]:
    """The JSON answer of the ``cami serve`` running on this machine to ``GET path`` (None for a
    404), and where it was asked. ``held`` is why this process could not read for itself; it is
    part of the message when the server cannot be asked either."""
    import httpx

    from api.auth import LOCAL_TOKEN_FILE, read_local_token

    url = default_url(settings)
    token = read_local_token(settings.home)
    if token is None:
        raise ServerUnavailable(f"{held}. No running cami serve left its token in {settings.home / LOCAL_TOKEN_FILE}")
    # the server's own certificate may not name 127.0.0.1: trust the configured CA, else (loopback
    # only, the token never leaves this machine) do not check it
    verify: str | bool = str(settings.tls.ca) if settings.http_tls and settings.tls.ca else False
    try:
        with httpx.Client(base_url=url, timeout=300, verify=verify) as client:
            answer = client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError as exc:
        raise ServerUnavailable(f"{held}. The cami serve that holds it does not answer at {url} ({exc})") from None
    if answer.status_code == 404:
        return None, url
    if answer.status_code != 200:
        detail = answer.text[:300]
        raise ServerUnavailable(f"the running cami serve at {url} answered {answer.status_code} to {path}: {detail}")
    return answer.json(), url
