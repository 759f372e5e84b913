"""The base of the URLs the archive hands out (api.http.base_url), from the request as it arrived."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from api.http.base_url import base_url


def _request(host: str | None, server: tuple[str, int], scheme: str = "http", root_path: str = "") -> Request:
    headers = [(b"host", host.encode())] if host is not None else []
    scope = {
        "type": "http",
        "method": "GET",
        "scheme": scheme,
        "server": server,
        "path": root_path + "/dicomweb/studies",
        "root_path": root_path,
        "query_string": b"",
        "headers": headers,
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("host", "server", "scheme", "expected"),
    [
        ("127.0.0.1", ("127.0.0.1", 8042), "http", "http://127.0.0.1:8042"),  # dicomweb-client: no port
        ("127.0.0.1:8042", ("127.0.0.1", 8042), "http", "http://127.0.0.1:8042"),
        ("pacs.region.local:443", ("10.0.0.5", 8042), "https", "https://pacs.region.local:443"),  # a proxy's
        ("pacs.region.local", ("10.0.0.5", 80), "http", "http://pacs.region.local"),
        ("pacs.region.local", ("10.0.0.5", 443), "https", "https://pacs.region.local"),
        ("[::1]", ("::1", 8042), "http", "http://[::1]:8042"),
        (None, ("127.0.0.1", 8042), "http", "http://127.0.0.1:8042"),
    ],
)
def test_the_base_url_names_the_port_the_request_came_in_on(
    host: str | None, server: tuple[str, int], scheme: str, expected: str
) -> None:
    assert base_url(_request(host, server, scheme)) == expected


def test_the_root_path_is_kept() -> None:
    assert base_url(_request("archive", ("127.0.0.1", 8042), root_path="/cami")) == "http://archive:8042/cami"
