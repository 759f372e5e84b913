"""Keeping the agent within the hospital link's bandwidth cap.

A :class:`LinkPace` is a token bucket shared by everything the agent sends to CAMI (one link): its
rate is the cap, its depth (the burst) is small -- about one PDU -- so a real 256 kbit/s line never
gets more than a fraction of a second of data ahead of the cap. The time spent waiting for CAMI's
answer between two instances fills the bucket again, so the cap stays used while the line is idle
only briefly.

The pacing is on the bytes as they go on the wire: for DICOM, each P-DATA PDU of an association
takes its size from the bucket before pynetdicom queues it for the socket (:func:`pace_association`);
for STOW-RS, each chunk of the request body (:func:`paced_chunks`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pynetdicom.association import Association
from pynetdicom.pdu_primitives import P_DATA

#: bucket depth: one default-size PDU (pynetdicom's 16 KiB maximum PDU length)
DEFAULT_BURST = 16 << 10
#: STOW body chunks: small enough to pace smoothly
STOW_CHUNK = 16 << 10
#: bytes a P-DATA-TF PDU adds to its data: the PDU header, and per PDV its length and context ID
PDU_HEADER = 6
PDV_HEADER = 5
#: the largest PDU the agent sends on a paced association, whatever the peer accepts (CAMI takes
#: 256 KiB PDUs: 8 s of a 256 kbit/s line in one write)
PACED_PDU = 16 << 10
#: PDV message control header bit: last fragment of the command or data set
LAST_FRAGMENT = 0x02


class LinkBroken(ConnectionError):
    """The association went down while its data was being paced out."""


class LinkPace:
    """Token bucket in kbit/s (1 kbit = 1000 bits); ``None``: no cap. Thread-safe.

    ``take(n)`` reserves ``n`` bytes and sleeps until the bucket covers them. A taker larger than
    the bucket is allowed (it waits for its whole size); concurrent takers queue behind each other,
    so the sum of what they send keeps to the rate."""

    def __init__(
        self,
        kbps: float | None,
        *,
        burst: int = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if kbps is not None and kbps <= 0:
            raise ValueError(f"bandwidth cap must be positive, not {kbps}")
        if burst <= 0:
            raise ValueError(f"burst must be positive, not {burst}")
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._burst = float(burst)
        self._rate = 0.0
        self._tokens = float(burst)
        self._stamp = clock()
        self.kbps: float | None = None
        self.set_kbps(kbps)

    def set_kbps(self, kbps: float | None) -> None:
        with self._lock:
            self._refill()
            self.kbps = kbps
            self._rate = kbps * 1000 / 8 if kbps is not None else 0.0

    @property
    def bytes_per_second(self) -> float | None:
        return self._rate if self.kbps is not None else None

    def _refill(self) -> None:
        now = self._clock()
        if self.kbps is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now

    def take(self, nbytes: int) -> float:
        """Reserve ``nbytes`` and wait until they may go; returns the seconds waited."""
        if nbytes <= 0:
            return 0.0
        with self._lock:
            if self.kbps is None:
                return 0.0
            self._refill()
            self._tokens -= nbytes
            # the reservation is made: later takers wait behind it even while this one sleeps
            delay = -self._tokens / self._rate if self._tokens < 0 else 0.0
        if delay > 0:
            self._sleep(delay)
        return delay


def pdu_size(primitive: P_DATA) -> int:
    """Bytes the P-DATA-TF PDU of ``primitive`` takes on the wire."""
    return PDU_HEADER + sum(PDV_HEADER + len(value) for _, value in primitive.presentation_data_value_list)


def fragments(primitive: P_DATA, limit: int = PACED_PDU) -> Iterator[P_DATA]:
    """``primitive`` as P-DATA primitives of at most ``limit`` bytes on the wire, one PDV each.

    A PDV larger than that is cut into fragments of the same message (PS3.8 E.2: only the last
    fragment of a command or data set carries the "last" bit), sent in order, so the peer
    reassembles exactly the same bytes."""
    room = limit - PDU_HEADER - PDV_HEADER - 1  # the message control header is the value's first byte
    for context_id, value in primitive.presentation_data_value_list:
        header, data = value[0], bytes(value[1:])
        starts = range(0, len(data), room) if data else range(1)
        for start in starts:
            piece = P_DATA()
            last = start + room >= len(data)
            control = header if last else header & ~LAST_FRAGMENT
            piece.presentation_data_value_list.append((context_id, bytes([control]) + data[start : start + room]))
            yield piece


def pace_association(assoc: Association, pace: LinkPace, max_pdu: int = PACED_PDU) -> None:
    """Pace the P-DATA PDUs ``assoc`` sends, one by one, as they are handed to its DUL; PDUs larger
    than ``max_pdu`` are cut first (see :func:`fragments`).

    The wait happens in the thread that produces the PDUs (the one calling ``send_c_store``), so
    pynetdicom's send queue never holds more than a PDU or two and a file sent from disk is read
    only as fast as the link takes it. When the association goes down meanwhile, :class:`LinkBroken`
    stops the producer at once instead of pacing out the rest of a file nobody reads."""
    dul: Any = assoc.dul
    send_pdu: Callable[[Any], None] = dul.send_pdu

    def paced(primitive: Any) -> None:
        if not isinstance(primitive, P_DATA):
            send_pdu(primitive)
            return
        # without a cap the peer's PDU size is kept (fewer, larger writes on a fast link)
        capped = pace.kbps is not None and pdu_size(primitive) > max_pdu
        for piece in fragments(primitive, max_pdu) if capped else (primitive,):
            if assoc.is_aborted or assoc.is_released or not assoc.is_established:
                raise LinkBroken("the association to CAMI is down")
            pace.take(pdu_size(piece))
            send_pdu(piece)

    # one association's own DUL object: nothing else in the process is affected
    dul.send_pdu = paced


def paced_chunks(chunks: Iterable[bytes], pace: LinkPace, chunk_size: int = STOW_CHUNK) -> Iterator[bytes]:
    """The bytes of ``chunks`` in pieces of at most ``chunk_size``, each paced before it is handed on."""
    for chunk in chunks:
        view = memoryview(chunk)
        for start in range(0, len(view), chunk_size):
            piece = bytes(view[start : start + chunk_size])
            pace.take(len(piece))
            yield piece
