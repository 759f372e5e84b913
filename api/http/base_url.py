"""The URL the archive's own links start with (QIDO-RS RetrieveURL, WADO-RS BulkDataURI).

Starlette builds ``request.base_url`` from the Host header. A Host header without a port is
legal and common -- dicomweb-client sends its host name alone -- and then means the scheme's
default port, so links built from it would point to port 80 while the API listens on 8042. The
port the request came in on fills the gap; a Host header that names a port is taken as it is
(a proxy in front says where clients reach it).
"""

from __future__ import annotations

from starlette.requests import Request

_DEFAULT_PORTS = {"http": 80, "https": 443}


def base_url(request: Request) -> str:
    """``scheme://host[:port]`` plus the application's root path, no trailing slash."""
    url = request.base_url
    server = request.scope.get("server")
    if url.port is None and server is not None and server[1] not in (None, _DEFAULT_PORTS.get(url.scheme)):
        host = url.hostname or str(server[0])
        netloc = f"[{host}]" if ":" in host else host  # an IPv6 address
        url = url.replace(netloc=f"{netloc}:{server[1]}")
    return str(url).rstrip("/")
