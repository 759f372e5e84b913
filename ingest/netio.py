"""pynetdicom's sockets checked with poll(), not select().

pynetdicom asks "is there data?" with ``select.select()``, which cannot watch a descriptor numbered
1024 or above (FD_SETSIZE). A long-running archive holds many files open (ClickHouse parts, the
SQLite log, blobs, HTTP connections), so a new association's socket eventually gets such a
number; select() then raises, pynetdicom takes it for a closed connection and aborts the
association ("peer aborted") — every sender and viewer is refused from then on. poll() has no
such limit. :func:`install` gives pynetdicom's transport module a ``select`` with the same
``select.select(r, w, x, timeout)`` call built on poll(); nothing else in pynetdicom changes.
"""

from __future__ import annotations

import select as _select
from collections.abc import Sequence
from typing import Any

import pynetdicom.transport

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


def install() -> None:
    """Make pynetdicom's transport use :class:`PollSelect` (idempotent)."""
    transport: Any = pynetdicom.transport  # pynetdicom ships no type information
    if not isinstance(transport.select, PollSelect):
        transport.select = PollSelect()
