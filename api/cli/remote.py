"""What the commands that talk to a running ``cami serve`` over HTTP share: its address and the
caller's bearer token (``cami monitor``, ``cami replay --online``)."""

from __future__ import annotations

import sys
from pathlib import Path


def default_url() -> str:
    """The archive's HTTP address from CAMI_HTTP_HOST/PORT/TLS, as seen from this machine."""
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
