"""Running the HTTP app: uvicorn in a thread of this process (:class:`ingest.web_server.HttpServer`)."""

from __future__ import annotations

from api.bootstrap import Archive
from api.http.app import create_app
from ingest.tls import server_context
from ingest.web_server import HttpServer as HttpServer


def serve_http(archive: Archive, host: str | None = None, port: int | None = None) -> HttpServer:
    """Start the HTTP app for ``archive`` (``port`` 0 picks a free one); call ``stop()`` to end it."""
    settings = archive.settings
    server = HttpServer(
        create_app(archive),
        settings.http_host if host is None else host,
        settings.http_port if port is None else port,
        # people sign in with tokens here: no client certificates asked for
        server_context(settings.tls, client_certificates=False) if settings.http_tls else None,
    )
    server.start()
    return server
