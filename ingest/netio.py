"""pynetdicom's sockets checked with poll(), not select(); its polling sleeps turned into waits.

pynetdicom asks "is there data?" with ``select.select()``, which cannot watch a descriptor numbered
1024 or above (FD_SETSIZE). A long-running archive holds many files open (ClickHouse parts, the
SQLite log, blobs, HTTP connections), so a new association's socket eventually gets such a
number; select() then raises, pynetdicom takes it for a closed connection and aborts the
association ("peer aborted") — every sender and viewer is refused from then on. poll() has no
such limit. :func:`install` gives pynetdicom's transport module a ``select`` with the same
``select.select(r, w, x, timeout)`` call built on poll().

Each association runs two threads that poll: the DUL reader sleeps 1 ms whenever it finds nothing
to read or send, and the association's reactor sleeps 1 ms between looks at its queue of DIMSE
messages. One C-STORE crosses both sleeps two or three times (request in, response out), so on
one association the sender waits 2-3 ms per object for nothing, and every idle association
wakes its threads 2,000 times a second, taking the GIL from the busy ones. :func:`install` makes
those two sleeps (and only those: pynetdicom's other sleeps keep their meaning) wait for what
the thread polls for, up to :data:`POLL_CAP` seconds: the DUL thread until its socket has data or
a PDU is queued for sending (a pipe woken by ``send_pdu``), the reactor until a DIMSE message is
queued. pynetdicom's loops are unchanged; they only no longer sleep past the moment there is work.

Once it has sent an A-ABORT or A-RELEASE-RP (state Sta13, awaiting the transport's close),
pynetdicom closes the socket as soon as nothing is waiting to be read. If the peer's next PDU is
still on its way, that close discards it unread, the kernel answers with a reset, and the peer
can lose the abort it has not yet read: it reports a broken pipe, not "association aborted".
Here the DUL first sends its end of the connection (FIN after the last PDU) and gives the peer up
to :data:`CLOSE_GRACE` seconds to send what it was sending or to close, which pynetdicom then
reads and drops as the standard says (PS3.8 9.2, Sta13).
"""

from __future__ import annotations

import contextlib
import os
import select as _select
import socket as _socket
import ssl
import threading
import time as _time
from collections.abc import Callable, Sequence
from typing import Any

import pynetdicom.association
import pynetdicom.dul
import pynetdicom.transport
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider

#: the longest a waiting thread sleeps before it looks again (timers, kill flags, releases): work
#: that arrives wakes it at once
POLL_CAP = 0.005
#: how long a connection being closed after an A-ABORT or A-RELEASE-RP waits for the peer (Sta13)
CLOSE_GRACE = 0.5

_READ = _select.POLLIN | _select.POLLPRI
_WRITE = _select.POLLOUT
_PROBLEM = _select.POLLERR | _select.POLLHUP | _select.POLLNVAL


class PollSelect:
    """Stands in for the ``select`` module inside pynetdicom.transport."""

    error = OSError

    @staticmethod
    def select(
        rlist: Sequence[Any], wlist: Sequence[Any], xlist: Sequence[Any], timeout: float | None = None
    ) -> tuple[list[Any], list[Any], list[Any]]:
        poller = _select.poll()
        wanted: dict[int, tuple[Any, int]] = {}
        for items, mask in ((rlist, _READ), (wlist, _WRITE), (xlist, _select.POLLPRI)):
            for item in items:
                fd = item if isinstance(item, int) else item.fileno()
                if fd < 0:
                    raise ValueError("file descriptor cannot be a negative integer")
                _, before = wanted.get(fd, (item, 0))
                wanted[fd] = (item, before | mask)
        for fd, (_, mask) in wanted.items():
            poller.register(fd, mask)
        events = poller.poll(None if timeout is None else timeout * 1000)
        readable, writable, exceptional = [], [], []
        for fd, happened in events:
            item, mask = wanted[fd]
            if happened & _select.POLLNVAL:
                raise ValueError(f"file descriptor {fd} is not open")
            # like select(): a hang-up or error makes a socket "readable" (the read then tells)
            if mask & _READ and happened & (_READ | _PROBLEM):
                readable.append(item)
            if mask & _WRITE and happened & (_WRITE | _PROBLEM):
                writable.append(item)
            if mask & _select.POLLPRI and happened & _select.POLLPRI and item in xlist:
                exceptional.append(item)
        return readable, writable, exceptional


