"""An ASGI app served by uvicorn in a thread of this process: CAMI's HTTP API (:mod:`api.http.server`)
and the transfer agent's MIS endpoint (:mod:`ingest.agent.mis`) both run this way."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any, Literal


class HttpServer:
    """uvicorn in a thread: ``start()`` returns once it listens (``port`` 0 picks a free one, and
    ``port`` is then the bound one), ``stop()`` ends it."""

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 8042,
        ssl_context: ssl.SSLContext | None = None,
        *,
        name: str = "cami-http",
        lifespan: Literal["auto", "on", "off"] = "on",
    ) -> None:
        import uvicorn

        self.app = app
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.name = name
        tls: dict[str, Any] = {}
        if ssl_context is not None:  # HTTPS only on this port
            tls["ssl_context_factory"] = lambda _config, _default: ssl_context
        # uvicorn's loggers (uvicorn.error...) left as they are: they propagate to the process's one
        # handler, in its format (text or JSON lines) and at its level (``cami``'s log settings)
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, log_level=None, lifespan=lifespan, access_log=False, **tls
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context is not None else 'http'}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._server.run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"{self.name} did not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not start within {timeout} s")
            time.sleep(0.02)
        for server in self._server.servers:
            for sock in server.sockets:
                self.port = int(sock.getsockname()[1])
                break

    def stop(self) -> None:
        # long-lived responses (the dashboard's event stream) end when the app's ``closing`` is
        # set: uvicorn waits for open responses before it stops, so they must not outlive this
        closing = getattr(getattr(self.app, "state", None), "closing", None)
        if isinstance(closing, threading.Event):
            closing.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
