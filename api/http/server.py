"""Running the HTTP app: uvicorn in a thread of this process."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

from fastapi import FastAPI

from api.bootstrap import Archive
from api.http.app import create_app
from ingest.tls import server_context


class HttpServer:
    """uvicorn in a thread of this process: ``start()`` returns once it listens, ``stop()`` ends it."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 8042, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        tls: dict[str, Any] = {}
        if ssl_context is not None:  # HTTPS only on this port; the context comes from ingest.tls
            tls["ssl_context_factory"] = lambda _config, _default: ssl_context
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False, **tls)
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name="cami-http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the HTTP server did not start within {timeout} s")
            time.sleep(0.02)
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
                break

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None


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