class _Clock:
    """Stands in for the ``time`` module inside one pynetdicom module: ``sleep`` from the threads
    and with the delay named turns into ``wait``; everything else is the ``time`` module."""

    def __init__(self, thread_type: type, delay: Callable[[Any], float], wait: Callable[[Any, float], None]) -> None:
        self._thread_type = thread_type
        self._delay = delay
        self._wait = wait

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)

    def sleep(self, seconds: float) -> None:
        thread = threading.current_thread()
        if isinstance(thread, self._thread_type) and seconds == self._delay(thread):
            self._wait(thread, max(seconds, POLL_CAP))
        else:
            _time.sleep(seconds)


class _Wake:
    """A pipe that wakes a DUL thread waiting in poll() when a PDU is queued for it to send."""

    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        os.set_blocking(self.write_fd, False)
        self._lock = threading.Lock()
        self._closed = False

    def signal(self) -> None:
        with self._lock:  # never write to a descriptor number the close below has freed
            if not self._closed:
                with contextlib.suppress(BlockingIOError):  # full: a wake-up is pending anyway
                    os.write(self.write_fd, b"!")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.read_fd, 4096)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            os.close(self.read_fd)
            os.close(self.write_fd)


def _dul_wait(dul: Any, timeout: float) -> None:
    wake: _Wake | None = getattr(dul, "_cami_wake", None)
    sock = getattr(dul.socket, "socket", None)
    if wake is None or sock is None:  # not connected yet, or not started by our run_reactor
        _time.sleep(0.001)
        return
    if not dul.to_provider_queue.empty() or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return
    poller = _select.poll()
    poller.register(wake.read_fd, _select.POLLIN)
    try:
        poller.register(sock, _READ)
    except (ValueError, OSError):  # closed meanwhile: the loop finds out
        return
    if poller.poll(timeout * 1000):
        wake.drain()


def _reactor_wait(assoc: Any, timeout: float) -> None:
    messages = assoc.dimse.msg_queue
    with messages.not_empty:
        if not messages._qsize():
            messages.not_empty.wait(timeout)
        if messages._qsize():
            # Queue.put wakes one waiter, and an SCU's thread may be waiting in get() for this
            # very response (pynetdicom's send_c_*): if the wake-up came here, pass it on, or
            # that thread sleeps out its DIMSE timeout with the response in the queue
            messages.not_empty.notify()


_run_reactor = DULServiceProvider.run_reactor
_send_pdu = DULServiceProvider.send_pdu
_is_transport_event = DULServiceProvider._is_transport_event


def _closing_gently(self: Any) -> bool:
    """pynetdicom's transport check, but in Sta13 the peer gets its grace before the close."""
    if self.state_machine.current_state == "Sta13" and not getattr(self, "_cami_closing", False):
        self._cami_closing = True
        sock = getattr(self.socket, "socket", None)
        if sock is not None:
            if not isinstance(sock, ssl.SSLSocket):  # TLS: the session must stay readable
                with contextlib.suppress(OSError):
                    sock.shutdown(_socket.SHUT_WR)
            poller = _select.poll()
            with contextlib.suppress(ValueError, OSError):
                poller.register(sock, _READ)
                poller.poll(CLOSE_GRACE * 1000)
    return bool(_is_transport_event(self))


def _waking_run_reactor(self: Any) -> None:
    self._cami_wake = _Wake()
    try:
        _run_reactor(self)
    finally:
        wake, self._cami_wake = self._cami_wake, None
        wake.close()


def _waking_send_pdu(self: Any, primitive: Any) -> None:
    _send_pdu(self, primitive)
    wake: _Wake | None = getattr(self, "_cami_wake", None)
    if wake is not None:
        wake.signal()


def install() -> None:
    """Make pynetdicom's transport use :class:`PollSelect`, and its two polling loops wait for
    work instead of sleeping (idempotent; before any association is made)."""
    transport: Any = pynetdicom.transport  # pynetdicom ships no type information
    if not isinstance(transport.select, PollSelect):
        transport.select = PollSelect()
    dul: Any = pynetdicom.dul
    if not isinstance(dul.time, _Clock):
        dul.time = _Clock(DULServiceProvider, lambda thread: float(thread._run_loop_delay), _dul_wait)
        provider: Any = DULServiceProvider
        provider.run_reactor = _waking_run_reactor
        provider.send_pdu = _waking_send_pdu
        provider._is_transport_event = _closing_gently
    association: Any = pynetdicom.association
    if not isinstance(association.time, _Clock):
        # the reactor's own sleep between looks at its DIMSE queue (pynetdicom's other sleeps
        # in that module are shorter or longer, and keep their meaning)
        association.time = _Clock(Association, lambda _thread: 0.001, _reactor_wait)
