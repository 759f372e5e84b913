"""A throttling TCP proxy on loopback: a slow hospital link that can break.

``ThrottleProxy(host, port, kbps)`` listens on a free loopback port and relays every connection to
``host:port``, each direction limited to ``kbps`` kbit/s (shared by all connections, as on one line;
``None``: no limit). ``cut()`` drops every open connection at once (both sides see the connection
reset), ``refuse(True)`` turns new connections away (accepted and reset at once: the far end is
"down"), ``set_kbps`` changes the rate on the fly. It also counts what it relayed, with the time of
the first and last byte, so a test can tell the rate achieved on the wire. Threads only.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from types import TracebackType

#: relay read size: small, so the limit is smooth
CHUNK = 4096


class _Bucket:
    """Token bucket (bytes/s) with a small depth, independent of the agent's own pacing."""

    def __init__(self, kbps: float | None, depth: int = 8192):
        self.lock = threading.Lock()
        self.kbps = kbps
        self.depth = float(depth)
        self.tokens = float(depth)
        self.stamp = time.monotonic()

    def take(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.kbps is None:
                self.stamp = now
                return
            rate = self.kbps * 125.0
            self.tokens = min(self.depth, self.tokens + (now - self.stamp) * rate)
            self.stamp = now
            self.tokens -= n
            delay = -self.tokens / rate if self.tokens < 0 else 0.0
        if delay > 0:
            time.sleep(delay)


class Meter:
    """Bytes relayed in one direction, and when the first and the last of them went."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None

    def count(self, n: int) -> None:
        with self.lock:
            now = time.monotonic()
            if self.first is None:
                self.first = now
            self.last = now
            self.bytes += n

    def reset(self) -> None:
        with self.lock:
            self.bytes, self.first, self.last = 0, None, None

    def kbps(self) -> float:
        """Achieved rate between the first and the last byte, in kbit/s."""
        with self.lock:
            if self.first is None or self.last is None or self.last <= self.first:
                return 0.0
            return self.bytes * 8 / 1000 / (self.last - self.first)


def _reset(sock: socket.socket) -> None:
    """Drop the connection: linger 0 (a reset follows), and a shutdown first, which wakes the relay
    threads blocked on the socket (a close alone would wait for them and leave the peer hanging)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class ThrottleProxy:
    def __init__(self, target_host: str, target_port: int, kbps: float | None = None, host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.up = _Bucket(kbps)  # client -> target
        self.down = _Bucket(kbps)  # target -> client
        self.sent = Meter()  # client -> target, as relayed
        self.received = Meter()  # target -> client
        self.connections = 0
        self._refusing = False
        self._lock = threading.Lock()
        self._open: set[_Pair] = set()
        self._stopped = threading.Event()
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.2)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name=f"throttle-{self.port}", daemon=True)

    # -- control ---------------------------------------------------------------------------
    def start(self) -> ThrottleProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)
        self._listener.close()
        self.cut()

    def __enter__(self) -> ThrottleProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def set_kbps(self, kbps: float | None) -> None:
        for bucket in (self.up, self.down):
            with bucket.lock:
                bucket.kbps = kbps

    def refuse(self, refusing: bool) -> None:
        self._refusing = refusing

    def cut(self) -> int:
        """Drop every open connection now; returns how many sockets were dropped."""
        with self._lock:
            dropped = list(self._open)
            self._open.clear()
            for pair in dropped:
                pair.cut = True
        for pair in dropped:
            _reset(pair.client)
            _reset(pair.upstream)
        return len(dropped)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return len(self._open)

    # -- relaying --------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pair = _Pair(client, upstream)
            with self._lock:
                self._open.add(pair)
                self.connections += 1
            for src, dst, bucket, meter in (
                (client, upstream, self.up, self.sent),
                (upstream, client, self.down, self.received),
            ):
                threading.Thread(target=self._pump, args=(pair, src, dst, bucket, meter), daemon=True).start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, bucket: _Bucket, meter: Meter) -> None:
        broken = False
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                bucket.take(len(data))
                dst.sendall(data)
                meter.count(len(data))
        except OSError:
            broken = True
        if not broken:
            try:  # a polite end: pass it on, the other direction may still be talking
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                broken = True
        with self._lock:
            if pair.cut:  # cut() dropped both sockets already
                return
            pair.done += 1
            finished = broken or pair.done == 2
            if finished:
                pair.cut = True
                self._open.discard(pair)
        if finished:
            for sock in (pair.client, pair.upstream):
                if broken:
                    _reset(sock)
                else:
                    sock.close()


class _Pair:
    def __init__(self, client: socket.socket, upstream: socket.socket):
        self.client = client
        self.upstream = upstream
        self.done = 0
        self.cut = False
