"""How a rebuild shares the log's slots among lanes (pure)."""

from __future__ import annotations

from projections.replay_lanes import split_slots


def test_every_slot_goes_whole_to_one_lane_and_lanes_are_balanced() -> None:
    ends = {
        "cami.dicom": {0: 900, 1: 500, 2: 400},
        "cami.reports": {0: 30, 1: 0, 2: 20},
        "cami.access": {0: 100, 1: 120, 2: 0},
    }
    shares = split_slots(ends, 2)
    assert len(shares) == 2
    slots = [(t, p, e) for share in shares for t, per in share.items() for p, e in per.items()]
    expected = [(t, p, e) for t, per in ends.items() for p, e in per.items() if e > 0]
    assert sorted(slots) == sorted(expected)  # each non-empty slot once, with its end
    loads = sorted(sum(e for per in share.values() for e in per.values()) for share in shares)
    assert loads[1] - loads[0] <= 120  # within the smallest slot that could tip the balance


def test_more_lanes_than_slots_leaves_no_empty_lane() -> None:
    shares = split_slots({"cami.dicom": {0: 5, 1: 0}}, 4)
    assert shares == [{"cami.dicom": {0: 5}}]


def test_an_empty_log_needs_no_lane() -> None:
    assert split_slots({"cami.dicom": {0: 0}}, 2) == []
