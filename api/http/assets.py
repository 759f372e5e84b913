"""The pages' static assets (script, style sheet, the chart library), fingerprinted and cached.

A page links an asset as ``/static/cami.js?v=<fingerprint>`` (:func:`asset_url`, the templates'
``asset()``), the fingerprint being the first 12 hex digits of the file's SHA-256. An answer to
a URL carrying the file's current fingerprint never changes, so it is cached for a year
(``public, max-age=31536000, immutable``): a doctor on a slow link downloads the script once, not
on every study opened. Any other URL (no ``v``, or an old one) is ``no-cache``: kept but
revalidated against its ETag, so a deployment never leaves a browser with a stale script. The
assets hold no patient data, which is why they alone may be ``public``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

STATIC = Path(__file__).parent / "static"
#: an asset whose URL names its current content
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

_lock = threading.Lock()
_fingerprints: dict[Path, tuple[tuple[int, int], str]] = {}


def fingerprint(path: Path) -> str:
    """The first 12 hex digits of the file's SHA-256 (recomputed when the file changes)."""
    st = path.stat()
    stamp = (st.st_mtime_ns, st.st_size)
    with _lock:
        known = _fingerprints.get(path)
        if known is not None and known[0] == stamp:
            return known[1]
    value = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    with _lock:
        _fingerprints[path] = (stamp, value)
    return value


def asset_url(name: str, root: Path = STATIC) -> str:
    """``/static/<name>?v=<fingerprint>``; an asset that is not installed (the optional chart
    library) gets its plain URL, so the page still says what is missing instead of failing."""
    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()) or not path.is_file():
        return f"/static/{name}"
    return f"/static/{name}?v={fingerprint(path)}"


class FingerprintedStatic(StaticFiles):
    """Starlette's static files, with the Cache-Control the fingerprint allows."""

    def file_response(
        self, full_path: str | os.PathLike[str], stat_result: os.stat_result, scope: Scope, status_code: int = 200
    ) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        asked = _query_value(scope, b"v")
        current = asked is not None and asked == fingerprint(Path(full_path))
        response.headers["Cache-Control"] = IMMUTABLE if current else REVALIDATE
        return response


def _query_value(scope: Scope, name: bytes) -> str | None:
    for part in bytes(scope.get("query_string", b"")).split(b"&"):
        key, _, value = part.partition(b"=")
        if key == name:
            return value.decode("ascii", "replace")
    return None
