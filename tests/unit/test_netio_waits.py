"""pynetdicom's polling loops wait for work (ingest/netio.py): an idle association's threads
wake a bounded number of times, and work that arrives is handled without waiting out the cap."""

from __future__ import annotations

import queue
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ingest import netio


@pytest.fixture
def counted_waits(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    netio.install()
    counts = {"dul": 0, "reactor": 0}
    dul_wait, reactor_wait = netio._dul_wait, netio._reactor_wait

    def dul(thread: Any, timeout: float) -> None:
        counts["dul"] += 1
        dul_wait(thread, timeout)

    def reactor(thread: Any, timeout: float) -> None:
        counts["reactor"] += 1
        reactor_wait(thread, timeout)

    import pynetdicom.association
    import pynetdicom.dul

    dul_module: Any = pynetdicom.dul
    association_module: Any = pynetdicom.association
    monkeypatch.setattr(dul_module.time, "_wait", dul)
    monkeypatch.setattr(association_module.time, "_wait", reactor)
    return counts


def test_an_idle_association_waits_instead_of_polling_every_millisecond(counted_waits: dict[str, int]) -> None:
    echoes: list[float] = []

    def answer(event: Any) -> int:
        echoes.append(time.time())
        return 0x0000

    scp = AE(ae_title="IDLE")
    scp.add_supported_context(Verification)
    server = scp.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_ECHO, answer)])
    assert server is not None
    try:
        scu = AE(ae_title="SCU")
        scu.add_requested_context(Verification)
        assoc = scu.associate("127.0.0.1", server.server_address[1], ae_title="IDLE")
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        for key in counted_waits:
            counted_waits[key] = 0
        idle = 1.0
        time.sleep(idle)
        # two associations' worth of DUL threads (ours and the server's) and one reactor each:
        # with pynetdicom's 1 ms sleeps that is about 1,000 wake-ups per thread and second
        per_thread = idle / netio.POLL_CAP
        assert counted_waits["dul"] > 0 and counted_waits["reactor"] > 0  # they wait rather than sleep
        assert counted_waits["dul"] <= 2 * per_thread * 1.5
        assert counted_waits["reactor"] <= 2 * per_thread * 1.5
        # work still gets through: the echo is answered on the same association
        assert assoc.send_c_echo().Status == 0x0000
        assert len(echoes) == 2
        assoc.release()
    finally:
        server.shutdown()


def test_a_wake_up_meant_for_an_scu_waiting_on_the_same_queue_reaches_it() -> None:
    """The reactor's wait shares the DIMSE queue's condition with an SCU thread waiting in get()
    for its response (pynetdicom's send_c_*). Queue.put wakes the first waiter only: when that is
    the reactor, it must pass the wake-up on, or the SCU sleeps out its DIMSE timeout with the
    response queued (the demo's C-STOREs stalled 30 s and were aborted that way)."""
    messages: queue.Queue[str] = queue.Queue()
    assoc = SimpleNamespace(dimse=SimpleNamespace(msg_queue=messages))
    reactor = threading.Thread(target=netio._reactor_wait, args=(assoc, 30.0))
    reactor.start()
    while not messages.not_empty._waiters:  # type: ignore[attr-defined]
        time.sleep(0.001)  # the reactor waits first, so put() wakes it, not the SCU
    received = threading.Event()

    def scu() -> None:
        messages.get(timeout=30)
        received.set()

    threading.Thread(target=scu, daemon=True).start()
    while len(messages.not_empty._waiters) < 2:  # type: ignore[attr-defined]
        time.sleep(0.001)
    messages.put("C-STORE-RSP")
    assert received.wait(10)  # passed on at once; without that, only after the SCU's 30 s
    reactor.join(10)
    assert not reactor.is_alive()
