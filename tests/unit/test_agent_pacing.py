"""The link pacing's arithmetic (a token bucket on an injected clock) and the cutting of PDUs into
fragments the peer reassembles to the same bytes; the rate on a real wire is measured in
tests/integration/test_agent_delivery.py."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from pynetdicom.pdu_primitives import P_DATA

from ingest.agent.cami_client import event_json, iso
from ingest.agent.model import OutboxEvent
from ingest.agent.pacing import LinkPace, fragments, paced_chunks, pdu_size


class Clock:
    """Time that moves only when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.slept.append(seconds)


def test_the_bucket_lets_a_burst_through_then_keeps_to_the_rate() -> None:
    clock = Clock()
    pace = LinkPace(256, burst=16_000, clock=clock, sleep=clock.sleep)  # 32,000 bytes/s
    assert pace.take(16_000) == 0.0  # the bucket starts full
    assert pace.take(3_200) == pytest.approx(0.1)
    # a second taker at the same instant queues behind the first one's reservation
    assert pace.take(3_200) == pytest.approx(0.2)
    clock.now += 0.2
    assert pace.take(3_200) == pytest.approx(0.1)
    # idle time refills the bucket, but never beyond its depth
    clock.now += 60
    assert pace.take(16_000) == 0.0
    assert pace.take(32_000) == pytest.approx(1.0)


def test_no_cap_never_waits_and_a_new_cap_applies_at_once() -> None:
    clock = Clock()
    pace = LinkPace(None, burst=1_000, clock=clock, sleep=clock.sleep)
    assert pace.take(10**9) == 0.0 and clock.slept == []
    pace.set_kbps(8)  # 1,000 bytes/s
    assert pace.take(1_000) == 0.0
    assert pace.take(500) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        LinkPace(0)


@pytest.mark.parametrize("control", [0x00, 0x01, 0x02, 0x03])
def test_a_large_pdv_is_cut_into_fragments_of_the_same_message(control: int) -> None:
    data = bytes(range(256)) * 200  # 51,200 bytes
    big = P_DATA()
    big.presentation_data_value_list.append((3, bytes([control]) + data))
    pieces = list(fragments(big, limit=16_384))
    assert len(pieces) == 4
    assert all(pdu_size(p) <= 16_384 for p in pieces)
    values = [p.presentation_data_value_list for p in pieces]
    assert all(len(v) == 1 and v[0][0] == 3 for v in values)
    assert b"".join(v[0][1][1:] for v in values) == data
    headers = [v[0][1][0] for v in values]
    # only the last fragment keeps the "last" bit; the command/data set bit stays on every one
    assert headers == [control & 0x01] * 3 + [control]


def test_a_small_or_empty_pdv_stays_whole() -> None:
    small = P_DATA()
    small.presentation_data_value_list.append((1, b"\x03" + b"x" * 100))
    assert [p.presentation_data_value_list for p in fragments(small)] == [[(1, b"\x03" + b"x" * 100)]]
    empty = P_DATA()
    empty.presentation_data_value_list.append((1, b"\x02"))
    assert [p.presentation_data_value_list for p in fragments(empty)] == [[(1, b"\x02")]]


def test_stow_chunks_are_cut_small_and_paced() -> None:
    clock = Clock()
    pace = LinkPace(8, burst=1_000, clock=clock, sleep=clock.sleep)
    out = list(paced_chunks([b"a" * 2_500, b"b" * 10], pace, chunk_size=1_000))
    assert b"".join(out) == b"a" * 2_500 + b"b" * 10
    assert [len(c) for c in out] == [1_000, 1_000, 500, 10]
    assert len(clock.slept) == 3  # the first kilobyte was the burst


def test_events_go_as_json_with_iso_timestamps() -> None:
    at = datetime(2026, 11, 30, 1, 2, 3, tzinfo=UTC)
    event = OutboxEvent(7, "e-1", "TransferFailed", at, {"retry_at": at, "nested": [{"at": at}], "n": 1})
    assert event_json(event) == {
        "event_id": "e-1",
        "type": "TransferFailed",
        "occurred_at": "2026-11-30T01:02:03+00:00",
        "payload": {"retry_at": "2026-11-30T01:02:03+00:00", "nested": [{"at": "2026-11-30T01:02:03+00:00"}], "n": 1},
    }
    assert iso(None) is None
