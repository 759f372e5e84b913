"""The HL7 v2 port: MLLP framing by the ``hl7`` library's asyncio server, one message at a time
per connection (original-mode acknowledgement: the MIS waits for each ACK), the message itself
handled by :class:`~ingest.hl7.receiver.HL7Receiver` in a worker thread so a slow log append
never stalls other connections.

Bounded and hard to kill: a message over ``max_message_bytes`` is answered AR and its
connection closed (the rest of it would only read as garbage); bytes outside an MLLP block are
answered AR and skipped; a connection silent for ``idle_timeout`` seconds is closed; beyond
``max_connections`` a new connection is closed at once. Nothing a peer sends stops the listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hl7.mllp import InvalidBlockError, start_hl7_server

from ingest.hl7.receiver import HL7Receiver

log = logging.getLogger("cami.hl7")

DEFAULT_PORT = 2575
#: an ORU may carry a report as encapsulated data; 16 MiB is far beyond any text report
DEFAULT_MAX_MESSAGE_BYTES = 16 << 20
DEFAULT_IDLE_TIMEOUT = 300.0
DEFAULT_MAX_CONNECTIONS = 64


class MllpListener:
    def __init__(
        self,
        receiver: HL7Receiver,
        *,
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        workers: int = 8,
    ) -> None:
        self.receiver = receiver
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cami-hl7")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections = 0

    def start(self) -> None:
        """Listen in a thread of its own; returns once the port is open (``port`` 0: a free one)."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    start_hl7_server(self._serve, self.host, self.port, limit=self.max_message_bytes)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="cami-hl7", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]

    def stop(self) -> None:
        loop, server = self._loop, self._server
        if loop is None or server is None:
            return

        async def close() -> None:
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _serve(self, reader: Any, writer: Any) -> None:
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else None
        if self._connections >= self.max_connections:
            log.warning("HL7 connection from %s closed: %d connections already", address, self._connections)
            writer.close()
            return
        self._connections += 1
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    block = await asyncio.wait_for(reader.readblock(), self.idle_timeout)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the peer closed
                except TimeoutError:
                    log.info("HL7 connection from %s closed after %.0f s without a message", address, self.idle_timeout)
                    return
                except InvalidBlockError:
                    # bytes outside a <VT>...<FS><CR> block: answer, then read on from the next block
                    answered = await loop.run_in_executor(self._pool, self.receiver.unframed, address)
                except ValueError:  # over the limit: answer, then close (the rest cannot be framed)
                    limit = self.max_message_bytes
                    answered = await loop.run_in_executor(self._pool, self.receiver.too_large, address, limit)
                    writer.writeblock(answered.ack)
                    await writer.drain()
                    return
                else:
                    answered = await loop.run_in_executor(self._pool, self.receiver.receive, block, address)
                writer.writeblock(answered.ack)
                await writer.drain()
        except Exception:
            log.exception("HL7 connection from %s failed", address)
        finally:
            self._connections -= 1
            with contextlib.suppress(Exception):
                writer.close()
