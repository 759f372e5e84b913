"""Reading DICOMweb answers: the parts of a ``multipart/related`` body (WADO-RS)."""

from __future__ import annotations

import httpx
import requests


def split_multipart(response: requests.Response | httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """(headers, body) of each part, split on the boundary the Content-Type declares."""
    content_type = response.headers["content-type"]
    assert content_type.lower().startswith("multipart/related")
    boundary = next(
        p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")
    )
    body = response.content
    delimiter = b"--" + boundary.encode()
    assert body.rstrip(b"\r\n").endswith(delimiter + b"--"), "no close delimiter"
    parts = []
    for chunk in body.split(delimiter)[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts
