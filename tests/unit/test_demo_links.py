"""The links ``cami demo`` prints open where ``cami serve`` answers: https under TLS, an IPv6
address in brackets, a wildcard bind address as this machine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from api.config import Settings
from api.demo.run import _base_url


@pytest.mark.parametrize(
    ("host", "port", "tls", "expected"),
    [
        ("127.0.0.1", 8042, False, "http://127.0.0.1:8042"),
        ("pacs.region.local", 443, True, "https://pacs.region.local:443"),
        ("::1", 8042, False, "http://[::1]:8042"),
        ("0.0.0.0", 8042, False, "http://localhost:8042"),
        ("::", 9000, True, "https://localhost:9000"),
    ],
)
def test_demo_links_name_where_serve_answers(host: str, port: int, tls: bool, expected: str, tmp_path: Path) -> None:
    settings = replace(Settings.from_env({"CAMI_HOME": str(tmp_path)}), http_host=host, http_port=port, http_tls=tls)
    assert _base_url(settings) == expected
